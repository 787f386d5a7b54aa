#!/usr/bin/env node
// The browser path on a real GPU: runs the npm package's engine (pkg/: the same wasm and the
// same worker code a page runs, through wgpu's WebGPU backend) under Node on Dawn, Chrome's
// WebGPU implementation (npm `webgpu`, dawn.node), and prints what `gemma-wgpu bench --json`
// prints for the same model: prefill, decode, time to first token, dispatches per token, the
// CPU time spent encoding them, pipeline creation, plus load → ready as the worker sees it.
//
//   pkg-scripts/build-web.sh            # pkg/ (once)
//   node pkg-scripts/bench-web.mjs --model FILE.gguf [--json] [--prompt-len 512] [--gen 128]
//        [--repeat 3] [--profile-tokens 32] [--prefill-chunk 512] [--no-f16] [--no-subgroups]
//        [--skip-ops OPS] [--backend vulkan|null] [--dawn-flag FLAG]... [--pkg DIR] [--dawn PATH/TO/webgpu/index.js]
//
// The shim is what a worker has and Node lacks, nothing more: `navigator.gpu` (Dawn's),
// `WorkerGlobalScope` (wgpu looks for it to find `navigator`), `self`/`postMessage` (the worker
// protocol, driven in-process), `fetch` for the package's file: URLs (the wasm), and a
// synchronous `FileReaderSync` over a file-backed Blob (how a worker reads a dropped file), so
// the model is read from disk in chunks as in a page, never held whole in memory.
import { parseArgs } from 'node:util';
import { openSync, readSync, fstatSync, readFileSync, closeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import os from 'node:os';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    json: { type: 'boolean', default: false },
    'prompt-len': { type: 'string', default: '512' },
    gen: { type: 'string', default: '128' },
    repeat: { type: 'string', default: '3' },
    'profile-tokens': { type: 'string', default: '32' },
    // The CLI's bench prefills in 512-token steps (as llama-bench does); pages default to 128.
    'prefill-chunk': { type: 'string', default: '512' },
    'no-f16': { type: 'boolean', default: false },
    'no-subgroups': { type: 'boolean', default: false },
    'no-copy-bandwidth': { type: 'boolean', default: false },
    // As the CLI's --skip-ops: these ops (comma-separated names from the breakdown) are left
    // out of every step, an ablation. Skipping all of them leaves what a token costs besides
    // the GPU's work: submission and the readback round trip.
    'skip-ops': { type: 'string', default: '' },
    backend: { type: 'string', default: 'vulkan' },
    // Passed to Dawn as is, e.g. --dawn-flag enable-dawn-features=disable_robustness (what
    // Dawn's bounds checks cost: a page cannot turn them off).
    'dawn-flag': { type: 'string', multiple: true, default: [] },
    pkg: { type: 'string', default: resolve(root, 'pkg') },
    dawn: { type: 'string', default: resolve(root, 'web/node_modules/webgpu/index.js') },
  },
});

const fail = (msg) => {
  console.error(`bench-web: ${msg}`);
  process.exit(2);
};
const int = (name, min) => {
  const v = Number(args[name]);
  if (!Number.isInteger(v) || v < min) fail(`--${name} must be an integer >= ${min}, got '${args[name]}'`);
  return v;
};
if (!args.model) fail('--model FILE.gguf is required');
const promptLen = int('prompt-len', 1);
const gen = int('gen', 1);
const repeat = int('repeat', 1);
const profileTokens = int('profile-tokens', 0);
const prefillChunk = int('prefill-chunk', 1);

// ---- the shim --------------------------------------------------------------------------

let dawn;
try {
  dawn = await import(pathToFileURL(args.dawn).href);
} catch (err) {
  fail(`cannot load Dawn's Node bindings from ${args.dawn} (npm \`webgpu\`; --dawn names another copy): ${err.message}`);
}
Object.assign(globalThis, dawn.globals);
const gpu = dawn.create([`backend=${args.backend}`, ...args['dawn-flag']]);
Object.defineProperty(globalThis, 'navigator', {
  value: { gpu, userAgent: `Node.js ${process.version} (dawn.node)`, hardwareConcurrency: os.cpus().length, language: 'en-US' },
  configurable: true,
  writable: true,
});
globalThis.WorkerGlobalScope ??= class WorkerGlobalScope {};
globalThis.self = globalThis;
globalThis.addEventListener ??= () => {};

const nodeFetch = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  if (url.protocol !== 'file:') return nodeFetch(input, init);
  return new Response(readFileSync(fileURLToPath(url)), { headers: { 'Content-Type': 'application/wasm' } });
};

/** A file-backed Blob: its size, and slices that FileReaderSync reads from disk. */
class FileBlob {
  constructor(path, start = 0, end = null) {
    this.path = path;
    this.fd = openSync(path, 'r');
    this.start = start;
    this.end = end ?? fstatSync(this.fd).size;
  }
  get size() {
    return this.end - this.start;
  }
  slice(start = 0, end = this.size) {
    const s = Object.create(FileBlob.prototype);
    Object.assign(s, { path: this.path, fd: this.fd, start: this.start + start, end: this.start + Math.min(end, this.size) });
    return s;
  }
}
globalThis.FileReaderSync = class FileReaderSync {
  readAsArrayBuffer(blob) {
    const out = new Uint8Array(blob.size);
    let done = 0;
    while (done < out.length) {
      const n = readSync(blob.fd, out, done, out.length - done, blob.start + done);
      if (n === 0) break;
      done += n;
    }
    return out.buffer.slice(0, done);
  }
};

