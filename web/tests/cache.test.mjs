// Model download and the OPFS cache: a second load makes no request, an interrupted download
// resumes with a Range request, a truncated cache entry is refetched, and bad URLs or files fail
// with the documented error codes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { TINY_MODEL_DIR } from './helpers/paths.mjs';
import { TINY_PROMPTS } from './helpers/prompts.mjs';
import {
  packedPackage, testServer, launchBrowser, harnessPage, nativeGreedy, record, secs, PAGES_DIR,
} from './helpers/setup.mjs';

const MODEL = 'gemma4_tiny_a.gguf';
const MODEL_PATH = `/models/${MODEL}`;
const MODEL_BYTES = readFileSync(path.join(TINY_MODEL_DIR, MODEL));
const MODEL_SIZE = MODEL_BYTES.length;
const MODEL_SHA256 = createHash('sha256').update(MODEL_BYTES).digest('hex');
// Each load starts a new worker whose first generation compiles every pipeline (seconds on a
// software GPU), so only the loads from the cache generate; the others compare the cached file
// with the model byte for byte.
const MAX_TOKENS = 4;
const CONTEXT = 1024;
const note = (line) => console.log(record(import.meta.filename, line));

let srv;
let browser;
let expected;

before(async () => {
  const pkg = await packedPackage();
  srv = await testServer({ '/': PAGES_DIR, '/gemma-wgpu': pkg.dir, '/models': TINY_MODEL_DIR });
  expected = await nativeGreedy({
    model: path.join(TINY_MODEL_DIR, MODEL), prompt: TINY_PROMPTS[0], maxTokens: MAX_TOKENS, contextLength: CONTEXT,
  });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

/**
 * A fresh page loads `url`; with `generate`, checks the greedy tokens. Then unloads (releasing
 * the cache file) and returns the load result and a SHA-256 of every OPFS file of the model's
 * size, so a test can see that the cache holds exactly the model's bytes.
 */
async function load(url, label, { generate = false } = {}) {
  const page = await harnessPage(browser, srv);
  try {
    const loaded = await page.evaluate(([u, c]) => harness.load('m', u, { contextLength: c }), [url, CONTEXT]);
    assert.ok(loaded.ok, `${label}: load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
    let tokens = '';
    if (generate) {
      const got = await page.evaluate(([p, n]) => harness.generate('m', p, { maxTokens: n }), [TINY_PROMPTS[0], MAX_TOKENS]);
      assert.ok(got.ok, `${label}: ${JSON.stringify(got.error)}`);
      assert.deepEqual(got.ids, expected.ids, `${label}: tokens`);
      tokens = `, ${got.ids.length} tokens ${secs(got.ms)}`;
    }
    await page.evaluate(() => harness.unload('m'));
    const cached = await page.evaluate((size) => harness.opfsDigests(size), MODEL_SIZE);
    note(`${label}: load ${secs(loaded.ms)}${tokens}`);
    return { ...loaded, cached };
  } finally {
    await page.close();
  }
}

const modelGets = (pathname = MODEL_PATH) => srv.requestsFor(pathname).filter((e) => e.method === 'GET');

test('a second load of the same URL reads OPFS and makes no request', { timeout: 120_000 }, async () => {
  srv.clearLog();
  const first = await load(MODEL_PATH, 'first load (download)');
  assert.ok(modelGets().length >= 1, 'the first load downloads the model');
  assert.ok(first.cached.includes(MODEL_SHA256), 'the cache holds the model byte for byte');

  srv.clearLog();
  const second = await load(MODEL_PATH, 'second load (OPFS)', { generate: true });
  assert.deepEqual(srv.requestsFor(MODEL_PATH), [], 'the second load must not touch the network');
  assert.ok(second.progress.some((p) => p.phase === 'cache'), 'the second load reports the cache phase');
  assert.ok(!second.progress.some((p) => p.phase === 'download'), 'and no download phase');
});

test('an interrupted download resumes with a Range request', { timeout: 120_000 }, async () => {
  const cut = Math.floor(MODEL_SIZE * 0.6);
  const url = `${MODEL_PATH}?cut=${cut}`;
  srv.clearLog();
  const loaded = await load(url, 'resumed load', { generate: true });
  const gets = modelGets();
  const cutRequest = gets.find((e) => e.cut !== undefined);
  assert.ok(cutRequest, `the server cut a response: ${JSON.stringify(gets)}`);
  const resumed = gets.filter((e) => e.range);
  assert.ok(resumed.length >= 1, `a Range request follows the cut: ${JSON.stringify(gets)}`);
  const m = /^bytes=(\d+)-$/.exec(resumed[0].range);
  assert.ok(m, `open-ended range: ${resumed[0].range}`);
  const from = Number(m[1]);
  assert.ok(from > 0 && from <= cut, `resumes from ${from}, after at most the ${cut} bytes received`);
  assert.equal(resumed[0].status, 206);
  // The resumed request is conditional on the ETag the first response had.
  const etag = (await fetch(srv.url(MODEL_PATH), { method: 'HEAD' })).headers.get('etag');
  assert.equal(resumed[0].ifRange, etag);
  assert.ok(loaded.cached.length >= 1, 'the resumed download is cached whole');
  assert.ok(loaded.cached.every((d) => d === MODEL_SHA256), 'and byte for byte');
  note(`resume after a cut at ${cut} of ${MODEL_SIZE} bytes: Range bytes=${from}-`);
});

test('a truncated cache entry is detected and refetched', { timeout: 120_000 }, async () => {
  const url = `${MODEL_PATH}?v=truncated`;
  const page = await harnessPage(browser, srv);
  await page.evaluate(() => harness.opfsClear());
  await page.close();
  await load(url, 'load to cache');

  const probe = await harnessPage(browser, srv);
  const files = await probe.evaluate(() => harness.opfsFiles());
  const cached = files.filter((f) => f.size === MODEL_SIZE);
  assert.equal(cached.length, 1, `one cached copy of the model in OPFS: ${JSON.stringify(files)}`);
  const size = await probe.evaluate(([p, n]) => harness.opfsTruncate(p, n), [cached[0].path, Math.floor(MODEL_SIZE / 3)]);
  assert.equal(size, Math.floor(MODEL_SIZE / 3));
  await probe.close();

  srv.clearLog();
  const again = await load(url, 'load after truncation');
  const gets = modelGets();
  assert.ok(gets.length >= 1, 'the truncated entry is fetched again');
  // Either a whole new download or a resume from what is left: the missing bytes come again.
  const fetched = gets.reduce((n, e) => n + (e.status === 206 ? MODEL_SIZE - Number(/\d+/.exec(e.range)[0]) : MODEL_SIZE), 0);
  assert.ok(fetched >= MODEL_SIZE - Math.floor(MODEL_SIZE / 3), `refetched ${fetched} bytes`);
  assert.deepEqual(again.cached, [MODEL_SHA256], 'the cache holds the whole model again');
});

test('a missing model rejects with download-failed', { timeout: 60_000 }, async () => {
  const page = await harnessPage(browser, srv);
  const r = await page.evaluate(() => harness.load('x', '/models/no-such-model.gguf'));
  await page.close();
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'download-failed', JSON.stringify(r.error));
  assert.ok(r.error.isGemmaError);
  assert.match(r.error.message, /404/);
});

test('a file that is not GGUF rejects with bad-model', { timeout: 60_000 }, async () => {
  const page = await harnessPage(browser, srv);
  const r = await page.evaluate(() => harness.load('x', '/not-a-model.txt'));
  await page.close();
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'bad-model', JSON.stringify(r.error));
  assert.ok(r.error.isGemmaError);
});
