// Test page helpers: the tests drive the packed package through these with page.evaluate, so
// the code that runs is the code a site would run (module import, worker, OPFS).
import * as api from '/gemma-wgpu/index.js';

const { Gemma, GemmaError } = api;
const models = new Map();

/** A rejection as plain data, so it crosses page.evaluate. */
function describe(err) {
  return {
    name: err?.name,
    code: err?.code,
    message: String(err?.message ?? err),
    isGemmaError: err instanceof GemmaError,
  };
}

window.harness = {
  api,

  async load(key, url, options = {}) {
    const progress = [];
    const t0 = performance.now();
    try {
      const gemma = await Gemma.load(url, {
        ...options,
        onProgress: (p) => progress.push({ ...p, t: performance.now() - t0 }),
      });
      models.set(key, gemma);
      return { ok: true, ms: performance.now() - t0, progress, stats: gemma.stats() };
    } catch (err) {
      return { ok: false, ms: performance.now() - t0, progress, error: describe(err) };
    }
  },

  /** Test hook: destroys the GPU device of model `key`. */
  async loseDevice(key) {
    try {
      await models.get(key).loseDeviceForTest();
      return { ok: true };
    } catch (err) {
      return { ok: false, error: describe(err) };
    }
  },

  async unload(key) {
    await models.get(key)?.unload();
    models.delete(key);
  },

  async bench(key, options) {
    try {
      return { ok: true, value: await models.get(key).bench(options) };
    } catch (err) {
      return { ok: false, error: { code: err.code, message: err.message } };
    }
  },

  stats(key) {
    return models.get(key).stats();
  },

  /** The features and subgroup sizes of this page's WebGPU adapter (what the engine's worker sees). */
  async adapterFeatures() {
    const adapter = await navigator.gpu.requestAdapter();
    const info = adapter?.info ?? {};
    return {
      features: adapter ? [...adapter.features] : [],
      subgroupMinSize: info.subgroupMinSize ?? null,
      subgroupMaxSize: info.subgroupMaxSize ?? null,
    };
  },

  /** Greedy generation: the ids and text pieces, and how long each piece took. */
  async generate(key, prompt, options = {}) {
    const gemma = models.get(key);
    const ids = [];
    const pieces = [];
    const t0 = performance.now();
    try {
      for await (const piece of gemma.generate(prompt, { temperature: 0, ...options })) {
        ids.push(piece.id);
        pieces.push(piece.text);
      }
      return { ok: true, ids, text: pieces.join(''), pieces, ms: performance.now() - t0, stats: gemma.stats() };
    } catch (err) {
      return { ok: false, ids, pieces, ms: performance.now() - t0, error: describe(err) };
    }
  },

  /** Aborts through an AbortController once `after` pieces have arrived. */
  async generateAndAbort(key, prompt, after, options = {}) {
    const gemma = models.get(key);
    const controller = new AbortController();
    const ids = [];
    let abortedAt = null;
    const t0 = performance.now();
    try {
      for await (const piece of gemma.generate(prompt, { temperature: 0, ...options, signal: controller.signal })) {
        ids.push(piece.id);
        if (ids.length === after) {
          abortedAt = performance.now();
          controller.abort();
        }
      }
      return { ok: true, ids, ms: performance.now() - t0 };
    } catch (err) {
      const now = performance.now();
      return { ok: false, ids, error: describe(err), stopMs: abortedAt === null ? null : now - abortedAt };
    }
  },

  /** Starts a generation, waits for its first piece, then starts a second one meanwhile. */
  async concurrent(key, prompt, options = {}) {
    const gemma = models.get(key);
    const first = gemma.generate(prompt, { temperature: 0, ...options });
    const firstIds = [];
    const head = await first.next();
    if (!head.done) firstIds.push(head.value.id);
    const secondIds = [];
    const second = (async () => {
      try {
        for await (const piece of gemma.generate(prompt, { temperature: 0, ...options })) secondIds.push(piece.id);
        return { ok: true, ids: secondIds };
      } catch (err) {
        return { ok: false, ids: secondIds, error: describe(err) };
      }
    })();
    let firstResult;
    try {
      for await (const piece of first) firstIds.push(piece.id);
      firstResult = { ok: true, ids: firstIds };
    } catch (err) {
      firstResult = { ok: false, ids: firstIds, error: describe(err) };
    }
    return { first: firstResult, second: await second };
  },

  async chatCompletion(key, request) {
    const gemma = models.get(key);
    try {
      if (!request.stream) return { ok: true, value: await gemma.createChatCompletion(request) };
      const chunks = [];
      for await (const chunk of await gemma.createChatCompletion(request)) chunks.push(chunk);
      return { ok: true, chunks };
    } catch (err) {
      return { ok: false, error: describe(err) };
    }
  },

  /** Every file in this origin's OPFS, with its size. */
  async opfsFiles() {
    const out = [];
    const walk = async (dir, prefix) => {
      for await (const [name, handle] of dir.entries()) {
        if (handle.kind === 'directory') await walk(handle, `${prefix}${name}/`);
        else out.push({ path: `${prefix}${name}`, size: (await handle.getFile()).size });
      }
    };
    await walk(await navigator.storage.getDirectory(), '');
    return out;
  },

  /** SHA-256 (hex) of every OPFS file of `size` bytes. */
  async opfsDigests(size) {
    const out = [];
    for (const f of await this.opfsFiles()) {
      if (f.size !== size) continue;
      let dir = await navigator.storage.getDirectory();
      const parts = f.path.split('/');
      for (const part of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(part);
      const file = await (await dir.getFileHandle(parts.at(-1))).getFile();
      const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
      out.push(Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join(''));
    }
    return out;
  },

  async opfsClear() {
    const root = await navigator.storage.getDirectory();
    for await (const [name] of root.entries()) await root.removeEntry(name, { recursive: true });
  },

  /** Cuts an OPFS file down to `size` bytes, as a crash or a full disk might leave it. */
  async opfsTruncate(path, size) {
    let dir = await navigator.storage.getDirectory();
    const parts = path.split('/');
    for (const part of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(part);
    const file = await dir.getFileHandle(parts.at(-1));
    const writable = await file.createWritable({ keepExistingData: true });
    await writable.truncate(size);
    await writable.close();
    return (await file.getFile()).size;
  },
};

document.getElementById('state').textContent = 'ready';
document.body.dataset.ready = '1';
