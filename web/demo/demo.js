// Demo chat page for gemma-wgpu. Plain DOM, no framework. Model output and user text are
// untrusted: they only ever reach the page as text nodes.

const PRESETS = [
  { label: 'Gemma 3 270M (Q4_K_M, 253 MB)', url: './models/gemma-3-270m-q4_k_m.gguf' },
];

// The JSON-schema example of the reply-format setting: a bounded answer the page can show.
const EXAMPLE_SCHEMA = JSON.stringify(
  {
    type: 'object',
    properties: {
      answer: { type: 'string', maxLength: 200 },
      confidence: { type: 'integer', minimum: 0, maximum: 100 },
      topics: { type: 'array', items: { type: 'string', maxLength: 24 }, maxItems: 3 },
    },
    required: ['answer', 'confidence', 'topics'],
    additionalProperties: false,
  },
  null,
  2,
);
const DEFAULT_SETTINGS = { temperature: 1, topK: 64, topP: 0.95, maxTokens: 512, system: '', format: 'text', schema: EXAMPLE_SCHEMA };
const SETTINGS_KEY = 'gemma-wgpu-demo/settings';

const LOAD_HINTS = {
  'no-webgpu': 'This page needs a browser with WebGPU: a recent Chrome or Edge on desktop or '
    + 'Android, Safari 26 or later, or Firefox 141 or later on Windows. On Linux, Chrome may need '
    + 'WebGPU turned on in chrome://flags. Check also that hardware acceleration is enabled.',
  'adapter-limits': 'This GPU cannot hold this model (a buffer or the total memory it needs is '
    + 'over the limits the browser allows). Try a smaller or more quantized model.',
  'download-failed': 'Check the URL and your connection. A model on another site is only '
    + 'readable if that server allows cross-origin requests (CORS); Hugging Face "resolve" links do.',
  'bad-model': 'The file is not a GGUF model this engine supports (Gemma 3 or Gemma 4, in a '
    + 'supported quantization).',
  'out-of-memory': 'The GPU ran out of memory. Close other GPU-heavy tabs or try a smaller model.',
  aborted: 'Loading was cancelled.',
  busy: 'The engine was busy. Try again.',
  'invalid-argument': 'The request was not valid.',
  internal: 'Something went wrong inside the engine. Reloading the page usually helps; the '
    + 'browser console has details.',
};

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  newChat: $('new-chat'),
  modelPanel: $('model-panel'),
  modelSummary: document.querySelector('#model-panel > summary'),
  modelName: $('model-name'),
  preset: $('preset'),
  loadPreset: $('load-preset'),
  modelUrl: $('model-url'),
  loadUrl: $('load-url'),
  assistantUrl: $('assistant-url'),
  file: $('file'),
  loadProgress: $('load-progress'),
  progress: $('progress'),
  progressText: $('progress-text'),
  cancelLoad: $('cancel-load'),
  loadError: $('load-error'),
  loadErrorCode: $('load-error-code'),
  loadErrorMessage: $('load-error-message'),
  loadErrorHint: $('load-error-hint'),
  stat: {
    decode: $('stat-decode'),
    prefill: $('stat-prefill'),
    ttft: $('stat-ttft'),
    gpu: $('stat-gpu'),
    context: $('stat-context'),
    f16: $('stat-f16'),
    subgroups: $('stat-subgroups'),
    drafts: $('stat-drafts'),
    adapter: $('stat-adapter'),
  },
  settingsForm: $('settings-form'),
  temperature: $('temperature'),
  topK: $('top-k'),
  topP: $('top-p'),
  maxTokens: $('max-tokens'),
  system: $('system-prompt'),
  format: $('reply-format'),
  schema: $('json-schema'),
  resetSettings: $('reset-settings'),
  empty: $('empty'),
  messages: $('messages'),
  composer: $('composer'),
  prompt: $('prompt'),
  send: $('send'),
  stop: $('stop'),
  dropOverlay: $('drop-overlay'),
};

const finePointer = matchMedia('(pointer: fine)');
// The one-column layout of demo.css, where the side panels sit above the conversation.
const stacked = matchMedia('(max-width: 899px)');

