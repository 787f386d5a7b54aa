// Model bytes for the engine: GGUF downloads cached in the Origin Private File System (one file
// per URL plus a JSON record), and File/Blob sources read in slices. Synchronous access handles
// only exist in dedicated workers, so the download/read half of this module runs in worker.js;
// `listEntries` and `removeEntries` also work on the page.

const DIR = 'gemma-wgpu';
// How often a download is flushed and its record updated: what a killed page can lose.
const FLUSH_EVERY = 8 * 1024 * 1024;
const PROBE_CHUNK = 1024 * 1024;
const READ_BUFFER = 1024 * 1024;
const PROGRESS_EVERY_MS = 50;
const MAX_RETRIES = 3;
const TEMP_PREFIX = 'tmp-';

/** An Error with one of the package's error codes; the worker forwards `code` as is. */
export function codedError(code, message, cause) {
  const err = new Error(message, cause === undefined ? undefined : { cause });
  err.code = code;
  return err;
}

const abortedError = () => codedError('aborted', 'loading was aborted');

/** A ByteSource over a File or Blob: each read is one FileReaderSync slice (worker only). */
export class BlobSource {
  constructor(blob) {
    this.blob = blob;
    this.size = blob.size;
    this.reader = new FileReaderSync();
  }

  readInto(offset, dest) {
    if (offset < 0 || offset + dest.length > this.size) {
      throw codedError('bad-model', `read of ${dest.length} bytes at ${offset} is past the end of the ${this.size}-byte file`);
    }
    const bytes = new Uint8Array(this.reader.readAsArrayBuffer(this.blob.slice(offset, offset + dest.length)));
    if (bytes.length !== dest.length) {
      throw codedError('internal', `short read from the file: ${bytes.length} of ${dest.length} bytes at ${offset}`);
    }
    dest.set(bytes);
  }
}

/** A ByteSource over an OPFS synchronous access handle. */
class AccessHandleSource {
  constructor(access, size) {
    this.access = access;
    this.size = size;
  }

  readInto(offset, dest) {
    const n = this.access.read(dest, { at: offset });
    if (n !== dest.length) {
      throw codedError('bad-model', `the cached model file is shorter than expected: read ${n} of ${dest.length} bytes at ${offset}`);
    }
  }
}

/**
 * Feeds `probe` the bytes [from, to) of `source` in order. Returns true once the probe has the
 * whole header; `probed` (bytes already pushed) must equal `from`.
 */
function feedProbe(probe, source, from, to) {
  for (let at = from; at < to; ) {
    const chunk = new Uint8Array(Math.min(PROBE_CHUNK, to - at));
    source.readInto(at, chunk);
    at += chunk.length;
    if (probe.push(chunk)) return true;
  }
  return false;
}

function freeProbe(probe) {
  try {
    probe.free();
  } catch {
    // preflight may have taken ownership of it already
  }
}

/**
 * Parses the header of a complete source and checks it against the adapter: the File/Blob path,
 * and a cache hit. Returns the plan.
 */
export function preflightSource(engine, HeaderProbe, source, contextLength) {
  const probe = new HeaderProbe(source.size);
  try {
    if (!feedProbe(probe, source, 0, source.size)) {
      throw codedError('bad-model', `the file ends inside its GGUF header (${source.size} bytes)`);
    }
    return engine.preflight(probe, { contextLength });
  } finally {
    freeProbe(probe);
  }
}

export async function entryKey(url) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function cacheDir(create) {
  if (!globalThis.navigator?.storage?.getDirectory) {
    throw codedError('download-failed', 'this browser has no Origin Private File System, where downloaded models are kept; load the model from a File instead');
  }
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(DIR, { create });
  } catch (err) {
    if (!create && err?.name === 'NotFoundError') return null;
    throw codedError('download-failed', `the Origin Private File System is not usable here (${err?.message ?? err}); load the model from a File instead`, err);
  }
}

const isNotFound = (err) => err?.name === 'NotFoundError';
// Another tab or worker holds the file open.
const isLocked = (err) => err?.name === 'NoModificationAllowedError' || err?.name === 'InvalidStateError';

async function removeFile(dir, name) {
  try {
    await dir.removeEntry(name);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

async function readRecord(dir, key) {
  try {
    const file = await (await dir.getFileHandle(`${key}.json`)).getFile();
    return JSON.parse(await file.text());
  } catch (err) {
    if (isNotFound(err) || err instanceof SyntaxError) return null;
    throw err;
  }
}

async function writeRecord(dir, key, record) {
  const access = await (await dir.getFileHandle(`${key}.json`, { create: true })).createSyncAccessHandle();
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(record));
    access.truncate(0);
    access.write(bytes, { at: 0 });
    access.flush();
  } finally {
    access.close();
  }
}

