// The module worker that owns the engine: one per loaded model. It runs requests from index.js
// one at a time and streams their progress and tokens back.
//
// Page → worker: {type: 'load' | 'generate' | 'bench' | 'unload' | 'loseDeviceForTest', id, ...} and
// {type: 'abort', id} (stops request `id`). Worker → page: {type: 'progress' | 'started' | 'piece', id, ...} while a
// request runs, then exactly one {type: 'result', id, value} or {type: 'error', id, code,
// message, fatal}; {type: 'stats', stats} whenever the numbers change; {type: 'fatal', message}
// when the engine crashed outside any request.

import init, { Engine, HeaderProbe, ReplyFilter } from './wasm/gemma_wgpu.js';
import { BlobSource, codedError, openUrl, preflightSource } from './cache.js';

const CODES = new Set([
  'no-webgpu',
  'adapter-limits',
  'download-failed',
  'bad-model',
  'out-of-memory',
  'device-lost',
  'aborted',
  'busy',
  'invalid-argument',
  'internal',
]);

const wasmReady = init({ module_or_path: new URL('./wasm/gemma_wgpu_bg.wasm', import.meta.url) });
wasmReady.catch(() => {}); // reported by the load request

// A Rust panic prints its message through console.error, then traps; the message is the useful
// part of the error the page gets.
let lastPanic = null;
const consoleError = console.error.bind(console);
console.error = (...args) => {
  const text = args.map(String).join(' ');
  if (text.includes('panicked at')) lastPanic = text;
  consoleError(...args);
};

// A panic inside an engine promise traps in a microtask outside the request, whose promise then
// never settles: report it and give the page the reason (it ends this worker).
self.addEventListener('error', (event) => {
  event.preventDefault();
  const why = lastPanic ?? event.message ?? 'unknown error';
  lastPanic = null;
  dropEngine(`the engine stopped after an internal error (${why})`);
  post({ type: 'fatal', message: crashed });
});

let engine = null;
let model = null; // { info, plan, adapter, release }
let crashed = null; // why the engine was dropped (a panic, a lost device)
let crashedCode = 'internal';
const controllers = new Map();
let queue = Promise.resolve();

const post = (message) => self.postMessage(message);

self.onmessage = ({ data }) => {
  if (data.type === 'abort') {
    controllers.get(data.id)?.abort();
    return;
  }
  const controller = new AbortController();
  controllers.set(data.id, controller);
  queue = queue.then(() => run(data, controller.signal));
};

async function run(message, signal) {
  try {
    const handler = handlers[message.type];
    if (!handler) throw codedError('internal', `unknown request '${message.type}'`);
    const value = await handler(message, signal);
    post({ type: 'result', id: message.id, value });
  } catch (err) {
    post({ type: 'error', id: message.id, ...describe(err, signal) });
  } finally {
    controllers.delete(message.id);
  }
}

function describe(err, signal) {
  if (err instanceof WebAssembly.RuntimeError) {
    const why = lastPanic ?? String(err);
    lastPanic = null;
    dropEngine(`the engine stopped after an internal error (${why})`);
    return { code: 'internal', message: crashed, fatal: true };
  }
  if (signal.aborted) return { code: 'aborted', message: err?.code === 'aborted' ? err.message : 'the request was aborted' };
  const code = CODES.has(err?.code) ? err.code : 'internal';
  const message = err?.message ? String(err.message) : String(err);
  if (code === 'device-lost') {
    // Nothing runs on a lost device again: free the engine now; every later request gets the
    // same error, and the page loads the model again (in a new worker, on a new device).
    dropEngine(message, code);
    return { code, message, fatal: true };
  }
  return { code, message, fatal: false };
}

function dropEngine(reason, code = 'internal') {
  crashed = reason;
  crashedCode = code;
  try {
    engine?.free();
  } catch {
    // its memory may be the reason we are here
  }
  engine = null;
  model?.release().catch(() => {});
  model?.assistant?.release().catch(() => {});
  model = null;
}

function requireEngine() {
  if (crashed) throw codedError(crashedCode, crashed);
  if (!engine || !model) throw codedError('internal', 'no model is loaded');
  return engine;
}