let packagePromise = null; // the gemma-wgpu module, imported once
let gemma = null;          // the loaded model
let chat = null;           // the current conversation
let chatSystem = '';       // system prompt `chat` was created with
let loadSeq = 0;           // identifies the latest load, so a superseded one is dropped
let loadController = null; // set while a load runs
let genController = null;  // set while a reply streams
let genDone = Promise.resolve();
let loadDone = Promise.resolve(); // settles when the running load has finished or failed

// ---------- state ----------

function setState(state, text) {
  document.body.dataset.state = state;
  ui.status.textContent = text;
  syncControls();
}

function syncControls() {
  const generating = genController !== null;
  ui.send.hidden = generating;
  ui.stop.hidden = !generating;
  ui.send.disabled = !chat || loadController !== null;
  ui.cancelLoad.hidden = loadController === null;
  ui.messages.setAttribute('aria-busy', String(generating));
}

function errorInfo(err) {
  const code = typeof err?.code === 'string' && err.code ? err.code : 'internal';
  const message = (err && typeof err.message === 'string' && err.message) || String(err);
  return { code, message };
}

function loadPackage() {
  // Imported lazily so that a missing or broken package is reported on the page
  // instead of leaving it dead.
  packagePromise ??= import('./gemma-wgpu/index.js').catch((err) => {
    packagePromise = null;
    const wrapped = new Error(`Could not load the gemma-wgpu package: ${err?.message || err}`);
    wrapped.code = 'internal';
    throw wrapped;
  });
  return packagePromise;
}

// ---------- formatting ----------

const mb = (bytes) => (bytes / 1e6).toFixed(1);
const mib = (bytes) => `${(bytes / 1048576).toFixed(bytes < 1048576 * 10 ? 1 : 0)} MiB`;
const int = new Intl.NumberFormat('en-US');

function rate(tokensPerS) {
  if (!Number.isFinite(tokensPerS) || tokensPerS <= 0) return '–';
  const digits = tokensPerS < 10 ? 2 : tokensPerS < 100 ? 1 : 0;
  return `${tokensPerS.toFixed(digits)} tok/s`;
}

function seconds(s) {
  if (!Number.isFinite(s) || s < 0) return '–';
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

const onOff = (v) => (v === true ? 'on' : v === false ? 'off' : '–');

function adapterName(adapter) {
  if (!adapter) return '–';
  if (typeof adapter === 'string') return adapter;
  return adapter.name || adapter.description || adapter.device || adapter.vendor || '–';
}

function nameFromUrl(url) {
  try {
    const last = new URL(url).pathname.split('/').filter(Boolean).pop();
    return last ? decodeURIComponent(last) : url;
  } catch {
    return url;
  }
}

// ---------- settings ----------

function readNumber(input, fallback, min, max, integer) {
  let v = input.valueAsNumber;
  if (!Number.isFinite(v)) return fallback;
  if (integer) v = Math.round(v);
  return Math.min(max, Math.max(min, v));
}

function readSettings() {
  return {
    temperature: readNumber(ui.temperature, DEFAULT_SETTINGS.temperature, 0, 2, false),
    topK: readNumber(ui.topK, DEFAULT_SETTINGS.topK, 0, 1000, true),
    topP: readNumber(ui.topP, DEFAULT_SETTINGS.topP, 0.01, 1, false),
    maxTokens: readNumber(ui.maxTokens, DEFAULT_SETTINGS.maxTokens, 1, 32768, true),
    system: ui.system.value.trim(),
    format: ui.format.value,
    schema: ui.schema.value,
  };
}

// The `format` option for the engine, or an error message for a schema that is not JSON.
function replyFormat(settings) {
  if (settings.format === 'json_object') return { format: { type: 'json_object' } };
  if (settings.format !== 'json_schema') return {};
  try {
    return { format: { type: 'json_schema', schema: JSON.parse(settings.schema) } };
  } catch (err) {
    return { error: `The reply schema is not valid JSON: ${err.message}` };
  }
}

function writeSettings(s) {
  ui.temperature.value = String(s.temperature);
  ui.topK.value = String(s.topK);
  ui.topP.value = String(s.topP);
  ui.maxTokens.value = String(s.maxTokens);
  ui.system.value = s.system;
  ui.format.value = ['text', 'json_object', 'json_schema'].includes(s.format) ? s.format : 'text';
  ui.schema.value = s.schema;
  ui.schema.hidden = ui.format.value !== 'json_schema';
}

function restoreSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}') || {};
  } catch {
    // Storage can be unavailable (private mode, blocked cookies): defaults are fine.
  }
  const s = { ...DEFAULT_SETTINGS };
  for (const key of Object.keys(s)) {
    if (typeof saved[key] === typeof s[key]) s[key] = saved[key];
  }
  writeSettings(s);
}

