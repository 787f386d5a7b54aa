// The local server on its own: what the model download in the browser relies on (ranges,
// validators, streaming) and the test hooks the browser tests use.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  mkdtempSync, writeFileSync, mkdirSync, rmSync, utimesSync, readFileSync, openSync, ftruncateSync, closeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { startServer, parseRange } from '../server.mjs';
import { WEB_DIR } from './helpers/paths.mjs';

let dir;
let srv;
const data = Buffer.alloc(300_000);
for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 8)) & 0xff;

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'gemma-server-test-'));
  mkdirSync(path.join(dir, 'site', 'sub'), { recursive: true });
  mkdirSync(path.join(dir, 'models', 'tiny'), { recursive: true });
  mkdirSync(path.join(dir, 'pkg', 'wasm'), { recursive: true });
  writeFileSync(path.join(dir, 'site', 'index.html'), '<!doctype html><title>root</title>');
  writeFileSync(path.join(dir, 'site', 'sub', 'index.html'), 'sub index');
  writeFileSync(path.join(dir, 'site', 'app.mjs'), 'export {}');
  writeFileSync(path.join(dir, 'site', 'style.css'), 'body{}');
  writeFileSync(path.join(dir, 'secret.txt'), 'outside every mount');
  writeFileSync(path.join(dir, 'pkg', 'index.js'), 'export const x = 1;');
  writeFileSync(path.join(dir, 'pkg', 'wasm', 'm.wasm'), Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
  writeFileSync(path.join(dir, 'models', 'big.gguf'), data);
  writeFileSync(path.join(dir, 'models', 'empty.gguf'), Buffer.alloc(0));
  writeFileSync(path.join(dir, 'models', 'tiny', 'a.gguf'), 'tiny model');
  srv = await startServer({
    port: 0,
    root: path.join(dir, 'site'),
    mounts: {
      '/gemma-wgpu': path.join(dir, 'pkg'),
      '/models': path.join(dir, 'models'),
      '/models/tiny/': path.join(dir, 'models', 'tiny'),
    },
    testHooks: true,
  });
});

after(async () => {
  await srv?.close();
  rmSync(dir, { recursive: true, force: true });
});

// A raw request, so the test sees exactly what went over the wire (fetch would hide a cut).
function raw(pathname, { method = 'GET', headers = {} } = {}) {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: srv.port, path: pathname, method, headers, agent: false });
    req.on('response', (res) => {
      const chunks = [];
      let aborted = false;
      res.on('data', (c) => chunks.push(c));
      res.on('aborted', () => (aborted = true));
      res.on('error', () => (aborted = true));
      res.on('close', () =>
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete && !aborted }),
      );
    });
    req.on('error', (error) => resolve({ error }));
    req.end();
  });
}

