// gemma-wgpu: Gemma 3 and Gemma 4 in the browser on WebGPU. Everything heavy runs in a module
// worker (worker.js), one per loaded model; this file is the page-side API and keeps no model
// data itself.

import { listEntries, removeEntries } from './cache.js';

const CONSTRUCT = Symbol('gemma-wgpu');
// After a load is aborted, how long the worker gets to save its download record before it is
// terminated anyway (it may be inside a GPU upload that only checks between reads).
const LOAD_ABORT_GRACE_MS = 3000;
const ROLES = new Set(['system', 'user', 'assistant']);
// Gemma's recommended sampling for conversations (generation_config.json).
const CHAT_DEFAULTS = { temperature: 1.0, topK: 64, topP: 0.95 };

export class GemmaError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = 'GemmaError';
    this.code = code;
  }
}

// Gemma's private #start, for Chat.
let startGeneration;

const invalid = (message) => new GemmaError('invalid-argument', message);

// Chat replies are text for people, and they go back into the next prompt, where a control
// token's name would be read as that token. So the control tokens a model samples
// (`<start_of_turn>`, `<unused12>`, Gemma 4's `<|channel>`…) and characters that are not
// printable (U+FFFD for bytes that make no character, C0/C1 controls) are left out of them; the
// engine already holds back a character split over byte tokens until it is complete. Matched by
// name, not by GGUF token type: some GGUFs mark `<unusedN>` normal and Gemma 4's `<|channel>`
// user-defined, while Gemma 3's user-defined HTML pieces (`<td>`) are text.
const CONTROL_TOKEN = /^(?:<(?:pad|eos|bos|unk|mask|unused\d+|(?:start|end)_of_(?:turn|image)|image_soft_token)>|\[multimodal\]|<\|[^<>\s]*>|<[^<>\s]*\|>)$/;
const NOT_PRINTABLE = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\uFFFD]/g;

function printable(text) {
  const kept = text.replace(NOT_PRINTABLE, '');
  return CONTROL_TOKEN.test(kept) ? '' : kept;
}

/** The worker and its requests in flight. */
class Connection {
  #worker;
  #pending = new Map();
  #nextId = 1;
  #dead = null;
  onStats = null;
  onFatal = null;

  constructor() {
    this.#worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'gemma-wgpu' });
    this.#worker.addEventListener('message', (event) => this.#receive(event.data));
    this.#worker.addEventListener('error', (event) => {
      event.preventDefault();
      const where = event.filename ? ` (${event.filename}:${event.lineno})` : '';
      this.#fail(
        event.message
          ? `the gemma-wgpu worker failed: ${event.message}${where}`
          : 'the gemma-wgpu worker could not start: worker.js and wasm/ must be served next to index.js',
      );
    });
    this.#worker.addEventListener('messageerror', () => this.#fail('a message from the gemma-wgpu worker could not be read'));
  }

  /** Sends a request; `listener` gets its progress/started/piece messages. */
  request(message, listener) {
    const id = this.#nextId++;
    const done = new Promise((resolve, reject) => {
      if (this.#dead) {
        reject(new GemmaError('internal', this.#dead));
        return;
      }
      this.#pending.set(id, { resolve, reject, listener });
      this.#worker.postMessage({ ...message, id });
    });
    return { id, done };
  }

  abort(id) {
    if (!this.#dead && this.#pending.has(id)) this.#worker.postMessage({ type: 'abort', id });
  }

  terminate(reason = 'the model was unloaded', code = 'internal') {
    this.#fail(reason, code);
  }

  #receive(message) {
    if (message.type === 'stats') {
      this.onStats?.(message.stats);
      return;
    }
    if (message.type === 'fatal') {
      this.#fail(message.message);
      return;
    }
    const pending = this.#pending.get(message.id);
    if (!pending) return;
    if (message.type === 'result') {
      this.#pending.delete(message.id);
      pending.resolve(message.value);
    } else if (message.type === 'error') {
      this.#pending.delete(message.id);
      if (message.fatal) this.onFatal?.(message.message, message.code);
      pending.reject(new GemmaError(message.code, message.message));
    } else {
      pending.listener?.(message);
    }
  }

  #fail(reason, code = 'internal') {
    if (this.#dead) return;
    this.#dead = reason;
    this.#worker.terminate();
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const { reject } of pending) reject(new GemmaError(code, reason));
    this.onFatal?.(reason, code);
  }
}