function saveSettings() {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(readSettings()));
  } catch {
    // Not persisting is harmless.
  }
}

// ---------- stats ----------

function clearStats() {
  for (const dd of Object.values(ui.stat)) {
    dd.textContent = '–';
    dd.classList.remove('live');
  }
}

// `measured` holds what the page timed itself for the last reply ({ decode, ttft }); it stands
// in where the engine has no figure (a reply stopped after one token, say).
async function showStats(measured = {}) {
  for (const dd of Object.values(ui.stat)) dd.classList.remove('live');
  if (!gemma) {
    clearStats();
    return;
  }
  let s;
  try {
    s = await gemma.stats();
  } catch {
    return;
  }
  if (!s || !gemma) return;
  // Zeros before the first reply mean "not measured yet".
  const replied = s.generatedTokens > 0;
  const decode = replied && s.decodeTokensPerS > 0 ? s.decodeTokensPerS : measured.decode;
  const ttft = replied && s.timeToFirstTokenS > 0 ? s.timeToFirstTokenS : measured.ttft;
  ui.stat.decode.textContent = rate(decode);
  ui.stat.prefill.textContent = s.promptTokens > 0 ? rate(s.prefillTokensPerS) : '–';
  ui.stat.ttft.textContent = seconds(ttft);
  ui.stat.gpu.textContent = Number.isFinite(s.gpuMemoryBytes) ? mib(s.gpuMemoryBytes) : '–';
  const ctx = s.model?.contextLength;
  ui.stat.context.textContent = Number.isFinite(ctx) ? `${int.format(ctx)} tok` : '–';
  ui.stat.f16.textContent = onOff(s.f16);
  ui.stat.subgroups.textContent = onOff(s.subgroups);
  ui.stat.drafts.textContent = !s.assistant
    ? 'no assistant'
    : s.draft?.rounds > 0
      ? `${Math.round(100 * s.draft.acceptanceRate)}%, ${s.draft.tokensPerRound.toFixed(2)} tok/round`
      : 'assistant loaded';
  ui.stat.adapter.textContent = adapterName(s.adapter);
}

// Live figures while a reply streams, from the arrival times of its pieces.
function measure(sentAt, firstAt, lastAt, pieces) {
  return {
    ttft: pieces >= 1 ? (firstAt - sentAt) / 1000 : undefined,
    decode: pieces >= 2 && lastAt > firstAt ? (pieces - 1) / ((lastAt - firstAt) / 1000) : undefined,
  };
}

function showLiveStats(measured) {
  if (measured.ttft !== undefined) {
    ui.stat.ttft.textContent = seconds(measured.ttft);
    ui.stat.ttft.classList.add('live');
  }
  if (measured.decode !== undefined) {
    ui.stat.decode.textContent = rate(measured.decode);
    ui.stat.decode.classList.add('live');
  }
}

// ---------- loading ----------

const PHASES = {
  download: 'Downloading',
  cache: 'Found in the browser cache',
  upload: 'Uploading to the GPU',
  'assistant-download': 'Downloading the assistant',
  'assistant-cache': 'Assistant found in the browser cache',
  'assistant-upload': 'Uploading the assistant to the GPU',
};

let phaseStart = null;

function showProgress({ phase, loaded, total }) {
  const now = performance.now();
  if (!phaseStart || phaseStart.phase !== phase) phaseStart = { phase, at: now, loaded };
  const label = PHASES[phase] || phase;
  let text;
  if (Number.isFinite(total) && total > 0) {
    const fraction = Math.min(1, Math.max(0, loaded / total));
    ui.progress.max = 1;
    ui.progress.value = fraction;
    ui.progress.textContent = `${Math.floor(fraction * 100)}%`;
    text = phase === 'cache'
      ? `${label}: ${mb(total)} MB`
      : `${label}: ${mb(loaded)} of ${mb(total)} MB (${Math.floor(fraction * 100)}%)`;
  } else {
    ui.progress.removeAttribute('value');
    text = `${label}: ${mb(loaded)} MB`;
  }
  const elapsed = (now - phaseStart.at) / 1000;
  if (phase === 'download' && elapsed > 1) {
    text += `, ${mb((loaded - phaseStart.loaded) / elapsed)} MB/s`;
  }
  ui.progressText.textContent = text;
}