function stats() {
  const s = engine.stats() ?? {};
  const { info, plan, adapter } = model;
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  return {
    prefillTokensPerS: num(s.prefillTokensPerS),
    decodeTokensPerS: num(s.decodeTokensPerS),
    timeToFirstTokenS: num(s.timeToFirstTokenS),
    promptTokens: num(s.promptTokens),
    cachedTokens: num(s.cachedTokens),
    generatedTokens: num(s.generatedTokens),
    gpuMemoryBytes: num(info.gpuMemory?.total) + num(model.assistant?.info.gpuBytes),
    wasmMemoryBytes: num(engine.wasmMemoryBytes()),
    adapter: adapter.name ?? '',
    f16: adapter.f16 === true,
    subgroups: adapter.subgroups === true,
    gpuMemory: { ...info.gpuMemory, assistant: num(model.assistant?.info.gpuBytes) },
    draft: {
      rounds: num(s.draftRounds),
      draftedTokens: num(s.draftedTokens),
      acceptedDrafts: num(s.acceptedDrafts),
      acceptanceRate: num(s.draftedTokens) > 0 ? num(s.acceptedDrafts) / num(s.draftedTokens) : 0,
      tokensPerRound: num(s.draftRounds) > 0 ? (num(s.acceptedDrafts) + num(s.draftRounds)) / num(s.draftRounds) : 0,
    },
    assistant: model.assistant ? { layers: model.assistant.info.layers, hidden: model.assistant.info.hidden, fileBytes: model.assistant.plan.fileBytes } : null,
    model: {
      architecture: info.architecture,
      layers: info.layers,
      vocab: info.vocab,
      contextLength: info.contextLength,
      hasChatTemplate: info.hasChatTemplate === true,
      fileBytes: plan.fileBytes,
      weightsBytes: plan.weightsBytes,
    },
  };
}

const postStats = () => post({ type: 'stats', stats: stats() });

async function load({ id, source, options }, signal) {
  try {
    await wasmReady;
  } catch (err) {
    throw codedError('internal', `the engine's wasm module could not be started: ${err?.message ?? err}`);
  }
  engine = await Engine.create({
    f16: options.f16 !== false,
    subgroups: options.subgroups !== false,
    testMemoryBudget: options.testMemoryBudget,
  });
  const adapter = engine.adapter();
  const onProgress = ({ phase, loaded, total }) => post({ type: 'progress', id, phase, loaded, total });
  const contextLength = options.contextLength;

  let opened;
  if (source.url !== undefined) {
    opened = await openUrl({ url: source.url, cache: options.cache, engine, HeaderProbe, contextLength, signal, onProgress });
  } else {
    const blobSource = new BlobSource(source.blob);
    opened = { source: blobSource, plan: preflightSource(engine, HeaderProbe, blobSource, contextLength), release: async () => {} };
  }

  // engine.cancel() stops an upload between chunks (the engine yields every few MB).
  const cancelUpload = () => engine.cancel();
  signal.addEventListener('abort', cancelUpload);
  let info;
  try {
    if (signal.aborted) throw codedError('aborted', 'loading was aborted');
    info = await engine.load(opened.source, { contextLength, prefillChunk: options.prefillChunk }, (loaded, total) => onProgress({ phase: 'upload', loaded, total }));
    if (signal.aborted) throw codedError('aborted', 'loading was aborted');
  } catch (err) {
    await opened.release().catch(() => {});
    throw err;
  } finally {
    signal.removeEventListener('abort', cancelUpload);
  }
  model = { info, plan: opened.plan, adapter, release: opened.release, assistant: null };
  if (options.assistant) {
    model.assistant = await loadAssistant(options.assistant, options, signal, onProgress);
  }
  postStats();
  return { info, plan: opened.plan, adapter, assistant: model.assistant?.info ?? null };
}