/**
 * The async iterator a generation returns. Pieces are queued as the worker sends them; `return`
 * (a `break` out of for-await) stops the generation and resolves once the worker has stopped.
 */
class PieceStream {
  #queue = [];
  #waiters = [];
  #ended = false;
  #error = null;
  #cancel;

  constructor(cancel) {
    this.#cancel = cancel;
  }

  static failed(error) {
    const stream = new PieceStream(async () => {});
    stream._end(error);
    return stream;
  }

  _push(piece) {
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ value: piece, done: false });
    else this.#queue.push(piece);
  }

  _end(error) {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error ?? null;
    for (const waiter of this.#waiters.splice(0)) {
      if (this.#error) {
        waiter.reject(this.#error);
        this.#error = null;
      } else {
        waiter.resolve({ value: undefined, done: true });
      }
    }
  }

  next() {
    if (this.#queue.length > 0) return Promise.resolve({ value: this.#queue.shift(), done: false });
    if (this.#ended) {
      const error = this.#error;
      this.#error = null;
      return error ? Promise.reject(error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  async return(value) {
    this.#queue.length = 0;
    if (!this.#ended) {
      await this.#cancel();
      this.#error = null; // the caller asked for the stop; it isn't an error to them
    }
    this.#ended = true;
    this.#error = null;
    return { value, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

function checkSampling(options, defaults = {}) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== 'object') throw invalid('options must be an object');
  const out = {};
  const pick = (key, ok, rule) => {
    const value = options[key] ?? defaults[key];
    if (value === undefined) return;
    if (typeof value !== 'number' || !ok(value)) throw invalid(`${key} must be ${rule}, got ${String(value)}`);
    out[key] = value;
  };
  pick('maxTokens', (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  pick('temperature', (v) => Number.isFinite(v) && v >= 0, 'a number >= 0 (0 = greedy)');
  pick('topK', (v) => Number.isInteger(v) && v >= 0, 'an integer >= 0 (0 = no limit)');
  pick('topP', (v) => v > 0 && v <= 1, 'in (0, 1]');
  pick('minP', (v) => v >= 0 && v <= 1, 'in [0, 1]');
  pick('repeatPenalty', (v) => Number.isFinite(v) && v > 0, 'a number > 0 (1 = off)');
  pick('seed', (v) => Number.isSafeInteger(v) && v >= 0, 'a non-negative integer');
  pick('draftTokens', (v) => Number.isInteger(v) && v >= 0 && v <= 16, 'an integer from 0 to 16 (0 = no drafting)');
  const format = checkFormat(options.format);
  if (format) out.format = format;
  const stop = checkStop(options.stop);
  if (stop) out.stop = stop;
  checkSignal(options.signal);
  return out;
}

// Stop sequences (as OpenAI's `stop`): a string or up to 4 of them. The output ends just
// before the first one, which is not part of it.
function checkStop(stop) {
  if (stop === undefined || stop === null) return undefined;
  const list = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(list) || list.length > 4 || !list.every((s) => typeof s === 'string' && s.length > 0)) {
    throw invalid('stop must be a non-empty string or an array of up to 4 of them');
  }
  return list.length > 0 ? [...list] : undefined;
}

// Constrained decoding: `{ type: 'json_object' }`, `{ type: 'json_schema', schema }`,
// `{ type: 'regex', pattern }` or `{ type: 'grammar', grammar }` (Lark). The engine compiles it
// (and names what it cannot); here only the shape is checked.
const FORMAT_FIELDS = { json_object: null, json_schema: 'schema', regex: 'pattern', grammar: 'grammar' };
function checkFormat(format) {
  if (format === undefined || format === null) return undefined;
  if (typeof format !== 'object' || !(format.type in FORMAT_FIELDS)) {
    throw invalid(`format.type must be one of ${Object.keys(FORMAT_FIELDS).map((t) => `'${t}'`).join(', ')}`);
  }
  const field = FORMAT_FIELDS[format.type];
  if (field === null) return { type: format.type };
  const value = format[field];
  const ok = field === 'schema' ? value !== null && typeof value === 'object' : typeof value === 'string';
  if (!ok) throw invalid(`format.${field} must be ${field === 'schema' ? 'a JSON Schema object' : 'a string'}`);
  return { type: format.type, [field]: value };
}

function checkSignal(signal) {
  if (signal !== undefined && signal !== null && !(signal instanceof AbortSignal)) {
    throw invalid('signal must be an AbortSignal');
  }
}

function checkMessages(messages, what, roles = ROLES) {
  if (!Array.isArray(messages)) throw invalid(`${what} must be an array of {role, content}`);
  return messages.map((message, i) => {
    if (message === null || typeof message !== 'object') throw invalid(`${what}[${i}] must be an object {role, content}`);
    const { role } = message;
    if (!roles.has(role)) {
      throw invalid(`${what}[${i}].role must be one of ${[...roles].map((r) => `'${r}'`).join(', ')}, got ${JSON.stringify(role)}`);
    }
    return { role, content: messageText(message.content, `${what}[${i}].content`) };
  });
}

// OpenAI also allows content as a list of parts; only text parts mean anything here.
function messageText(content, what) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        if (part?.type !== 'text' || typeof part.text !== 'string') {
          throw invalid(`${what}[${j}] must be a text part {type: 'text', text}; other content types are not supported`);
        }
        return part.text;
      })
      .join('');
  }
  throw invalid(`${what} must be a string`);
}

function modelName(source) {
  if (typeof source === 'string' || source instanceof URL) {
    const path = new URL(source, location.href).pathname;
    const file = decodeURIComponent(path.slice(path.lastIndexOf('/') + 1));
    return file.replace(/\.gguf$/i, '') || 'gemma';
  }
  return typeof source.name === 'string' && source.name ? source.name.replace(/\.gguf$/i, '') : 'gemma';
}

function reportCallbackError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else setTimeout(() => {
    throw err;
  });
}

/** A model or assistant source as the worker takes it: `{ url }` or `{ blob }`. */
function toWireSource(source, what) {
  if (typeof source === 'string' || source instanceof URL) {
    let url;
    try {
      url = new URL(source, globalThis.document?.baseURI ?? location.href);
    } catch {
      throw invalid(`${what}: not a valid URL: ${String(source)}`);
    }
    return { url: url.href };
  }
  if (typeof Blob !== 'undefined' && source instanceof Blob) return { blob: source };
  throw invalid(`${what} must be a URL (string or URL) or a File/Blob holding a GGUF file`);
}

export class Gemma {
  #conn;
  #stats;
  #name;
  #active = null; // { cancel } of the generation running now
  #closed = null; // why this instance can't be used any more
  #closedCode = 'internal'; // and the code of that error
  #unloading = null;

  /** Use `Gemma.load`. */
  constructor(token, conn, stats, name) {
    if (token !== CONSTRUCT) throw new TypeError('use Gemma.load() to create a Gemma');
    this.#conn = conn;
    this.#stats = stats;
    this.#name = name;
    conn.onStats = (s) => {
      this.#stats = s;
    };
    conn.onFatal = (reason, code) => {
      if (this.#closed) return;
      // A lost device's message already says to load the model again.
      this.#closed = code === 'device-lost' ? reason : `${reason}; load the model again`;
      this.#closedCode = code === 'device-lost' ? code : 'internal';
    };
  }

  static async load(source, options = {}) {
    if (options === null || typeof options !== 'object') throw invalid('options must be an object');
    const { onProgress, cache = true, contextLength, prefillChunk, signal, f16, subgroups, testHooks, assistant } = options;
    const wireSource = toWireSource(source, 'the model');
    const wireAssistant = assistant === undefined || assistant === null ? undefined : toWireSource(assistant, 'assistant');
    if (onProgress !== undefined && typeof onProgress !== 'function') throw invalid('onProgress must be a function');
    if (typeof cache !== 'boolean') throw invalid('cache must be a boolean');
    if (contextLength !== undefined && !(Number.isInteger(contextLength) && contextLength >= 1)) {
      throw invalid(`contextLength must be an integer >= 1, got ${String(contextLength)}`);
    }
    if (prefillChunk !== undefined && !(Number.isInteger(prefillChunk) && prefillChunk >= 1 && prefillChunk <= 1024)) {
      throw invalid(`prefillChunk must be an integer from 1 to 1024, got ${String(prefillChunk)}`);
    }
    for (const [key, value] of [['f16', f16], ['subgroups', subgroups]]) {
      if (value !== undefined && typeof value !== 'boolean') throw invalid(`${key} must be a boolean`);
    }
    const testMemoryBudget = testHooks?.memoryBudget;
    if (testHooks !== undefined && (testHooks === null || typeof testHooks !== 'object')) throw invalid('testHooks must be an object');
    if (testMemoryBudget !== undefined && !(Number.isSafeInteger(testMemoryBudget) && testMemoryBudget >= 0)) {
      throw invalid(`testHooks.memoryBudget must be an integer >= 0, got ${String(testMemoryBudget)}`);
    }
    checkSignal(signal);
    if (!globalThis.navigator?.gpu) {
      throw new GemmaError('no-webgpu', 'WebGPU is not available in this browser (navigator.gpu is missing); gemma-wgpu needs a browser with WebGPU enabled');
    }
    if (signal?.aborted) throw new GemmaError('aborted', 'loading was aborted');

    // blob: and data: URLs are one-offs: caching them would only fill the disk.
    const keep = cache && wireSource.url !== undefined && /^https?:/.test(wireSource.url);
    const keepAssistant = cache && wireAssistant?.url !== undefined && /^https?:/.test(wireAssistant.url);
    const conn = new Connection();
    let stats = null;
    conn.onStats = (s) => {
      stats = s;
    };
    const { id, done } = conn.request(
      {
        type: 'load',
        source: wireSource,
        options: {
          cache: keep,
          contextLength,
          prefillChunk,
          f16,
          subgroups,
          testMemoryBudget,
          assistant: wireAssistant && { ...wireAssistant, cache: keepAssistant },
        },
      },
      (message) => {
        if (message.type !== 'progress' || !onProgress) return;
        try {
          onProgress({ phase: message.phase, loaded: message.loaded, total: message.total });
        } catch (err) {
          reportCallbackError(err);
        }
      },
    );
    let timer;
    const onAbort = () => {
      conn.abort(id);
      timer = setTimeout(() => conn.terminate('loading was aborted', 'aborted'), LOAD_ABORT_GRACE_MS);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await done;
    } catch (err) {
      conn.terminate(err.message, err.code);
      throw err;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
    const gemma = new Gemma(CONSTRUCT, conn, stats, modelName(source));
    if (signal?.aborted) {
      // The abort came as the load finished.
      await gemma.unload();
      throw new GemmaError('aborted', 'loading was aborted');
    }
    return gemma;
  }

  static {
    startGeneration = (gemma, ...args) => gemma.#start(...args);
  }

  /**
   * Starts a generation in the worker now. Throws (synchronously) GemmaError when it can't
   * start; `hooks.onEnd(error, result)` runs before the stream sees the end.
   */
  #start(input, sampling, signal, hooks = {}) {
    if (this.#closed) throw new GemmaError(this.#unloading ? 'invalid-argument' : this.#closedCode, this.#closed);
    if (this.#active) throw new GemmaError('busy', 'a generation is already running on this model; wait for it to finish or abort it');
    if (signal?.aborted) throw new GemmaError('aborted', 'the generation was aborted');
    let stream;
    const { id, done } = this.#conn.request({ type: 'generate', input, options: sampling }, (message) => {
      if (message.type === 'started') {
        hooks.onStarted?.(message);
      } else if (message.type === 'piece') {
        // `generate` keeps the engine's text as is: a raw completion shows what was sampled.
        const piece = { text: input.prompt === undefined ? printable(message.text) : message.text, id: message.token };
        if (message.toolCall) piece.toolCall = message.toolCall;
        hooks.onPiece?.(piece);
        stream._push(piece);
      }
    });
    const onAbort = () => this.#conn.abort(id);
    signal?.addEventListener('abort', onAbort, { once: true });
    const settle = (error, result) => {
      signal?.removeEventListener('abort', onAbort);
      // Free before the caller's loop resumes, so it can start the next request right away.
      this.#active = null;
      try {
        hooks.onEnd?.(error, result);
      } finally {
        stream._end(error);
      }
    };
    const finished = done.then(
      (result) => settle(null, result),
      (error) => settle(error),
    );
    const cancel = () => {
      this.#conn.abort(id);
      return finished;
    };
    stream = new PieceStream(cancel);
    this.#active = { cancel };
    return stream;
  }

  /**
   * Raw text completion: the prompt is tokenized as is (with BOS), no chat template. Greedy
   * unless `temperature` is set.
   */
  generate(prompt, options = {}) {
    try {
      if (typeof prompt !== 'string') throw invalid('prompt must be a string');
      const sampling = checkSampling(options, { temperature: 0 });
      return this.#start({ prompt }, sampling, options?.signal);
    } catch (err) {
      return PieceStream.failed(err);
    }
  }

  /** A conversation that keeps its history; each turn reuses the KV cache of the previous one. */
  chat(options = {}) {
    if (options === null || typeof options !== 'object') throw invalid('chat options must be an object');
    const { system, messages = [] } = options;
    if (system !== undefined && typeof system !== 'string') throw invalid('system must be a string');
    const history = checkMessages(messages, 'messages', new Set(['user', 'assistant']));
    return new Chat(CONSTRUCT, this, system, history);
  }

  /**
   * OpenAI-style chat completion; with `stream: true` resolves to an async iterable of chunks.
   * The signal may also come as the second argument, as in OpenAI's client.
   */
  async createChatCompletion(request, options = {}) {
    const parsed = parseCompletionRequest(request, options);
    const id = `chatcmpl-${randomId()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = parsed.model ?? this.#name;
    let started = null;
    let result = null;
    let ready;
    // Settles once the prompt is in the KV cache, or the request was refused: a refused
    // request rejects here, stream or not, as OpenAI's create() does.
    const startedOrRefused = new Promise((resolve, reject) => {
      ready = { resolve, reject };
    });
    const pieces = this.#start({ chat: parsed.chat }, parsed.sampling, parsed.signal, {
      onStarted: (message) => {
        started = message;
        ready.resolve();
      },
      onEnd: (error, value) => {
        result = value ?? null;
        if (error) ready.reject(error);
        else ready.resolve();
      },
    });
    await startedOrRefused;
    const callId = id.slice('chatcmpl-'.length);
    const toolCall = (call, index) => ({ id: `call_${callId}_${index}`, type: 'function', function: { name: call.name, arguments: call.arguments } });
    let calls = 0;
    const finishReason = () => (calls > 0 ? 'tool_calls' : result.finishReason === 'stop' ? 'stop' : 'length');
    const usage = () => ({
      prompt_tokens: started.promptTokens,
      completion_tokens: result.generatedTokens,
      total_tokens: started.promptTokens + result.generatedTokens,
      prompt_tokens_details: { cached_tokens: started.cachedTokens },
    });

    if (!parsed.stream) {
      let content = '';
      const toolCalls = [];
      for await (const piece of pieces) {
        if (piece.toolCall) toolCalls.push(toolCall(piece.toolCall, calls++));
        else content += piece.text;
      }
      const message = { role: 'assistant', content: content === '' && toolCalls.length > 0 ? null : content };
      if (toolCalls.length > 0) message.tool_calls = toolCalls;
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [{ index: 0, message, logprobs: null, finish_reason: finishReason() }],
        usage: usage(),
      };
    }

    const chunk = (delta, finish) => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    });
    async function* chunks() {
      yield chunk({ role: 'assistant', content: '' }, null);
      for await (const piece of pieces) {
        if (piece.toolCall) {
          const index = calls++;
          // A call streams whole, in one delta.
          yield chunk({ tool_calls: [{ index, ...toolCall(piece.toolCall, index) }] }, null);
        } else if (piece.text) {
          yield chunk({ content: piece.text }, null);
        }
      }
      yield chunk({}, finishReason());
      if (parsed.includeUsage) yield { id, object: 'chat.completion.chunk', created, model, choices: [], usage: usage() };
    }
    const inner = chunks();
    // A stream dropped before its first next() still has to stop the generation.
    return {
      next: () => inner.next(),
      async return(value) {
        await pieces.return();
        return inner.return(value);
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /** The latest numbers: model, memory, and the last generation's speed. */
  stats() {
    return structuredClone(this.#stats);
  }

  /**
   * Measures this model on this device as `gemma-wgpu bench` does natively: prefill of a
   * `promptLen`-token prompt, greedy decode of `gen` tokens (`repeat` timed runs, medians), time
   * to first token, dispatches per token, and the CPU time spent encoding them. Resolves to the
   * CLI's `results` object (snake_case, as in `bench --json`) plus `pipelinesCompiled`,
   * `pipelineCompileS` and `context`. The KV cache must hold `promptLen + max(gen,
   * profileTokens)` tokens (`contextLength` at load); the conversation cache is cleared.
   */
  async bench(options = {}) {
    if (this.#closed) throw new GemmaError(this.#unloading ? 'invalid-argument' : this.#closedCode, this.#closed);
    if (options === null || typeof options !== 'object') throw invalid('options must be an object');
    if (this.#active) throw new GemmaError('busy', 'a generation is running: wait for it or abort it first');
    const out = {};
    for (const [key, min] of [['promptLen', 1], ['gen', 1], ['repeat', 1], ['profileTokens', 0]]) {
      const v = options[key];
      if (v === undefined) continue;
      if (!(Number.isInteger(v) && v >= min)) throw invalid(`${key} must be an integer >= ${min}, got ${String(v)}`);
      out[key] = v;
    }
    if (options.copyBandwidth !== undefined) {
      if (typeof options.copyBandwidth !== 'boolean') throw invalid('copyBandwidth must be a boolean');
      out.copyBandwidth = options.copyBandwidth;
    }
    return await this.#conn.request({ type: 'bench', options: out }).done;
  }

  /**
   * Test hook, not for applications: destroys this model's GPU device, as a driver reset or the
   * browser reclaiming the GPU would. The next request fails with 'device-lost' and the
   * instance can't be used afterwards; `Gemma.load` works again.
   */
  async loseDeviceForTest() {
    if (this.#closed) throw new GemmaError(this.#unloading ? 'invalid-argument' : this.#closedCode, this.#closed);
    await this.#conn.request({ type: 'loseDeviceForTest' }).done;
  }

  /** Frees the GPU memory and ends the worker. The instance can't be used afterwards. */
  unload() {
    this.#unloading ??= (async () => {
      const active = this.#active;
      this.#closed ??= 'this model was unloaded';
      if (active) await active.cancel();
      try {
        await this.#conn.request({ type: 'unload' }).done;
      } catch {
        // the worker is ending either way
      } finally {
        this.#conn.terminate();
      }
    })();
    return this.#unloading;
  }
}

export class Chat {
  #gemma;
  #system;
  #history;
  #epoch = 0; // bumped by reset(), so a reply still streaming doesn't land in the new history

  /** Use `gemma.chat()`. */
  constructor(token, gemma, system, history) {
    if (token !== CONSTRUCT) throw new TypeError('use gemma.chat() to start a conversation');
    this.#gemma = gemma;
    this.#system = system;
    this.#history = history;
  }

  get system() {
    return this.#system;
  }

  /** The turns so far (user and assistant), oldest first; a copy. */
  get messages() {
    return this.#history.map((m) => ({ ...m }));
  }

  /**
   * Sends a user turn and streams the reply. The reply (trimmed) joins `messages` when it
   * finishes or is aborted; on any other error the user turn is dropped again.
   */
  send(text, options = {}) {
    try {
      if (typeof text !== 'string') throw invalid('the message must be a string');
      const sampling = checkSampling(options, CHAT_DEFAULTS);
      const user = { role: 'user', content: text };
      const messages = [...(this.#system !== undefined ? [{ role: 'system', content: this.#system }] : []), ...this.#history, user];
      const epoch = this.#epoch;
      let reply = '';
      const stream = startGeneration(this.#gemma, { messages }, sampling, options?.signal, {
        onPiece: (piece) => {
          reply += piece.text;
        },
        onEnd: (error) => {
          if (epoch !== this.#epoch) return;
          if (!error || error.code === 'aborted') this.#history.push({ role: 'assistant', content: reply.trim() });
          else this.#history.pop();
        },
      });
      this.#history.push(user);
      return stream;
    } catch (err) {
      return PieceStream.failed(err);
    }
  }

  /** Forgets the history (the system prompt stays). */
  reset() {
    this.#epoch += 1;
    this.#history = [];
  }
}

// The page-side checks of an OpenAI chat completion request: sampling and the stream's shape.
// messages, tools, tool_choice and response_format are validated and rendered by the engine,
// with the same code as `gemma-wgpu serve`.
function parseCompletionRequest(request, options) {
  if (request === null || typeof request !== 'object') throw invalid('the request must be an object');
  if (options === null || typeof options !== 'object') throw invalid('options must be an object');
  const signal = request.signal ?? options.signal ?? undefined;
  if (!Array.isArray(request.messages) || request.messages.length === 0) {
    throw invalid('messages must be a non-empty array of {role, content}');
  }
  if (request.n !== undefined && request.n !== null && request.n !== 1) throw invalid('only n = 1 is supported');
  if (request.stream !== undefined && request.stream !== null && typeof request.stream !== 'boolean') {
    throw invalid('stream must be a boolean');
  }
  if (request.model !== undefined && request.model !== null && typeof request.model !== 'string') {
    throw invalid('model must be a string');
  }
  const maxTokens = request.max_completion_tokens ?? request.max_tokens ?? undefined;
  const sampling = checkSampling(
    {
      maxTokens,
      temperature: request.temperature ?? undefined,
      topP: request.top_p ?? undefined,
      topK: request.top_k ?? undefined,
      minP: request.min_p ?? undefined,
      repeatPenalty: request.repeat_penalty ?? undefined,
      seed: request.seed ?? undefined,
      stop: request.stop ?? undefined,
      signal,
    },
    CHAT_DEFAULTS,
  );
  let chat;
  try {
    // Plain JSON for the engine (undefined fields dropped).
    const { messages, tools, tool_choice, parallel_tool_calls, response_format } = request;
    chat = JSON.parse(JSON.stringify({ messages, tools, tool_choice, parallel_tool_calls, response_format }));
  } catch (err) {
    throw invalid(`the request must be plain JSON data: ${err.message}`);
  }
  return {
    chat,
    sampling,
    signal,
    stream: request.stream === true,
    includeUsage: request.stream_options?.include_usage === true,
    model: request.model ?? undefined,
  };
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The models kept in this origin's cache (downloads in progress included). */
export async function cachedModels() {
  try {
    return await listEntries();
  } catch (err) {
    throw err instanceof GemmaError ? err : new GemmaError(err?.code ?? 'internal', err?.message ?? String(err));
  }
}

/**
 * Deletes the cached file of `url`, or of every model. Files that a loaded model is reading are
 * kept (and counted in `inUse`).
 */
export async function clearCache(url) {
  let key;
  if (url !== undefined) {
    try {
      key = new URL(url, globalThis.document?.baseURI ?? location.href).href;
    } catch {
      throw invalid(`not a valid URL: ${String(url)}`);
    }
  }
  try {
    return await removeEntries(key);
  } catch (err) {
    throw new GemmaError(err?.code ?? 'internal', `could not clear the model cache: ${err?.message ?? err}`);
  }
}
