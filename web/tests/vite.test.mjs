// The package as a dependency of a Vite app: installed from the packed tarball, bundled by
// `vite build` (worker and wasm included), served as static files, and run in the browser.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { cpSync, readdirSync, existsSync } from 'node:fs';
import { TINY_MODEL_DIR, TESTS_DIR, WEB_DIR } from './helpers/paths.mjs';
import { TINY_PROMPTS } from './helpers/prompts.mjs';
import { packedPackage, testServer, launchBrowser, nativeGreedy, tempDir, run, record, secs } from './helpers/setup.mjs';

const MODEL = 'gemma4_tiny_a.gguf';
const MAX_TOKENS = 16;
const CONTEXT = 1024;
const note = (line) => console.log(record(import.meta.filename, line));

let app;
let srv;
let browser;

before(async () => {
  const pkg = await packedPackage();
  app = path.join(tempDir('gemma-wgpu-vite-'), 'app');
  cpSync(path.join(TESTS_DIR, 'vite-app'), app, {
    recursive: true,
    filter: (src) => !/[\\/](node_modules|dist)$/.test(src),
  });
  const t0 = performance.now();
  await run('npm', ['install', '--no-save', '--offline', '--no-audit', '--no-fund', pkg.tarball], { cwd: app });
  note(`npm install of the tarball: ${secs(performance.now() - t0)}`);
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

test('vite build bundles the package, worker and wasm', { timeout: 180_000 }, async () => {
  const t0 = performance.now();
  await run(process.execPath, [path.join(WEB_DIR, 'node_modules', 'vite', 'bin', 'vite.js'), 'build'], {
    cwd: app,
    maxBuffer: 16 << 20,
  });
  note(`vite build: ${secs(performance.now() - t0)}`);
  const assets = readdirSync(path.join(app, 'dist', 'assets'));
  assert.ok(existsSync(path.join(app, 'dist', 'index.html')));
  assert.ok(assets.some((f) => f.endsWith('.wasm')), `the wasm is an asset: ${assets}`);
  assert.ok(assets.filter((f) => f.endsWith('.js')).length >= 2, `page and worker bundles: ${assets}`);
});

test('the bundled app generates the native greedy tokens', { timeout: 180_000 }, async () => {
  assert.ok(existsSync(path.join(app, 'dist', 'index.html')), 'vite build did not run');
  const expected = await nativeGreedy({
    model: path.join(TINY_MODEL_DIR, MODEL), prompt: TINY_PROMPTS[2], maxTokens: MAX_TOKENS, contextLength: CONTEXT,
  });
  srv = await testServer({ '/': path.join(app, 'dist'), '/models': TINY_MODEL_DIR });
  browser = await launchBrowser();
  const page = await browser.newPage();
  const query = new URLSearchParams({
    model: `/models/${MODEL}`, prompt: TINY_PROMPTS[2], tokens: String(MAX_TOKENS), context: String(CONTEXT),
  });
  const t0 = performance.now();
  await page.goto(srv.url(`/?${query}`));
  await page.waitForFunction(() => /^(done|error)/.test(document.getElementById('status').textContent), null, {
    timeout: 120_000,
  });
  const status = await page.textContent('#status');
  assert.equal(status, 'done', `${status}\n${browser.recentLogs()}`);
  note(`bundled app: load + ${MAX_TOKENS} tokens ${secs(performance.now() - t0)}`);
  const ids = (await page.$$eval('#tokens li', (els) => els.map((e) => Number(e.textContent))));
  assert.deepEqual(ids, expected.ids);
  assert.equal(await page.textContent('#text'), expected.text);
  // What ran is the bundle's own copy of the wasm, not a file from the package directory.
  const wasm = srv.log().filter((e) => e.path.endsWith('.wasm'));
  assert.ok(wasm.length >= 1 && wasm.every((e) => e.path.startsWith('/assets/') && e.status === 200), JSON.stringify(wasm));
});