function showLoadError(err) {
  const { code, message } = errorInfo(err);
  ui.loadErrorCode.textContent = code;
  ui.loadErrorMessage.textContent = message;
  ui.loadErrorHint.textContent = LOAD_HINTS[code] || '';
  ui.loadErrorHint.hidden = !LOAD_HINTS[code];
  ui.loadError.hidden = false;
  ui.modelPanel.open = true;
  ui.modelName.textContent = 'none loaded';
  setState('error', `Error: ${code}`);
}

async function loadModel(source, label) {
  const seq = ++loadSeq;
  loadController?.abort();
  const controller = new AbortController();
  loadController = controller;
  setState('loading', 'Loading…');
  ui.loadError.hidden = true;
  ui.loadProgress.hidden = false;
  // The progress is in the panel, which may be folded (a file dropped on a phone).
  ui.modelPanel.open = true;
  ui.progress.removeAttribute('value');
  ui.progressText.textContent = `Starting ${label}…`;
  ui.modelName.textContent = `loading ${label}`;
  phaseStart = null;

  // Let a superseded load wind down, and free the previous model: two models at once
  // may not fit in GPU memory.
  await loadDone;
  if (seq !== loadSeq) return;
  let settle;
  loadDone = new Promise((resolve) => { settle = resolve; });
  try {
    await loadInto(seq, controller, source, label);
  } finally {
    settle();
  }
}

async function loadInto(seq, controller, source, label) {
  await stopGeneration();
  const old = gemma;
  gemma = null;
  chat = null;
  clearConversation();
  clearStats();
  if (old) {
    try {
      await old.unload();
    } catch {
      // The old model is going away either way.
    }
  }
  if (seq !== loadSeq) return;

  try {
    const { Gemma } = await loadPackage();
    const assistant = ui.assistantUrl.value.trim();
    const loaded = await Gemma.load(source, {
      cache: true,
      assistant: assistant || undefined,
      signal: controller.signal,
      onProgress: (p) => {
        if (seq === loadSeq) showProgress(p);
      },
    });
    const description = await describeModel(loaded, label);
    if (seq !== loadSeq) {
      loaded.unload().catch(() => {});
      return;
    }
    gemma = loaded;
    startChat();
    loadController = null;
    ui.loadProgress.hidden = true;
    ui.modelName.textContent = description;
    ui.modelName.title = description;
    ui.empty.textContent = 'Ask anything. The model runs on this device: nothing you type '
      + 'leaves the page.';
    showStats();
    if (stacked.matches) foldModelPanel();
    setState('ready', 'Ready');
    if (finePointer.matches) ui.prompt.focus();
  } catch (err) {
    if (seq !== loadSeq) return;
    loadController = null;
    ui.loadProgress.hidden = true;
    showLoadError(err);
  }
}

async function describeModel(loaded, label) {
  let model;
  try {
    model = (await loaded.stats())?.model;
  } catch {
    // Stats are decoration here.
  }
  const parts = [label];
  if (model?.architecture) parts.push(model.architecture);
  if (Number.isFinite(model?.layers)) parts.push(`${model.layers} layers`);
  return parts.join(' · ');
}

// On a phone the open panel would push the conversation below the fold; its summary opens
// it again.
function foldModelPanel() {
  const hadFocus = ui.modelPanel.contains(document.activeElement);
  ui.modelPanel.open = false;
  // Focus on a control that is now hidden would be lost.
  if (hadFocus) ui.modelSummary.focus();
}