/** Entries left by pages that closed without unloading a `cache: false` model. */
async function removeStaleTemporaries(dir) {
  for await (const name of dir.keys()) {
    if (!name.startsWith(TEMP_PREFIX)) continue;
    try {
      await dir.removeEntry(name);
    } catch {
      // still open in another tab
    }
  }
}

function startsWithMagic(access) {
  const magic = new Uint8Array(4);
  return access.read(magic, { at: 0 }) === 4 && String.fromCharCode(...magic) === 'GGUF';
}

function parseContentRange(value) {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value?.trim() ?? '');
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

// If-Range needs a strong validator: a weak ETag would always fail the match and send 200.
function validatorOf(record) {
  if (record?.etag && !record.etag.startsWith('W/')) return record.etag;
  return record?.lastModified ?? null;
}

function bodyLength(response) {
  const encoding = response.headers.get('Content-Encoding');
  if (encoding && encoding !== 'identity') return undefined; // the length is of the encoded body
  const length = response.headers.get('Content-Length');
  return length === null || !/^\d+$/.test(length) ? undefined : Number(length);
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      signal.removeEventListener('abort', stop);
      resolve();
    }
    function stop() {
      clearTimeout(timer);
      reject(abortedError());
    }
    signal.addEventListener('abort', stop, { once: true });
  });
}

/**
 * Reads a response body into one reused buffer where the stream allows it (a BYOB reader): the
 * download then allocates nothing per chunk, so no garbage piles up until the next GC.
 */
function bodyReader(body) {
  let reader;
  try {
    reader = body.getReader({ mode: 'byob' });
  } catch {
    return body.getReader();
  }
  let buffer = new ArrayBuffer(READ_BUFFER);
  return {
    async read() {
      const result = await reader.read(new Uint8Array(buffer));
      if (result.value) buffer = result.value.buffer;
      return result;
    },
  };
}

/**
 * Opens the model at `url` for the engine: from the cache when complete, else downloaded into
 * it (resuming a partial entry). The header is checked with `engine.preflight` as soon as it has
 * arrived, before the weights are downloaded.
 *
 * Resolves to `{ source, plan, release }`: `source` is the ByteSource the engine reads (it stays
 * open until `release()`, which also deletes a temporary entry).
 */
export async function openUrl({ url, cache, engine, HeaderProbe, contextLength, signal, onProgress }) {
  const dir = await cacheDir(true);
  await removeStaleTemporaries(dir);
  if (signal.aborted) throw abortedError();
  const ctx = { dir, url, engine, HeaderProbe, contextLength, signal, onProgress };
  if (!cache) return downloadTemporary(ctx);

  const key = await entryKey(url);
  let record = await readRecord(dir, key);
  if (record && record.url !== url) record = null;

  if (record?.complete) {
    const cached = await openComplete(ctx, key, record);
    if (cached) return cached;
    record = null;
  }

  let fileHandle;
  let access;
  try {
    fileHandle = await dir.getFileHandle(`${key}.gguf`, { create: true });
    access = await fileHandle.createSyncAccessHandle();
  } catch (err) {
    // Another tab is downloading the same URL: don't fight over the entry.
    if (isLocked(err)) return downloadTemporary(ctx);
    throw codedError('download-failed', `could not open the model cache: ${err?.message ?? err}`, err);
  }
  const entry = {
    access,
    save: (fields) => writeRecord(dir, key, { url, ...fields }),
    remove: async () => {
      access.close();
      await removeFile(dir, `${key}.gguf`);
      await removeFile(dir, `${key}.json`);
    },
  };
  try {
    const plan = await download(ctx, entry, record);
    // Reopened read-only (where supported) so other tabs can read the model while it is loaded.
    access.close();
    access = await fileHandle.createSyncAccessHandle({ mode: 'read-only' });
    const reader = access;
    return {
      source: new AccessHandleSource(reader, reader.getSize()),
      plan,
      release: async () => reader.close(),
    };
  } catch (err) {
    try {
      access.close();
    } catch {
      // already closed by remove()
    }
    throw err;
  }
}

/**
 * A complete entry whose length and magic check out, or null (entry deleted) when it must be
 * downloaded again. Makes no network request.
 */
