// Runtime faults in the browser, on the tiny Gemma 4 model: a load over the (test) GPU memory
// budget rejects with 'out-of-memory' and the next load works; a lost GPU device rejects the
// running request with 'device-lost' (never a panic), the instance stays closed with that code,
// and a new load gives the same greedy tokens as the native CLI.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { TINY_MODEL_DIR } from './helpers/paths.mjs';
import { TINY_PROMPTS } from './helpers/prompts.mjs';
import {
  packedPackage, testServer, launchBrowser, harnessPage, nativeGreedy, record, secs, PAGES_DIR,
} from './helpers/setup.mjs';

const MODEL = 'gemma4_tiny_a.gguf';
const URL_ = `/models/${MODEL}`;
const MAX_TOKENS = 8;
const CONTEXT = 256;
// The tiny model holds about 2 MiB on the GPU.
const BUDGET = 1 << 20;
const note = (line) => console.log(record(import.meta.filename, line));

let srv;
let browser;
let page;
let native;

before(async () => {
  const pkg = await packedPackage();
  srv = await testServer({ '/': PAGES_DIR, '/gemma-wgpu': pkg.dir, '/models': TINY_MODEL_DIR });
  native = await nativeGreedy({
    model: path.join(TINY_MODEL_DIR, MODEL), prompt: TINY_PROMPTS[0], maxTokens: MAX_TOKENS, contextLength: CONTEXT,
  });
  browser = await launchBrowser();
  page = await harnessPage(browser, srv);
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

const panics = () => browser.logs.filter((l) => l.includes('panicked at'));

async function loadAndCheck(key) {
  const loaded = await page.evaluate(([k, url, contextLength]) => harness.load(k, url, { contextLength }), [key, URL_, CONTEXT]);
  assert.ok(loaded.ok, `load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
  const got = await page.evaluate(([k, p, n]) => harness.generate(k, p, { maxTokens: n }), [key, TINY_PROMPTS[0], MAX_TOKENS]);
  assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
  assert.deepEqual(got.ids, native.ids, 'greedy tokens equal the native CLI');
  return loaded;
}

test('a load over the GPU memory budget rejects with out-of-memory; the next load works', { timeout: 180_000 }, async () => {
  const failed = await page.evaluate(
    ([url, contextLength, memoryBudget]) => harness.load('oom', url, { contextLength, testHooks: { memoryBudget } }),
    [URL_, CONTEXT, BUDGET],
  );
  assert.equal(failed.ok, false, 'a load over budget must fail');
  assert.equal(failed.error.code, 'out-of-memory', JSON.stringify(failed.error));
  assert.ok(failed.error.isGemmaError);
  assert.match(failed.error.message, new RegExp(`buffer \`[^\`]+\` needs \\d+ bytes, \\d+ bytes are allocated and the memory budget is ${BUDGET} bytes`));
  note(`load over a ${BUDGET}-byte budget: ${failed.error.message} (${secs(failed.ms)})`);

  const t0 = performance.now();
  await loadAndCheck('tiny');
  note(`the next load and ${MAX_TOKENS} greedy tokens: ${secs(performance.now() - t0)}`);
  assert.deepEqual(panics(), []);
});

test('a lost device rejects with device-lost; the model loads again', { timeout: 180_000 }, async () => {
  const lost = await page.evaluate((k) => harness.loseDevice(k), 'tiny');
  assert.ok(lost.ok, JSON.stringify(lost.error));

  const failed = await page.evaluate(([k, p, n]) => harness.generate(k, p, { maxTokens: n }), ['tiny', TINY_PROMPTS[0], MAX_TOKENS]);
  assert.equal(failed.ok, false, 'a generation on a lost device must fail');
  assert.equal(failed.error.code, 'device-lost', `${JSON.stringify(failed.error)}\n${browser.recentLogs()}`);
  assert.ok(failed.error.isGemmaError);
  assert.match(failed.error.message, /GPU device was lost/);
  assert.match(failed.error.message, /load the model again/);
  note(`generate after the loss: ${failed.error.message}`);

  // The instance stays closed, with the same code.
  const again = await page.evaluate(([k, p]) => harness.generate(k, p, { maxTokens: 2 }), ['tiny', TINY_PROMPTS[0]]);
  assert.equal(again.ok, false);
  assert.equal(again.error.code, 'device-lost', JSON.stringify(again.error));
  await page.evaluate((k) => harness.unload(k), 'tiny');

  const t0 = performance.now();
  await loadAndCheck('tiny2');
  note(`load and ${MAX_TOKENS} greedy tokens after the loss: ${secs(performance.now() - t0)}`);
  await page.evaluate((k) => harness.unload(k), 'tiny2');
  assert.deepEqual(panics(), [], 'no Rust panic reached the console');
});