function loadPresetModel() {
  const preset = PRESETS[Number(ui.preset.value)] ?? PRESETS[0];
  const params = new URLSearchParams(location.search);
  if (params.has('model')) {
    params.delete('model');
    const query = params.toString();
    history.replaceState(null, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`);
  }
  loadModel(new URL(preset.url, location.href).href, preset.label);
}

function loadUrlModel(raw, { fromQuery = false } = {}) {
  const value = raw.trim();
  let url = null;
  try {
    url = new URL(value, location.href);
  } catch {
    // reported below
  }
  if (!value || !url || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
    const message = value ? `Not an http(s) URL: ${value}` : 'Enter the URL of a GGUF file.';
    if (fromQuery) {
      showLoadError({ code: 'invalid-argument', message });
    } else {
      // A typo in the field must not disturb the model that is loaded.
      ui.modelUrl.setCustomValidity(message);
      ui.modelUrl.reportValidity();
    }
    return;
  }
  if (!fromQuery) {
    const params = new URLSearchParams(location.search);
    params.set('model', value);
    history.replaceState(null, '', `${location.pathname}?${params}${location.hash}`);
  }
  loadModel(url.href, nameFromUrl(url.href));
}

function loadFileModel(file) {
  loadModel(file, file.name || 'local file');
}

// ---------- conversation ----------

function startChat() {
  const { system } = readSettings();
  if (chat && system === chatSystem) {
    chat.reset();
  } else {
    chat = gemma.chat(system ? { system } : {});
    chatSystem = system;
  }
}

function clearConversation() {
  ui.messages.replaceChildren();
  ui.empty.hidden = false;
}

function appendMessage(role, text) {
  const el = document.createElement('div');
  el.className = `msg ${role}`;
  el.textContent = text;
  ui.messages.append(el);
  ui.empty.hidden = true;
  return el;
}

function appendNote(text, isError) {
  const el = document.createElement('p');
  el.className = isError ? 'note error-note' : 'note';
  el.textContent = text;
  ui.messages.append(el);
}

// On wide screens the message list scrolls by itself; on phones the whole page does.
function scroller() {
  return getComputedStyle(ui.messages).overflowY === 'auto' ? ui.messages : document.scrollingElement;
}

function nearBottom() {
  const el = scroller();
  return el.scrollHeight - el.scrollTop - el.clientHeight < 120;
}

function scrollToBottom() {
  const el = scroller();
  el.scrollTop = el.scrollHeight;
}

async function stopGeneration() {
  genController?.abort();
  await genDone;
}

function send() {
  const text = ui.prompt.value;
  if (!text.trim() || !chat || genController || loadController) return;
  const settings = readSettings();
  const format = replyFormat(settings);
  if (format.error) {
    appendNote(format.error, true);
    scrollToBottom();
    return;
  }
  // A changed system prompt takes effect at once while the conversation is still empty.
  if (ui.messages.childElementCount === 0 && settings.system !== chatSystem) {
    chat = null;
    startChat();
  }
  ui.prompt.value = '';
  fitPrompt();
  genDone = generate(text, settings, format.format);
}

async function generate(text, settings, format) {
  appendMessage('user', text);
  const reply = appendMessage('assistant', '');
  reply.classList.add('pending');
  const replyText = document.createTextNode('');
  reply.append(replyText);
  scrollToBottom();

  const controller = new AbortController();
  genController = controller;
  setState('generating', 'Generating…');

  const sentAt = performance.now();
  let firstAt = 0;
  let lastAt = 0;
  let pieces = 0;
  let failure = null;
  try {
    const stream = chat.send(text, {
      signal: controller.signal,
      temperature: settings.temperature,
      topK: settings.topK,
      topP: settings.topP,
      maxTokens: settings.maxTokens,
      format,
    });
    for await (const piece of stream) {
      const now = performance.now();
      pieces += 1;
      if (pieces === 1) firstAt = now;
      lastAt = now;
      if (piece.text) {
        const stick = nearBottom();
        replyText.appendData(piece.text);
        reply.classList.remove('pending');
        if (stick) scrollToBottom();
      }
      showLiveStats(measure(sentAt, firstAt, lastAt, pieces));
    }
  } catch (err) {
    failure = errorInfo(err);
  }

  const stick = nearBottom();
  reply.classList.remove('pending');
  if (replyText.length === 0) reply.classList.add('blank');
  if (failure?.code === 'aborted') {
    appendNote('Stopped.', false);
    failure = null;
  } else if (failure) {
    appendNote(`Error (${failure.code}): ${failure.message}`, true);
  }
  if (stick) scrollToBottom();
  genController = null;
  if (loadController) {
    // A new model is loading: it owns the status now.
    syncControls();
    return;
  }
  showStats(measure(sentAt, firstAt, lastAt, pieces));
  if (failure) setState('error', `Error: ${failure.code}`);
  else setState('ready', 'Ready');
  if (finePointer.matches) ui.prompt.focus();
}

async function newChat() {
  await stopGeneration();
  clearConversation();
  if (gemma && !loadController) {
    try {
      startChat();
      if (document.body.dataset.state === 'error') setState('ready', 'Ready');
    } catch (err) {
      const { code, message } = errorInfo(err);
      appendNote(`Error (${code}): ${message}`, true);
      setState('error', `Error: ${code}`);
    }
  }
  ui.prompt.focus();
}

function fitPrompt() {
  const el = ui.prompt;
  el.style.height = 'auto';
  const border = el.offsetHeight - el.clientHeight;
  el.style.height = `${el.scrollHeight + border}px`;
}

// ---------- drag and drop ----------

let dragDepth = 0;
const carriesFiles = (e) => Array.from(e.dataTransfer?.types ?? []).includes('Files');

function hideDropOverlay() {
  dragDepth = 0;
  ui.dropOverlay.hidden = true;
}

window.addEventListener('dragenter', (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  dragDepth += 1;
  ui.dropOverlay.hidden = false;
});
window.addEventListener('dragover', (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
});
window.addEventListener('dragleave', (e) => {
  if (!carriesFiles(e)) return;
  dragDepth -= 1;
  if (dragDepth <= 0) hideDropOverlay();
});
window.addEventListener('drop', (e) => {
  if (!carriesFiles(e)) return;
  // Without this the browser would navigate away to the dropped file.
  e.preventDefault();
  hideDropOverlay();
  const file = e.dataTransfer.files[0];
  if (file) loadFileModel(file);
});

// ---------- wiring ----------

for (const [i, preset] of PRESETS.entries()) {
  const option = document.createElement('option');
  option.value = String(i);
  option.textContent = preset.label;
  ui.preset.append(option);
}

ui.loadPreset.addEventListener('click', loadPresetModel);
ui.loadUrl.addEventListener('click', () => loadUrlModel(ui.modelUrl.value));
ui.modelUrl.addEventListener('input', () => ui.modelUrl.setCustomValidity(''));
ui.modelUrl.addEventListener('keydown', (e) => {
  if (e.key === 'Enter') {
    e.preventDefault();
    loadUrlModel(ui.modelUrl.value);
  }
});
ui.file.addEventListener('change', () => {
  const file = ui.file.files?.[0];
  // Cleared so that picking the same file again still fires `change`.
  ui.file.value = '';
  if (file) loadFileModel(file);
});
ui.cancelLoad.addEventListener('click', () => loadController?.abort());

ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    send();
  }
});
ui.prompt.addEventListener('input', fitPrompt);
ui.stop.addEventListener('click', () => genController?.abort());
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && genController) genController.abort();
});
ui.newChat.addEventListener('click', newChat);
// A tablet turned to portrait gets the one-column layout too.
stacked.addEventListener('change', () => {
  if (stacked.matches && gemma && !loadController) foldModelPanel();
});

ui.settingsForm.addEventListener('submit', (e) => e.preventDefault());
ui.settingsForm.addEventListener('input', saveSettings);
ui.format.addEventListener('change', () => {
  ui.schema.hidden = ui.format.value !== 'json_schema';
});
ui.resetSettings.addEventListener('click', () => {
  writeSettings(DEFAULT_SETTINGS);
  saveSettings();
});

restoreSettings();
syncControls();
new ResizeObserver(() => {
  document.documentElement.style.setProperty('--composer-height', `${ui.composer.offsetHeight}px`);
}).observe(ui.composer);

// `?model=URL` picks the model to load (absolute, or relative to this page);
// otherwise the model served beside the page loads.
const requested = new URLSearchParams(location.search).get('model');
// `?assistant=URL`: a Gemma 4 MTP assistant loaded with the model.
ui.assistantUrl.value = new URLSearchParams(location.search).get('assistant') ?? '';
if (requested) {
  ui.modelUrl.value = requested;
  let wanted = null;
  try {
    wanted = new URL(requested, location.href).href;
  } catch {
    // loadUrlModel reports it.
  }
  const presetIndex = PRESETS.findIndex((p) => new URL(p.url, location.href).href === wanted);
  if (presetIndex >= 0) ui.preset.value = String(presetIndex);
  loadUrlModel(requested, { fromQuery: true });
} else {
  loadPresetModel();
}
