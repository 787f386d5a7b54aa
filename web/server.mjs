#!/usr/bin/env node
// Static file server for the demo, the npm package and the models, with what a model download
// needs: HEAD, ETag / Last-Modified, single-range requests with If-Range, and streaming from
// disk (a 250 MB model never sits in memory). No dependencies.
//
//   node web/server.mjs --port 8080 --root web/demo --mount /gemma-wgpu=pkg --mount /models=DIR
//
// --test-hooks adds what the browser tests need: GET /__log (the requests seen, as JSON),
// POST /__log/clear, and `?cut=N` on any file, which sends the first N bytes of the body and then
// drops the connection, once per path and N, so that the client's retry of the same URL succeeds.

import { createServer } from 'node:http';
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.cjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.gguf': 'application/octet-stream',
  '.bin': 'application/octet-stream',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.ts': 'text/plain; charset=utf-8',
  '.wgsl': 'text/plain; charset=utf-8',
  '.woff2': 'font/woff2',
};

// How long a cut response stays open after its last byte (see ?cut below).
const CUT_DELAY_MS = 500;

function mimeType(file) {
  return MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
}

// A strong validator that changes whenever the file is replaced or rewritten.
function etagOf(stat) {
  return `"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
}

// Parses a single `bytes=` range against the file size.
// Returns null when the header should be ignored (absent, malformed or several ranges: the
// whole file is sent), 'unsatisfiable' for a 416, else { start, end } (inclusive).
export function parseRange(header, size) {
  if (!header) return null;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return null;
  const [, a, b] = m;
  if (a === '' && b === '') return null;
  let start;
  let end;
  if (a === '') {
    // Suffix range: the last b bytes.
    const n = Number(b);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return null;
  }
  if (start >= size || size === 0) return 'unsatisfiable';
  return { start, end };
}

// If-Range holds either an ETag (strong comparison) or an HTTP date (must equal Last-Modified).
function ifRangeMatches(value, etag, lastModified) {
  const v = value.trim();
  if (v.startsWith('"') || v.startsWith('W/')) return v === etag;
  return v === lastModified;
}

function etagListMatches(header, etag) {
  if (header.trim() === '*') return true;
  const weak = (t) => t.trim().replace(/^W\//, '');
  return header.split(',').some((t) => weak(t) === weak(etag));
}

function parseArgs(argv) {
  const opts = { port: 8080, host: '127.0.0.1', root: null, mounts: {}, testHooks: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--port') opts.port = Number(value());
    else if (arg === '--host') opts.host = value();
    else if (arg === '--root') opts.root = value();
    else if (arg === '--mount') {
      const spec = value();
      const eq = spec.indexOf('=');
      if (eq <= 0) throw new Error(`--mount wants /prefix=DIR, got ${spec}`);
      opts.mounts[spec.slice(0, eq)] = spec.slice(eq + 1);
    } else if (arg === '--test-hooks') opts.testHooks = true;
    else if (arg === '--quiet') opts.quiet = true;
    else if (arg === '--help' || arg === '-h') {
      opts.help = true;
    } else throw new Error(`unknown argument ${arg}`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    throw new Error('--port wants a number from 0 to 65535');
  }
  return opts;
}

function normalizePrefix(prefix) {
  let p = prefix.trim();
  if (!p.startsWith('/')) p = '/' + p;
  p = p.replace(/\/+$/, '');
  return p; // '' is the root mount
}

/**
 * Starts the server. Resolves once it listens.
 * opts: { port = 0, host = '127.0.0.1', root (dir served at /), mounts: { '/prefix': dir },
 *         testHooks = false }
 * Returns { server, port, origin, url(path), close(), log(), clearLog() }.
 */
export async function startServer(opts = {}) {
  const mountList = [];
  const addMount = (prefix, dir) => {
    mountList.push({ prefix: normalizePrefix(prefix), dir: path.resolve(dir) });
  };
  if (opts.root) addMount('/', opts.root);
  for (const [prefix, dir] of Object.entries(opts.mounts ?? {})) addMount(prefix, dir);
  for (const m of mountList) {
    const st = await fsp.stat(m.dir).catch(() => null);
    if (!st?.isDirectory()) throw new Error(`not a directory: ${m.dir} (for ${m.prefix || '/'})`);
  }
  // Longest prefix first, so /models/tiny wins over /models.
  mountList.sort((a, b) => b.prefix.length - a.prefix.length);

  const testHooks = Boolean(opts.testHooks);
  const requestLog = [];
  const cutsDone = new Set();
  const sockets = new Set();

  const resolvePath = (pathname) => {
    for (const m of mountList) {
      if (pathname === m.prefix || pathname.startsWith(m.prefix + '/')) {
        const rest = pathname.slice(m.prefix.length);
        const file = path.resolve(m.dir, '.' + path.posix.normalize('/' + rest));
        if (file !== m.dir && !file.startsWith(m.dir + path.sep)) return { forbidden: true };
        return { file, mount: m, rest };
      }
    }
    return null;
  };

  const handler = async (req, res) => {
    let entry = null;
    const send = (status, body, headers = {}) => {
      if (entry) entry.status = status;
      const data = Buffer.from(body);
      res.writeHead(status, {
        'Content-Type': 'text/plain; charset=utf-8',
        'Content-Length': data.length,
        'Cache-Control': 'no-store',
        ...headers,
      });
      res.end(req.method === 'HEAD' ? undefined : data);
    };

    let url;
    try {
      url = new URL(req.url, 'http://localhost');
    } catch {
      return send(400, 'bad request\n');
    }
    let pathname;
    try {
      pathname = decodeURIComponent(url.pathname);
    } catch {
      return send(400, 'bad request\n');
    }

    if (testHooks && pathname.startsWith('/__log')) {
      if (pathname === '/__log' && req.method === 'GET') {
        return send(200, JSON.stringify(requestLog), { 'Content-Type': 'application/json' });
      }
      if (pathname === '/__log/clear' && req.method === 'POST') {
        requestLog.length = 0;
        return send(204, '');
      }
      return send(404, 'not found\n');
    }

    if (testHooks) {
      entry = {
        method: req.method,
        path: pathname,
        query: url.search,
        range: req.headers.range ?? null,
        ifRange: req.headers['if-range'] ?? null,
        status: null,
        time: Date.now(),
      };
      requestLog.push(entry);
    }

    if (req.method === 'OPTIONS') {
      if (entry) entry.status = 204;
      res.writeHead(204, {
        'Access-Control-Allow-Origin': '*',
        'Access-Control-Allow-Methods': 'GET, HEAD, OPTIONS',
        'Access-Control-Allow-Headers': 'Range, If-Range, If-None-Match, If-Modified-Since',
        'Access-Control-Max-Age': '600',
      });
      return res.end();
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return send(405, 'method not allowed\n', { Allow: 'GET, HEAD, OPTIONS' });
    }
    if (pathname.includes('\0')) return send(400, 'bad request\n');
    // The URL parser already folds plain `..`; what is left came in encoded (%2F, backslashes)
    // and is an attempt to leave the served directories.
    if (pathname.split(/[\\/]/).includes('..')) return send(403, 'forbidden\n');

    const resolved = resolvePath(pathname);
    if (!resolved) return send(404, 'not found\n');
    if (resolved.forbidden) return send(403, 'forbidden\n');
    let { file } = resolved;

    let stat = await fsp.stat(file).catch(() => null);
    if (stat?.isDirectory()) {
      if (!pathname.endsWith('/')) {
        if (entry) entry.status = 301;
        res.writeHead(301, { Location: url.pathname + '/' + url.search, 'Content-Length': 0 });
        return res.end();
      }
      file = path.join(file, 'index.html');
      stat = await fsp.stat(file).catch(() => null);
    }
    if (!stat?.isFile()) return send(404, 'not found\n');

    const size = stat.size;
    const etag = etagOf(stat);
    const lastModified = stat.mtime.toUTCString();
    const headers = {
      'Content-Type': mimeType(file),
      'Accept-Ranges': 'bytes',
      ETag: etag,
      'Last-Modified': lastModified,
      // Revalidate every time: a rebuilt package or model must never be served stale.
      'Cache-Control': 'no-cache',
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Expose-Headers': 'Content-Length, Content-Range, Accept-Ranges, ETag, Last-Modified',
      'Cross-Origin-Resource-Policy': 'cross-origin',
    };

    // Conditional GET: If-None-Match wins over If-Modified-Since.
    const inm = req.headers['if-none-match'];
    const ims = req.headers['if-modified-since'];
    if (
      (inm && etagListMatches(inm, etag)) ||
      (!inm && ims && !Number.isNaN(Date.parse(ims)) && Math.floor(stat.mtimeMs / 1000) <= Date.parse(ims) / 1000)
    ) {
      if (entry) entry.status = 304;
      const { 'Content-Type': _, ...rest } = headers;
      res.writeHead(304, rest);
      return res.end();
    }

    let range = parseRange(req.headers.range, size);
    const ifRange = req.headers['if-range'];
    if (range && ifRange && !ifRangeMatches(ifRange, etag, lastModified)) range = null;
    if (range === 'unsatisfiable') {
      return send(416, 'range not satisfiable\n', { 'Content-Range': `bytes */${size}`, 'Accept-Ranges': 'bytes' });
    }

    let start = 0;
    let end = size - 1;
    let status = 200;
    if (range) {
      ({ start, end } = range);
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
    const length = size === 0 ? 0 : end - start + 1;
    headers['Content-Length'] = length;
    if (entry) entry.status = status;

    if (req.method === 'HEAD' || length === 0) {
      res.writeHead(status, headers);
      return res.end();
    }

    // Fault injection: once per (path, N), send N bytes of the body and drop the connection.
    let cut = null;
    if (testHooks && url.searchParams.has('cut')) {
      const n = Number(url.searchParams.get('cut'));
      const key = `${pathname}?cut=${url.searchParams.get('cut')}`;
      if (Number.isInteger(n) && n >= 0 && !cutsDone.has(key)) {
        cutsDone.add(key);
        cut = Math.min(n, length);
        if (entry) entry.cut = cut;
      }
    }

    res.writeHead(status, headers);
    const stream = createReadStream(file, {
      start,
      end: cut === null ? end : start + cut - 1,
      highWaterMark: 1 << 20,
    });
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    if (cut === null) {
      stream.pipe(res);
      return;
    }
    if (cut === 0) {
      stream.destroy();
      res.flushHeaders();
      res.socket?.end();
      return;
    }
    stream.on('data', (chunk) => {
      if (!res.write(chunk)) {
        stream.pause();
        res.once('drain', () => stream.resume());
      }
    });
    stream.on('end', () => {
      // The connection drops a while after the last byte, as a network failure mid-download
      // would: closing right away would let the client's HTTP stack see the failure before it
      // hands the body on (Chromium then delivers none of it).
      const socket = res.socket;
      if (!socket) return;
      setTimeout(() => socket.destroy(), CUT_DELAY_MS).unref();
    });
  };

  const server = createServer((req, res) => {
    handler(req, res).catch((err) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end(`internal error: ${err.message}\n`);
      } else {
        res.destroy();
      }
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  const host = opts.host ?? '127.0.0.1';
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = server.address().port;
  const origin = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  return {
    server,
    port,
    origin,
    url: (p = '/') => new URL(p, origin).href,
    log: () => requestLog.map((e) => ({ ...e })),
    clearLog: () => {
      requestLog.length = 0;
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

const usage = `usage: node web/server.mjs [--port 8080] [--host 127.0.0.1] [--root DIR]
                          [--mount /prefix=DIR ...] [--test-hooks]`;

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`server: ${err.message}\n${usage}`);
    process.exit(2);
  }
  if (opts.help) {
    console.log(usage);
    process.exit(0);
  }
  try {
    const s = await startServer(opts);
    const mounts = [...(opts.root ? [['/', opts.root]] : []), ...Object.entries(opts.mounts)];
    for (const [prefix, dir] of mounts) console.log(`  ${prefix.padEnd(14)} -> ${path.resolve(dir)}`);
    console.log(`Serving on ${s.origin}/`);
    const stop = () => s.close().then(() => process.exit(0));
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  } catch (err) {
    console.error(`server: ${err.message}`);
    process.exit(1);
  }
}