// The MTP assistant of the loaded model, streamed and cached like the model itself; its header
// is checked against the model before its weights download. Progress phases get an
// 'assistant-' prefix.
async function loadAssistant(source, options, signal, onProgress) {
  const progress = (p) => onProgress({ ...p, phase: `assistant-${p.phase}` });
  let opened;
  if (source.url !== undefined) {
    opened = await openUrl({ url: source.url, cache: source.cache, engine, HeaderProbe, contextLength: options.contextLength, signal, onProgress: progress });
  } else {
    const blobSource = new BlobSource(source.blob);
    opened = { source: blobSource, plan: preflightSource(engine, HeaderProbe, blobSource, options.contextLength), release: async () => {} };
  }
  const cancelUpload = () => engine.cancel();
  signal.addEventListener('abort', cancelUpload);
  try {
    if (signal.aborted) throw codedError('aborted', 'loading was aborted');
    const info = await engine.loadAssistant(opened.source, (loaded, total) => progress({ phase: 'upload', loaded, total }));
    if (signal.aborted) throw codedError('aborted', 'loading was aborted');
    return { info, plan: opened.plan, release: opened.release };
  } catch (err) {
    await opened.release().catch(() => {});
    throw err;
  } finally {
    signal.removeEventListener('abort', cancelUpload);
  }
}

const handlers = {
  async load(message, signal) {
    try {
      return await load(message, signal);
    } catch (err) {
      // The page ends this worker after a failed load; the GPU device goes first.
      try {
        engine?.free();
      } catch {
        // nothing more to release
      }
      engine = null;
      throw err;
    }
  },

  // input: { prompt } (raw text), { messages } (a chat turn) or { chat } (an OpenAI chat
  // completion request, prepared by the engine as `serve` prepares it: tools, tool results,
  // response_format). options.stop: stop sequences.
  async generate({ id, input, options }, signal) {
    requireEngine();
    const { stop = [], ...engineOptions } = options ?? {};
    let ids;
    let tools = false;
    if (input.chat) {
      const prepared = engine.prepareChatCompletion(input.chat);
      ids = prepared.ids;
      tools = prepared.tools;
      if (prepared.format) engineOptions.format = prepared.format;
    } else {
      ids = input.messages ? engine.renderChat(input.messages, true) : engine.encode(input.prompt, true);
    }
    // Stop sequences and tool calls are found in the text on its way out (the same Rust code
    // as the server's); without either, each token's text goes out as it is.
    const filter = stop.length > 0 || tools ? new ReplyFilter(stop, tools) : null;
    const send = (parts, token) => {
      for (const part of parts) {
        if (part.call) post({ type: 'piece', id, token, text: '', toolCall: part.call });
        else post({ type: 'piece', id, token, text: part.text });
      }
    };
    const started = await engine.start(ids, engineOptions);
    post({ type: 'started', id, promptTokens: started.promptTokens, cachedTokens: started.cachedTokens });
    let generatedTokens = 0;
    let finished = false;
    let stopped = false;
    try {
      // The abort flag is checked before every token, so a stop lands within one token.
      while (!signal.aborted) {
        const piece = await engine.next();
        if (piece === undefined) {
          finished = true;
          if (filter) send(filter.finish(), null);
          break;
        }
        generatedTokens += 1;
        if (!filter) {
          post({ type: 'piece', id, token: piece.id, text: piece.text });
          continue;
        }
        send(filter.push(piece.text), piece.id);
        if (filter.stopped) {
          engine.cancel();
          finished = true;
          stopped = true;
          break;
        }
      }
      if (!finished) engine.cancel();
    } finally {
      filter?.free();
      postStatsSafely();
    }
    if (!finished) throw codedError('aborted', 'the generation was aborted');
    return {
      finishReason: stopped ? 'stop' : (engine.finishReason() ?? 'stop'),
      promptTokens: started.promptTokens,
      cachedTokens: started.cachedTokens,
      generatedTokens,
    };
  },

  // The CLI's model benchmark on the loaded model (pkg-scripts/bench-web.mjs drives it).
  async bench({ options }) {
    return await requireEngine().bench(options ?? {});
  },

  // Test hook: destroys the GPU device, as a driver reset or the browser reclaiming the GPU would.
  async loseDeviceForTest() {
    requireEngine().loseDeviceForTest();
    return null;
  },

  async unload() {
    const current = model;
    model = null;
    try {
      engine?.unload();
      engine?.free();
    } finally {
      engine = null;
      await current?.release();
      await current?.assistant?.release();
    }
    return null;
  },
};

function postStatsSafely() {
  try {
    if (engine && model) postStats();
  } catch {
    // stats are best effort; the request's own outcome is what matters
  }
}