// The worker protocol, in-process: requests go to the worker's onmessage, its messages come
// back through postMessage.
const pending = new Map();
let nextId = 1;
globalThis.postMessage = (message) => {
  if (message.type === 'fatal') fail(`the engine stopped: ${message.message}`);
  const req = pending.get(message.id);
  if (!req) return;
  if (message.type === 'result') {
    pending.delete(message.id);
    req.resolve(message.value);
  } else if (message.type === 'error') {
    pending.delete(message.id);
    req.reject(Object.assign(new Error(message.message), { code: message.code }));
  } else if (message.type === 'progress') {
    req.progress?.(message);
  }
};
const request = (message, progress) =>
  new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject, progress });
    globalThis.onmessage({ data: { ...message, id } });
  });

const pkgDir = resolve(args.pkg);
try {
  await import(pathToFileURL(resolve(pkgDir, 'worker.js')).href);
} catch (err) {
  fail(`cannot load the package's worker from ${pkgDir} (build it with pkg-scripts/build-web.sh): ${err.message}`);
}

// ---- the run ---------------------------------------------------------------------------

const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
if (!adapter) fail(`Dawn found no adapter on its ${args.backend} backend`);
const dawnAdapter = {
  vendor: adapter.info?.vendor ?? '',
  architecture: adapter.info?.architecture ?? '',
  device: adapter.info?.device ?? '',
  description: adapter.info?.description ?? '',
  features: [...adapter.features].sort(),
};

let blob;
try {
  blob = new FileBlob(resolve(args.model));
} catch (err) {
  fail(`cannot open the model ${args.model}: ${err.message}`);
}
// The bench's longest run: the prompt and the longer of the timed and the profiled decodes.
const contextLength = promptLen + Math.max(gen, profileTokens);
let uploaded = 0;
const t0 = performance.now();
let loaded;
try {
  loaded = await request(
    {
      type: 'load',
      source: { blob },
      options: { contextLength, prefillChunk, f16: !args['no-f16'], subgroups: !args['no-subgroups'] },
    },
    (p) => {
      uploaded = p.loaded;
    },
  );
} catch (err) {
  fail(`loading ${args.model} failed (${err.code}): ${err.message}`);
}
const loadS = (performance.now() - t0) / 1000;

let bench;
try {
  bench = await request({
    type: 'bench',
    options: {
      promptLen,
      gen,
      repeat,
      profileTokens,
      copyBandwidth: !args['no-copy-bandwidth'],
      skipOps: args['skip-ops'].split(',').filter((op) => op !== ''),
    },
  });
} catch (err) {
  fail(`the bench failed (${err.code}): ${err.message}`);
}
closeSync(blob.fd);

const r = bench.results;
const json = {
  schema: 1,
  kind: 'model',
  path: 'browser',
  runtime: { node: process.version, webgpu: 'dawn.node (npm webgpu)', backend: args.backend, dawn_flags: args['dawn-flag'] },
  model: {
    path: args.model,
    arch: loaded.info.architecture,
    layers: loaded.info.layers,
    vocab: loaded.info.vocab,
    file_bytes: loaded.plan.fileBytes,
  },
  adapter: { ...loaded.adapter, dawn: dawnAdapter },
  options: {
    prompt_len: promptLen,
    gen,
    repeat,
    profile_tokens: profileTokens,
    context: bench.context,
    prefill_chunk: prefillChunk,
    f16: !args['no-f16'],
    subgroups: !args['no-subgroups'],
  },
  load_s: loadS,
  uploaded_bytes: uploaded,
  pipelines_compiled: bench.pipelinesCompiled,
  pipeline_compile_s: bench.pipelineCompileS,
  gpu_memory_bytes: loaded.info.gpuMemory,
  results: r,
};

const f = (v, d = 1) => (typeof v === 'number' ? v.toFixed(d) : String(v));
const perDispatch = r.dispatches_per_decode_token > 0 ? r.decode_encode_us_per_token / r.dispatches_per_decode_token : 0;
const report = [
  `adapter  ${loaded.adapter.name} (${loaded.adapter.backend} via dawn.node; f16 ${loaded.adapter.f16 ? 'on' : 'off'}, subgroups ${loaded.adapter.subgroups ? 'on' : 'off'})`,
  `model    ${loaded.info.architecture}, ${loaded.info.layers} layers, ${args.model}`,
  `load     ${f(loadS, 2)} s to ready (${bench.pipelinesCompiled} pipelines created in ${f(bench.pipelineCompileS, 2)} s)`,
  `prefill  ${f(r.prefill.tokens_per_s)} tok/s (${r.prompt_tokens} tokens, ${prefillChunk}-token steps)`,
  `decode   ${f(r.decode.tokens_per_s)} tok/s (${r.generated_tokens} tokens)`,
  `ttft     ${f(r.time_to_first_token_s * 1000)} ms (cold ${f(r.time_to_first_token_cold_s * 1000)} ms)`,
  `dispatch ${f(r.dispatches_per_decode_token)} per decode token; encoding ${f(r.decode_encode_us_per_token)} us of CPU per token, ${f(perDispatch, 2)} us per dispatch`,
].join('\n');
if (args.json) {
  console.error(report);
  console.log(JSON.stringify(json, null, 2));
} else {
  console.log(report);
}
process.exit(0);
