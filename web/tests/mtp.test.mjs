// Speculative decoding in the browser: the tiny Gemma 4 target of tests/data/gemma4_mtp loaded
// with its MTP assistant (`Gemma.load(model, { assistant })`, streamed and cached like the
// model), greedy tokens equal to the native CLI's without any assistant, drafts accepted along
// the way, the assistant's figures in stats(), and an assistant that does not fit the model
// refused before its weights load.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { REPO_ROOT, TINY_MODEL_DIR } from './helpers/paths.mjs';
import { TINY_PROMPTS } from './helpers/prompts.mjs';
import { packedPackage, testServer, launchBrowser, harnessPage, nativeGreedyAll, record, secs, PAGES_DIR } from './helpers/setup.mjs';

const MTP_DIR = path.join(REPO_ROOT, 'tests', 'data', 'gemma4_mtp');
const TARGET = 'gemma4_mtp_target.gguf';
const ASSISTANT = 'gemma4_mtp_assistant.gguf';
// The first two tiny prompts are the assistant's training prompts (its drafts get accepted).
// Within 12 tokens the target's greedy margins are >= 0.014 (the fixture's notes), far above
// the float noise between two GPUs running the same kernels.
const PROMPTS = TINY_PROMPTS.slice(0, 2);
const MAX_TOKENS = 12;
const CONTEXT = 512;
const note = (line) => console.log(record(import.meta.filename, line));

let srv;
let browser;
let page;
let native;

before(async () => {
  const pkg = await packedPackage();
  srv = await testServer({ '/': PAGES_DIR, '/gemma-wgpu': pkg.dir, '/mtp': MTP_DIR, '/models': TINY_MODEL_DIR });
  native = await nativeGreedyAll(
    PROMPTS.map((prompt) => ({ model: path.join(MTP_DIR, TARGET), prompt, maxTokens: MAX_TOKENS, contextLength: CONTEXT })),
  );
  browser = await launchBrowser();
  page = await harnessPage(browser, srv);
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

test('greedy with the assistant drafting equals the native CLI without it', { timeout: 180_000 }, async () => {
  const loaded = await page.evaluate(
    ([url, assistant, contextLength]) => harness.load('mtp', url, { contextLength, assistant }),
    [`/mtp/${TARGET}`, `/mtp/${ASSISTANT}`, CONTEXT],
  );
  assert.ok(loaded.ok, `load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
  const phases = new Set(loaded.progress.map((p) => p.phase));
  assert.ok(phases.has('upload') && phases.has('assistant-upload'), `progress phases: ${[...phases]}`);
  assert.deepEqual(loaded.stats.assistant, { layers: 4, hidden: 48, fileBytes: loaded.stats.assistant.fileBytes });
  assert.ok(loaded.stats.gpuMemory.assistant > 0, JSON.stringify(loaded.stats.gpuMemory));
  assert.equal(loaded.stats.gpuMemoryBytes, loaded.stats.gpuMemory.total + loaded.stats.gpuMemory.assistant);

  let accepted = 0;
  for (const [i, prompt] of PROMPTS.entries()) {
    for (const draftTokens of [3, 1]) {
      const got = await page.evaluate(([p, n, k]) => harness.generate('mtp', p, { maxTokens: n, draftTokens: k }), [prompt, MAX_TOKENS, draftTokens]);
      assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
      assert.deepEqual(got.ids, native[i].ids, `prompt ${i}, ${draftTokens} drafts: browser ${got.ids} vs native ${native[i].ids}`);
      const d = got.stats.draft;
      assert.ok(d.rounds > 0, `prompt ${i}: no draft round ran (${JSON.stringify(d)})`);
      assert.ok(d.draftedTokens <= d.rounds * draftTokens, JSON.stringify(d));
      accepted += d.acceptedDrafts;
      note(`prompt ${i}, ${draftTokens} drafts: ${got.ids.length} tokens in ${secs(got.ms)}, ${d.acceptedDrafts}/${d.draftedTokens} drafts kept, ${d.tokensPerRound.toFixed(2)} tokens per round`);
    }
  }
  assert.ok(accepted > 0, 'no draft was accepted on the prompts the assistant was trained on');

  // draftTokens: 0 decodes without the assistant, to the same tokens.
  const plain = await page.evaluate(([p, n]) => harness.generate('mtp', p, { maxTokens: n, draftTokens: 0 }), [PROMPTS[0], MAX_TOKENS]);
  assert.ok(plain.ok, JSON.stringify(plain.error));
  assert.deepEqual(plain.ids, native[0].ids);
  assert.equal(plain.stats.draft.rounds, 0);
  await page.evaluate(() => harness.unload('mtp'));
});

test('an assistant for another model is refused before its weights load', { timeout: 120_000 }, async () => {
  // gemma4_tiny_a is 64 wide; this assistant drafts for a 32-wide target.
  const r = await page.evaluate(
    ([url, assistant]) => harness.load('wrong', url, { contextLength: 256, assistant }),
    ['/models/gemma4_tiny_a.gguf', `/mtp/${ASSISTANT}`],
  );
  assert.equal(r.ok, false);
  assert.equal(r.error.code, 'bad-model', JSON.stringify(r.error));
  assert.match(r.error.message, /width/, r.error.message);
  assert.ok(!r.progress.some((p) => p.phase === 'assistant-upload'), 'no assistant weights were uploaded');
});