async function openComplete(ctx, key, record) {
  const { dir, engine, HeaderProbe, contextLength, onProgress } = ctx;
  let fileHandle;
  try {
    fileHandle = await dir.getFileHandle(`${key}.gguf`);
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
  let access;
  try {
    // Read-only handles (where supported) let several tabs share one cached model.
    access = await fileHandle.createSyncAccessHandle({ mode: 'read-only' });
  } catch (err) {
    if (isLocked(err)) return downloadTemporary(ctx);
    throw codedError('download-failed', `could not open the model cache: ${err?.message ?? err}`, err);
  }
  let result = null;
  try {
    const size = access.getSize();
    if (size === record.size && startsWithMagic(access)) {
      const source = new AccessHandleSource(access, size);
      onProgress({ phase: 'cache', loaded: size, total: size });
      try {
        const plan = preflightSource(engine, HeaderProbe, source, contextLength);
        result = { source, plan, release: async () => access.close() };
      } catch (err) {
        // A file that was whole when written but no longer parses is fetched again; any other
        // refusal (adapter limits) is about this device, not the file, so the entry stays.
        if (err?.code !== 'bad-model') throw err;
      }
    }
  } finally {
    if (!result) access.close();
  }
  if (result) return result;
  await removeFile(dir, `${key}.gguf`);
  await removeFile(dir, `${key}.json`);
  return null;
}

async function downloadTemporary(ctx) {
  const { dir } = ctx;
  const name = `${TEMP_PREFIX}${crypto.randomUUID()}.gguf`;
  let access;
  try {
    access = await (await dir.getFileHandle(name, { create: true })).createSyncAccessHandle();
  } catch (err) {
    throw codedError('download-failed', `could not create a file for the download: ${err?.message ?? err}`, err);
  }
  const remove = async () => {
    try {
      access.close();
    } catch {
      // already closed
    }
    await removeFile(dir, name);
  };
  try {
    const plan = await download(ctx, { access, save: async () => {}, remove }, null);
    return { source: new AccessHandleSource(access, access.getSize()), plan, release: remove };
  } catch (err) {
    await remove();
    throw err;
  }
}

/**
 * Streams `ctx.url` into `entry.access`, resuming from `record` when it is a partial download
 * of the same URL with a validator. Returns the preflight plan. On failure the entry is kept
 * for a later resume, except when the file itself was refused (then it is removed).
 */
async function download(ctx, entry, record) {
  const { url, engine, HeaderProbe, contextLength, signal, onProgress } = ctx;
  const { access } = entry;
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  signal.addEventListener('abort', onAbort, { once: true });

  // A partial entry is resumed only with a validator that lets the server say "changed".
  let validator = record && !record.complete ? validatorOf(record) : null;
  let pos = validator ? Math.min(record.downloaded ?? 0, access.getSize()) : 0;
  let total = pos > 0 ? record.size ?? undefined : undefined;
  let etag = pos > 0 ? record.etag ?? null : null;
  let lastModified = pos > 0 ? record.lastModified ?? null : null;

  let probe = null;
  let probed = 0; // bytes of the file already pushed into `probe`
  let plan = null;
  let retries = 0;
  let lastProgress = 0;

  const save = async () => {
    try {
      access.flush();
      await entry.save({ size: total ?? null, etag, lastModified, complete: false, downloaded: pos });
    } catch {
      // Only resuming suffers; the download itself goes on or fails on its own.
    }
  };
  const newProbe = () => {
    if (probe) freeProbe(probe);
    probe = new HeaderProbe(total);
    probed = 0;
    plan = null;
  };
  const preflight = () => {
    try {
      plan = engine.preflight(probe, { contextLength });
    } finally {
      freeProbe(probe);
      probe = null;
    }
  };

  try {
    for (;;) {
      const headers = {};
      if (pos > 0) {
        headers.Range = `bytes=${pos}-`;
        if (validator) headers['If-Range'] = validator;
      }
      let response;
      try {
        response = await fetch(url, { headers, signal: controller.signal, cache: 'no-store' });
      } catch (err) {
        if (signal.aborted) throw abortedError();
        throw codedError('download-failed', `could not fetch ${url}: ${err?.message ?? err}`, err);
      }

      if (pos > 0 && (response.status === 206 || response.status === 416)) {
        const range = parseContentRange(response.headers.get('Content-Range'));
        const length = bodyLength(response);
        const rangeTotal = range ? range.total : length === undefined ? undefined : pos + length;
        const mismatch =
          response.status === 416 ||
          (range && range.start !== pos) ||
          (total !== undefined && rangeTotal !== undefined && rangeTotal !== total);
        if (mismatch) {
          // The entry doesn't line up with what the server has: fetch it whole.
          await response.body?.cancel().catch(() => {});
          pos = 0;
          total = undefined;
          validator = null;
          continue;
        }
        total ??= rangeTotal;
      } else if (response.status === 200) {
        // A first request, a changed file (If-Range failed) or a server without ranges.
        pos = 0;
        total = bodyLength(response);
        etag = response.headers.get('ETag');
        lastModified = response.headers.get('Last-Modified');
        access.truncate(0);
        newProbe();
      } else {
        await response.body?.cancel().catch(() => {});
        const status = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
        throw codedError('download-failed', `could not fetch ${url}: ${status}`);
      }

      if (!probe && !plan) newProbe();
      if (probe && probed < pos) {
        // Resuming: the header is parsed from what the cache already holds first.
        const done = feedProbe(probe, new AccessHandleSource(access, pos), probed, pos);
        probed = pos;
        if (done) preflight();
      }

      const attemptStart = pos;
      let sinceFlush = 0;
      try {
        const reader = bodyReader(response.body);
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (total !== undefined && pos + value.length > total) {
            throw codedError('download-failed', `${url} sent more than the ${total} bytes it announced`);
          }
          if (access.write(value, { at: pos }) !== value.length) {
            throw codedError('download-failed', 'the model cache could not be written (is the disk full?)');
          }
          pos += value.length;
          sinceFlush += value.length;
          if (probe) {
            probed += value.length;
            if (probe.push(value)) preflight();
          }
          if (sinceFlush >= FLUSH_EVERY) {
            sinceFlush = 0;
            await save();
          }
          const now = performance.now();
          if (now - lastProgress >= PROGRESS_EVERY_MS) {
            lastProgress = now;
            onProgress({ phase: 'download', loaded: pos, total });
          }
        }
        if (total !== undefined && pos < total) {
          throw new TypeError(`the connection closed after ${pos} of ${total} bytes`);
        }
      } catch (err) {
        // Refusals from the probe or preflight: the outer handler deletes the entry.
        if (err?.code && err.code !== 'download-failed') throw err;
        await save();
        if (signal.aborted) throw abortedError();
        if (err?.code) throw err;
        if (err?.name === 'QuotaExceededError') {
          throw codedError('download-failed', `no room left to store the model (${pos} bytes written): free some site storage and try again`, err);
        }
        retries = pos > attemptStart ? 1 : retries + 1;
        if (retries > MAX_RETRIES) {
          throw codedError('download-failed', `the download of ${url} kept failing at byte ${pos}: ${err?.message ?? err}`, err);
        }
        await sleep(500 * retries, signal);
        validator = validatorOf({ etag, lastModified });
        continue;
      }

      total = pos;
      access.truncate(pos);
      access.flush();
      onProgress({ phase: 'download', loaded: pos, total });
      if (!plan) {
        throw codedError('bad-model', `${url} ends inside its GGUF header after ${pos} bytes: not a complete GGUF file`);
      }
      await entry.save({ size: total, etag, lastModified, complete: true, downloaded: pos });
      return plan;
    }
  } catch (err) {
    // A file the engine refuses is not worth keeping for a resume.
    if (err?.code === 'bad-model' || err?.code === 'adapter-limits') {
      controller.abort();
      await entry.remove().catch(() => {});
    }
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
    if (probe) freeProbe(probe);
  }
}