test('parseRange', () => {
  assert.deepEqual(parseRange('bytes=0-9', 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange('bytes=90-', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=90-200', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=-10', 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange('bytes=-500', 100), { start: 0, end: 99 });
  assert.equal(parseRange('bytes=100-', 100), 'unsatisfiable');
  assert.equal(parseRange('bytes=-0', 100), 'unsatisfiable');
  assert.equal(parseRange('bytes=0-', 0), 'unsatisfiable');
  assert.equal(parseRange('bytes=0-1,5-6', 100), null);
  assert.equal(parseRange('items=0-1', 100), null);
  assert.equal(parseRange('bytes=9-3', 100), null);
  assert.equal(parseRange(undefined, 100), null);
});

test('MIME types, index.html and 404', async () => {
  const cases = [
    ['/', 'text/html; charset=utf-8'],
    ['/app.mjs', 'text/javascript; charset=utf-8'],
    ['/style.css', 'text/css; charset=utf-8'],
    ['/gemma-wgpu/index.js', 'text/javascript; charset=utf-8'],
    ['/gemma-wgpu/wasm/m.wasm', 'application/wasm'],
    ['/models/big.gguf', 'application/octet-stream'],
  ];
  for (const [p, type] of cases) {
    const r = await raw(p);
    assert.equal(r.status, 200, p);
    assert.equal(r.headers['content-type'], type, p);
  }
  assert.equal((await raw('/')).body.toString(), '<!doctype html><title>root</title>');
  assert.equal((await raw('/sub/')).body.toString(), 'sub index');
  const redirect = await raw('/sub?x=1');
  assert.equal(redirect.status, 301);
  assert.equal(redirect.headers.location, '/sub/?x=1');
  assert.equal((await raw('/nope.js')).status, 404);
  assert.equal((await raw('/models/nope.gguf')).status, 404);
  assert.equal((await raw('/gemma-wgpu/wasm/')).status, 404);
  assert.equal((await raw('/models/big.gguf', { method: 'POST' })).status, 405);
});

test('the longest mount prefix wins', async () => {
  const r = await raw('/models/tiny/a.gguf');
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'tiny model');
});

test('full GET: body, length and validators', async () => {
  const r = await raw('/models/big.gguf');
  assert.equal(r.status, 200);
  assert.ok(r.complete);
  assert.equal(r.headers['content-length'], String(data.length));
  assert.equal(r.headers['accept-ranges'], 'bytes');
  assert.match(r.headers.etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
  assert.ok(!Number.isNaN(Date.parse(r.headers['last-modified'])));
  assert.ok(r.body.equals(data));
});

test('HEAD has the headers and no body', async () => {
  const r = await raw('/models/big.gguf', { method: 'HEAD' });
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-length'], String(data.length));
  assert.equal(r.headers['accept-ranges'], 'bytes');
  assert.ok(r.headers.etag);
  assert.equal(r.body.length, 0);
  const missing = await raw('/models/nope.gguf', { method: 'HEAD' });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.length, 0);
});

test('single ranges: 206 with Content-Range, suffix and open-ended', async () => {
  let r = await raw('/models/big.gguf', { headers: { Range: 'bytes=100-199' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers['content-range'], `bytes 100-199/${data.length}`);
  assert.equal(r.headers['content-length'], '100');
  assert.ok(r.body.equals(data.subarray(100, 200)));

  r = await raw('/models/big.gguf', { headers: { Range: 'bytes=250000-' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers['content-range'], `bytes 250000-${data.length - 1}/${data.length}`);
  assert.ok(r.body.equals(data.subarray(250000)));

  r = await raw('/models/big.gguf', { headers: { Range: 'bytes=-16' } });
  assert.equal(r.status, 206);
  assert.ok(r.body.equals(data.subarray(data.length - 16)));

  r = await raw('/models/big.gguf', { method: 'HEAD', headers: { Range: 'bytes=10-19' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers['content-length'], '10');
  assert.equal(r.body.length, 0);

  // Several ranges are not supported: the whole file, which HTTP allows.
  r = await raw('/models/big.gguf', { headers: { Range: 'bytes=0-1,4-5' } });
  assert.equal(r.status, 200);
  assert.equal(r.body.length, data.length);
});

test('unsatisfiable ranges get 416 with the size', async () => {
  let r = await raw('/models/big.gguf', { headers: { Range: `bytes=${data.length}-` } });
  assert.equal(r.status, 416);
  assert.equal(r.headers['content-range'], `bytes */${data.length}`);
  r = await raw('/models/empty.gguf', { headers: { Range: 'bytes=0-' } });
  assert.equal(r.status, 416);
  r = await raw('/models/empty.gguf');
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-length'], '0');
});

test('If-Range: the range only while the validator still matches', async () => {
  const head = await raw('/models/big.gguf', { method: 'HEAD' });
  const { etag, 'last-modified': lastModified } = head.headers;
  let r = await raw('/models/big.gguf', { headers: { Range: 'bytes=10-', 'If-Range': etag } });
  assert.equal(r.status, 206);
  assert.ok(r.body.equals(data.subarray(10)));
  r = await raw('/models/big.gguf', { headers: { Range: 'bytes=10-', 'If-Range': lastModified } });
  assert.equal(r.status, 206);
  r = await raw('/models/big.gguf', { headers: { Range: 'bytes=10-', 'If-Range': '"stale-etag"' } });
  assert.equal(r.status, 200);
  assert.ok(r.body.equals(data));
  r = await raw('/models/big.gguf', { headers: { Range: 'bytes=10-', 'If-Range': 'Thu, 01 Jan 1970 00:00:00 GMT' } });
  assert.equal(r.status, 200);
});

test('ETag changes when the file changes; conditional GET gets 304', async () => {
  const file = path.join(dir, 'models', 'changing.gguf');
  writeFileSync(file, 'one');
  utimesSync(file, new Date(1_000_000_000_000), new Date(1_000_000_000_000));
  const first = await raw('/models/changing.gguf');
  const notModified = await raw('/models/changing.gguf', { headers: { 'If-None-Match': first.headers.etag } });
  assert.equal(notModified.status, 304);
  assert.equal(notModified.body.length, 0);
  const since = await raw('/models/changing.gguf', { headers: { 'If-Modified-Since': first.headers['last-modified'] } });
  assert.equal(since.status, 304);
  writeFileSync(file, 'two!');
  const second = await raw('/models/changing.gguf', { headers: { 'If-None-Match': first.headers.etag } });
  assert.equal(second.status, 200);
  assert.notEqual(second.headers.etag, first.headers.etag);
  assert.equal(second.body.toString(), 'two!');
});

test('path traversal is rejected', async () => {
  for (const p of [
    '/..%2fsecret.txt',
    '/gemma-wgpu/..%2f..%2fsecret.txt',
    '/models/%2e%2e%2fsecret.txt',
    '/models/..%5csecret.txt',
    '/%2e%2e/%2e%2e/etc/passwd',
  ]) {
    const r = await raw(p);
    assert.ok(r.status === 403 || r.status === 404, `${p}: ${r.status}`);
    assert.ok(!r.body.toString().includes('outside every mount'), p);
  }
  assert.equal((await raw('/models/a%00.gguf')).status, 400);
  assert.equal((await raw('/%E0%A4%A')).status, 400);
});

test('request log records method, path and range', async () => {
  await raw('/__log/clear', { method: 'POST' });
  await raw('/models/big.gguf', { headers: { Range: 'bytes=5-', 'If-Range': '"x"' } });
  await raw('/models/tiny/a.gguf?v=2', { method: 'HEAD' });
  const log = JSON.parse((await raw('/__log')).body.toString());
  assert.equal(log.length, 2);
  assert.deepEqual(
    log.map(({ method, path: p, query, range, ifRange, status }) => ({ method, p, query, range, ifRange, status })),
    [
      { method: 'GET', p: '/models/big.gguf', query: '', range: 'bytes=5-', ifRange: '"x"', status: 200 },
      { method: 'HEAD', p: '/models/tiny/a.gguf', query: '?v=2', range: null, ifRange: null, status: 200 },
    ],
  );
  await raw('/__log/clear', { method: 'POST' });
  assert.deepEqual(JSON.parse((await raw('/__log')).body.toString()), []);
});

test('?cut=N sends N bytes then drops the connection, once per path and N', async () => {
  const n = 123_457;
  const first = await raw(`/models/big.gguf?cut=${n}`);
  assert.equal(first.status, 200);
  assert.equal(first.headers['content-length'], String(data.length));
  assert.equal(first.complete, false);
  assert.equal(first.body.length, n);
  assert.ok(first.body.equals(data.subarray(0, n)));

  // The retry, resuming where the cut left off, goes through.
  const retry = await raw(`/models/big.gguf?cut=${n}`, { headers: { Range: `bytes=${n}-` } });
  assert.equal(retry.status, 206);
  assert.ok(retry.complete);
  assert.ok(retry.body.equals(data.subarray(n)));

  // Another N is another fault; the cut counts bytes of the body (here a range).
  const other = await raw('/models/big.gguf?cut=10', { headers: { Range: 'bytes=1000-' } });
  assert.equal(other.status, 206);
  assert.equal(other.complete, false);
  assert.ok(other.body.equals(data.subarray(1000, 1010)));
  const log = JSON.parse((await raw('/__log')).body.toString());
  assert.deepEqual(
    log.filter((e) => e.path === '/models/big.gguf').map((e) => e.cut ?? null),
    [n, null, 10],
  );
});

test('without --test-hooks there is no log and ?cut is ignored', async () => {
  const plain = await startServer({ port: 0, mounts: { '/models': path.join(dir, 'models') } });
  try {
    const get = (p) =>
      new Promise((resolve) => {
        http.get({ host: '127.0.0.1', port: plain.port, path: p, agent: false }, (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks), complete: res.complete }));
        });
      });
    assert.equal((await get('/__log')).status, 404);
    const r = await get('/models/big.gguf?cut=10');
    assert.ok(r.complete);
    assert.equal(r.body.length, data.length);
  } finally {
    await plain.close();
  }
});

test('streams a large file without reading it into memory', async () => {
  // A 512 MiB sparse file: reading it whole would show as hundreds of MB of server RSS.
  const big = path.join(dir, 'models', 'sparse.gguf');
  const fd = openSync(big, 'w');
  ftruncateSync(fd, 512 * 1024 * 1024);
  closeSync(fd);
  const child = spawn(
    process.execPath,
    [path.join(WEB_DIR, 'server.mjs'), '--port', '0', '--mount', `/m=${path.join(dir, 'models')}`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    const port = await new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        const m = /Serving on http:\/\/[^:]+:(\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
    });
    let received = 0;
    await new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/m/sparse.gguf', agent: false }, (res) => {
        res.on('data', (c) => (received += c.length));
        res.on('end', resolve);
        res.on('error', reject);
      });
    });
    assert.equal(received, 512 * 1024 * 1024);
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    const peak = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)[1]) * 1024;
    assert.ok(peak < 160 * 2 ** 20, `server peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB`);
  } finally {
    child.kill();
    rmSync(big, { force: true });
  }
});