/** What the cache holds, from the records (files being downloaded included). */
export async function listEntries() {
  const dir = await cacheDir(false);
  if (!dir) return [];
  const entries = [];
  for await (const name of dir.keys()) {
    if (!name.endsWith('.json')) continue;
    const record = await readRecord(dir, name.slice(0, -5));
    if (!record || typeof record.url !== 'string') continue;
    entries.push({
      url: record.url,
      size: record.size ?? undefined,
      downloaded: record.complete ? record.size : record.downloaded ?? 0,
      complete: record.complete === true,
      etag: record.etag ?? undefined,
      lastModified: record.lastModified ?? undefined,
    });
  }
  return entries;
}

/**
 * Deletes the entry of `url`, or every entry. Files open in a loaded model are kept; returns
 * how many entries were deleted and how many were in use.
 */
export async function removeEntries(url) {
  const dir = await cacheDir(false);
  let removed = 0;
  let inUse = 0;
  if (!dir) return { removed, inUse };
  const names = [];
  if (url === undefined) {
    for await (const name of dir.keys()) if (name.endsWith('.gguf')) names.push(name.slice(0, -5));
  } else {
    names.push(await entryKey(url));
  }
  for (const key of names) {
    try {
      await dir.removeEntry(`${key}.gguf`);
    } catch (err) {
      if (isNotFound(err)) {
        // A record without its file still goes.
      } else if (isLocked(err)) {
        inUse += 1;
        continue;
      } else {
        throw err;
      }
    }
    await removeFile(dir, `${key}.json`);
    removed += 1;
  }
  return { removed, inUse };
}
