// Gemma 4 tiny model in the browser: greedy tokens equal the native CLI's (subgroup kernels on
// both sides, and the portable kernels with `subgroups: false`), aborting a stream, and a second
// generation while one runs; `bench` runs the CLI's model bench with the native op list.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import os from 'node:os';
import fs from 'node:fs/promises';
import { TINY_MODEL_DIR } from './helpers/paths.mjs';
import { TINY_PROMPTS } from './helpers/prompts.mjs';
import {
  packedPackage, testServer, launchBrowser, harnessPage, nativeGreedy, nativeGreedyAll, nativeBench, assertSubgroupKernels, record, secs,
  PAGES_DIR, startServe, stopServe,
} from './helpers/setup.mjs';

const MODEL = 'gemma4_tiny_a.gguf';
const MAX_TOKENS = 16;
const CONTEXT = 1024;
const note = (line) => console.log(record(import.meta.filename, line));

let srv;
let browser;
let page;
let native;

before(async () => {
  const pkg = await packedPackage();
  srv = await testServer({ '/': PAGES_DIR, '/gemma-wgpu': pkg.dir, '/models': TINY_MODEL_DIR });
  const t0 = performance.now();
  native = await nativeGreedyAll(
    TINY_PROMPTS.map((prompt) => ({ model: path.join(TINY_MODEL_DIR, MODEL), prompt, maxTokens: MAX_TOKENS, contextLength: CONTEXT })),
  );
  note(`native CLI, ${TINY_PROMPTS.length} prompts x ${MAX_TOKENS} tokens: ${secs(performance.now() - t0)}`);
  browser = await launchBrowser();
  page = await harnessPage(browser, srv);
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

test('greedy tokens equal the native CLI', { timeout: 180_000 }, async () => {
  const loaded = await page.evaluate(
    ([url, contextLength]) => harness.load('tiny', url, { contextLength }),
    [`/models/${MODEL}`, CONTEXT],
  );
  assert.ok(loaded.ok, `load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
  note(`load ${MODEL}: ${secs(loaded.ms)} (adapter: ${JSON.stringify(loaded.stats.adapter)})`);
  const adapter = await assertSubgroupKernels(page, loaded.stats, native);
  note(
    `subgroup kernels: browser subgroups ${loaded.stats.subgroups} (adapter subgroup sizes ` +
      `${adapter.subgroupMinSize}-${adapter.subgroupMaxSize}), native: ${native[0].adapter}`,
  );
  assert.equal(loaded.stats.model.architecture, 'gemma4');
  assert.equal(loaded.stats.model.contextLength, CONTEXT);
  const phases = new Set(loaded.progress.map((p) => p.phase));
  assert.ok(phases.has('download') && phases.has('upload'), `progress phases: ${[...phases]}`);

  for (const [i, prompt] of TINY_PROMPTS.entries()) {
    const got = await page.evaluate(([p, n]) => harness.generate('tiny', p, { maxTokens: n }), [prompt, MAX_TOKENS]);
    assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
    assert.deepEqual(got.ids, native[i].ids, `prompt ${i}: browser ${got.ids} vs native ${native[i].ids}`);
    assert.equal(got.text, native[i].text, `prompt ${i}: text`);
    note(`prompt ${i}: ${got.ids.length} tokens in ${secs(got.ms)} (prefill ${got.stats.prefillTokensPerS?.toFixed(1)} tok/s, decode ${got.stats.decodeTokensPerS?.toFixed(1)} tok/s)`);
  }
});

test('topK: 0 draws on the GPU from the whole vocabulary; seeded tokens equal the native CLI', { timeout: 180_000 }, async () => {
  const loaded = await page.evaluate(
    ([url, contextLength]) => harness.load('tiny-full', url, { contextLength }),
    [`/models/${MODEL}`, CONTEXT],
  );
  assert.ok(loaded.ok, `load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
  const prompt = TINY_PROMPTS[0];
  for (const seed of [7, 8]) {
    const want = await nativeGreedy({
      model: path.join(TINY_MODEL_DIR, MODEL), prompt, maxTokens: MAX_TOKENS, contextLength: CONTEXT,
      sampling: ['--temperature', '1', '--top-k', '0', '--top-p', '1', '--seed', String(seed)],
    });
    const got = await page.evaluate(
      ([p, n, s]) => harness.generate('tiny-full', p, { maxTokens: n, temperature: 1, topK: 0, topP: 1, seed: s }),
      [prompt, MAX_TOKENS, seed],
    );
    assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
    assert.deepEqual(got.ids, want.ids, `seed ${seed}: browser ${got.ids} vs native ${want.ids}`);
    note(`topK 0, seed ${seed}: ${got.ids.length} tokens equal the native CLI's`);
  }
  await page.evaluate(() => harness.unload('tiny-full'));
});

test('format: JSON-schema output validates and equals the native CLI (greedy and topK 0)', { timeout: 240_000 }, async () => {
  const loaded = await page.evaluate(
    ([url, contextLength]) => harness.load('tiny-json', url, { contextLength }),
    [`/models/${MODEL}`, CONTEXT],
  );
  assert.ok(loaded.ok, `load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
  const schema = {
    type: 'object',
    properties: {
      user: {
        type: 'object',
        properties: { id: { type: 'integer', minimum: 1, maximum: 999 }, role: { enum: ['admin', 'guest'] } },
        required: ['id', 'role'],
        additionalProperties: false,
      },
      tags: { type: 'array', items: { type: 'string', maxLength: 6 }, maxItems: 2 },
    },
    required: ['user', 'tags'],
    additionalProperties: false,
  };
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'gemma-format-'));
  const file = path.join(dir, 'schema.json');
  await fs.writeFile(file, JSON.stringify(schema));
  const maxTokens = 160;
  const runs = [
    { name: 'greedy', args: ['--temperature', '0'], options: { temperature: 0 } },
    { name: 'topK 0, seed 5', args: ['--temperature', '1', '--top-k', '0', '--top-p', '1', '--seed', '5'], options: { temperature: 1, topK: 0, topP: 1, seed: 5 } },
  ];
  for (const run of runs) {
    const want = await nativeGreedy({
      model: path.join(TINY_MODEL_DIR, MODEL), prompt: TINY_PROMPTS[0], maxTokens, contextLength: CONTEXT,
      sampling: [...run.args, '--json-schema', file],
    });
    const got = await page.evaluate(
      ([p, n, o]) => harness.generate('tiny-json', p, { maxTokens: n, ...o }),
      [TINY_PROMPTS[0], maxTokens, { ...run.options, format: { type: 'json_schema', schema } }],
    );
    assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
    assert.deepEqual(got.ids, want.ids, `${run.name}: browser ${got.ids} vs native ${want.ids}`);
    const value = JSON.parse(got.text);
    assert.deepEqual(Object.keys(value).sort(), ['tags', 'user'], got.text);
    assert.ok(Number.isInteger(value.user.id) && value.user.id >= 1 && value.user.id <= 999, got.text);
    assert.ok(['admin', 'guest'].includes(value.user.role), got.text);
    assert.ok(Array.isArray(value.tags) && value.tags.length <= 2 && value.tags.every((t) => typeof t === 'string' && [...t].length <= 6), got.text);
    note(`format ${run.name}: ${got.text}`);
  }
  // A second schema, greedy: an array of objects with a bounded number, a boolean and an enum.
  const readings = {
    type: 'object',
    properties: {
      readings: {
        type: 'array',
        minItems: 1,
        maxItems: 2,
        items: {
          type: 'object',
          properties: { value: { type: 'number', minimum: -5, maximum: 5 }, ok: { type: 'boolean' }, unit: { enum: ['m', 's'] } },
          required: ['value', 'ok', 'unit'],
          additionalProperties: false,
        },
      },
    },
    required: ['readings'],
    additionalProperties: false,
  };
  const readingsFile = path.join(dir, 'readings.json');
  await fs.writeFile(readingsFile, JSON.stringify(readings));
  const want = await nativeGreedy({
    model: path.join(TINY_MODEL_DIR, MODEL), prompt: TINY_PROMPTS[1], maxTokens, contextLength: CONTEXT,
    sampling: ['--temperature', '0', '--json-schema', readingsFile],
  });
  const got = await page.evaluate(
    ([p, n, f]) => harness.generate('tiny-json', p, { maxTokens: n, format: f }),
    [TINY_PROMPTS[1], maxTokens, { type: 'json_schema', schema: readings }],
  );
  assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
  assert.deepEqual(got.ids, want.ids, `readings: browser ${got.ids} vs native ${want.ids}`);
  const value = JSON.parse(got.text);
  assert.ok(Array.isArray(value.readings) && value.readings.length >= 1 && value.readings.length <= 2, got.text);
  for (const r of value.readings) {
    assert.deepEqual(Object.keys(r).sort(), ['ok', 'unit', 'value'], got.text);
    assert.ok(typeof r.value === 'number' && r.value >= -5 && r.value <= 5, got.text);
    assert.ok(typeof r.ok === 'boolean' && ['m', 's'].includes(r.unit), got.text);
  }
  note(`format readings, greedy: ${got.text}`);
  const bad = await page.evaluate(
    ([p]) => harness.generate('tiny-json', p, { maxTokens: 4, format: { type: 'regex', pattern: '[0-9' } }),
    [TINY_PROMPTS[0]],
  );
  assert.ok(!bad.ok && bad.error.code === 'invalid-argument' && /output format/.test(bad.error.message), JSON.stringify(bad.error));
  await page.evaluate(() => harness.unload('tiny-json'));
});

test('bench: the browser runs the CLI bench, with the native op list', { timeout: 180_000 }, async () => {
  const opts = { promptLen: 16, gen: 4, repeat: 1, profileTokens: 0, copyBandwidth: false };
  const got = await page.evaluate(([o]) => harness.bench('tiny', o), [opts]);
  assert.ok(got.ok, `bench failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
  const r = got.value.results;
  const cli = (await nativeBench({ model: path.join(TINY_MODEL_DIR, MODEL), promptLen: 16, gen: 4, contextLength: CONTEXT })).results;
  note(
    `bench: prefill ${r.prefill.tokens_per_s.toFixed(1)} tok/s, decode ${r.decode.tokens_per_s.toFixed(1)} tok/s, ` +
      `${r.dispatches_per_decode_token} dispatches per token (native ${cli.dispatches_per_decode_token}), ` +
      `${(r.decode_encode_us_per_token / r.dispatches_per_decode_token).toFixed(1)} us of CPU per dispatch, ` +
      `${got.value.pipelinesCompiled} pipelines in ${got.value.pipelineCompileS.toFixed(2)} s`,
  );
  assert.equal(r.prompt_tokens, 16);
  assert.equal(r.generated_tokens, 4);
  assert.equal(got.value.context, CONTEXT);
  assert.ok(r.prefill.tokens_per_s > 0 && r.decode.tokens_per_s > 0 && r.time_to_first_token_s > 0, JSON.stringify(r));
  assert.ok(r.decode_encode_us_per_token > 0, 'the CPU time of encoding a step is measured');
  // The same model code under the same limits: the same ops, dispatch for dispatch.
  assert.equal(r.dispatches_per_decode_token, cli.dispatches_per_decode_token);
  assert.equal(r.dispatches_per_prefill, cli.dispatches_per_prefill);
  assert.deepEqual(r.bytes_per_decode_token, cli.bytes_per_decode_token);

  const tooLong = await page.evaluate(([o]) => harness.bench('tiny', o), [{ promptLen: CONTEXT, gen: 4 }]);
  assert.equal(tooLong.ok, false);
  assert.equal(tooLong.error.code, 'invalid-argument', JSON.stringify(tooLong.error));
  assert.match(tooLong.error.message, /context of 1024 tokens is too small/);
  // The engine still generates after a bench.
  const again = await page.evaluate(([p, n]) => harness.generate('tiny', p, { maxTokens: n }), [TINY_PROMPTS[0], MAX_TOKENS]);
  assert.ok(again.ok, JSON.stringify(again.error));
  assert.deepEqual(again.ids, native[0].ids);
});

test('abort mid-stream throws aborted promptly and leaves the engine usable', { timeout: 120_000 }, async () => {
  const prompt = TINY_PROMPTS[0];
  const r = await page.evaluate(([p]) => harness.generateAndAbort('tiny', p, 2, { maxTokens: 200 }), [prompt]);
  assert.equal(r.ok, false, 'the iterator must throw after an abort');
  assert.equal(r.error.code, 'aborted', JSON.stringify(r.error));
  assert.ok(r.error.isGemmaError, 'the error is a GemmaError');
  // Aborting stops within one token: the two pieces asked for, plus at most one in flight.
  assert.ok(r.ids.length >= 2 && r.ids.length <= 3, `pieces before the throw: ${r.ids.length}`);
  assert.deepEqual(r.ids, native[0].ids.slice(0, r.ids.length));
  const decode = await page.evaluate(() => harness.stats('tiny').decodeTokensPerS);
  note(`abort: threw ${r.stopMs.toFixed(0)} ms after abort() (one token takes ~${(1000 / decode).toFixed(0)} ms)`);
  assert.ok(r.stopMs < 5000, `stopping took ${r.stopMs} ms`);

  const again = await page.evaluate(([p, n]) => harness.generate('tiny', p, { maxTokens: n }), [prompt, MAX_TOKENS]);
  assert.ok(again.ok, JSON.stringify(again.error));
  assert.deepEqual(again.ids, native[0].ids, 'a generation after the abort equals a fresh one');
});

test('a second generate while one runs is refused with busy; the first is intact', { timeout: 120_000 }, async () => {
  const prompt = TINY_PROMPTS[1];
  const r = await page.evaluate(([p, n]) => harness.concurrent('tiny', p, { maxTokens: n }), [prompt, MAX_TOKENS]);
  assert.ok(r.first.ok, `first: ${JSON.stringify(r.first.error)}`);
  assert.deepEqual(r.first.ids, native[1].ids, 'the first generation is intact');
  if (r.second.ok) {
    // Waiting for the first to finish is also allowed; then it must be a full, fresh run.
    assert.deepEqual(r.second.ids, native[1].ids);
  } else {
    assert.equal(r.second.error.code, 'busy', JSON.stringify(r.second.error));
    assert.ok(r.second.error.isGemmaError);
    assert.deepEqual(r.second.ids, []);
  }
  const after = await page.evaluate(([p, n]) => harness.generate('tiny', p, { maxTokens: n }), [prompt, MAX_TOKENS]);
  assert.deepEqual(after.ids, native[1].ids);
});

test('createChatCompletion: streamed chunks add up to the non-streamed answer', { timeout: 120_000 }, async () => {
  const request = {
    messages: [{ role: 'user', content: 'Say hello.' }],
    max_tokens: 6,
    temperature: 0,
  };
  const whole = await page.evaluate((req) => harness.chatCompletion('tiny', { ...req, stream: false }), request);
  assert.ok(whole.ok, JSON.stringify(whole.error));
  const c = whole.value;
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.choices.length, 1);
  assert.equal(c.choices[0].message.role, 'assistant');
  assert.equal(typeof c.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(c.choices[0].finish_reason), c.choices[0].finish_reason);
  assert.ok(c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 6, JSON.stringify(c.usage));

  const streamed = await page.evaluate((req) => harness.chatCompletion('tiny', { ...req, stream: true }), request);
  assert.ok(streamed.ok, JSON.stringify(streamed.error));
  assert.ok(streamed.chunks.every((ch) => ch.object === 'chat.completion.chunk'));
  const text = streamed.chunks.map((ch) => ch.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, c.choices[0].message.content);
  assert.equal(streamed.chunks.at(-1).choices[0].finish_reason, c.choices[0].finish_reason);
});

test('createChatCompletion with tools: the native server\'s call, whole and streamed; stop sequences', { timeout: 240_000 }, async () => {
  const weather = {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current weather for a city',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 12 }, unit: { enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer' } },
        required: ['city', 'unit'],
      },
    },
  };
  const request = {
    messages: [{ role: 'user', content: 'What is the weather in Oslo?' }],
    tools: [weather],
    tool_choice: 'required',
    parallel_tool_calls: false,
    max_tokens: 120,
    temperature: 0,
  };
  // The native server, same model and context, same request.
  const server = startServe(['--model', path.join(TINY_MODEL_DIR, MODEL), '--context', String(CONTEXT)]);
  let want;
  try {
    const res = await fetch(`${await server.ready}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(request),
    });
    want = await res.json();
    assert.equal(res.status, 200, JSON.stringify(want));
  } finally {
    await stopServe(server);
  }
  const whole = await page.evaluate((req) => harness.chatCompletion('tiny', { ...req, stream: false }), request);
  assert.ok(whole.ok, JSON.stringify(whole.error));
  const got = whole.value.choices[0];
  const calls = (m) => m.tool_calls.map((c) => [c.type, c.function.name, c.function.arguments]);
  assert.equal(got.finish_reason, 'tool_calls');
  assert.equal(got.message.content, null);
  assert.deepEqual(calls(got.message), calls(want.choices[0].message));
  const args = JSON.parse(got.message.tool_calls[0].function.arguments);
  assert.ok(['celsius', 'fahrenheit'].includes(args.unit) && typeof args.city === 'string', JSON.stringify(args));
  note(`tool call in the browser: ${JSON.stringify(got.message.tool_calls[0].function)}`);
  const streamed = await page.evaluate((req) => harness.chatCompletion('tiny', { ...req, stream: true }), request);
  assert.ok(streamed.ok, JSON.stringify(streamed.error));
  const deltas = streamed.chunks.flatMap((ch) => ch.choices[0]?.delta?.tool_calls ?? []);
  assert.deepEqual(deltas.map((d) => [d.index, d.id, d.function.arguments]), [[0, deltas[0].id, got.message.tool_calls[0].function.arguments]]);
  assert.equal(streamed.chunks.at(-1).choices[0].finish_reason, 'tool_calls');
  // A bad request is refused by the engine's request parser, naming what is wrong.
  const bad = await page.evaluate(
    (req) => harness.chatCompletion('tiny', req),
    { ...request, tool_choice: { type: 'function', function: { name: 'nope' } } },
  );
  assert.ok(!bad.ok && bad.error.code === 'invalid-argument' && /nope/.test(bad.error.message), JSON.stringify(bad.error));

  // Stop sequences: the native greedy text, cut before the first match.
  const text = native[0].text;
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
  const cut = await page.evaluate(([p, n, s]) => harness.generate('tiny', p, { maxTokens: n, stop: [s] }), [TINY_PROMPTS[0], MAX_TOKENS, stop]);
  assert.ok(cut.ok, JSON.stringify(cut.error));
  assert.equal(cut.text, text.slice(0, text.indexOf(stop)), `stop ${JSON.stringify(stop)}`);
});

test('subgroups: false runs the portable kernels; greedy tokens equal the native CLI with --no-subgroups', { timeout: 180_000 }, async () => {
  const prompt = TINY_PROMPTS[0];
  const reference = await nativeGreedy({
    model: path.join(TINY_MODEL_DIR, MODEL), prompt, maxTokens: MAX_TOKENS, contextLength: CONTEXT, subgroups: false,
  });
  assert.match(reference.adapter, /subgroups off/, reference.adapter);
  const loaded = await page.evaluate(
    ([url, contextLength]) => harness.load('tiny-portable', url, { contextLength, subgroups: false }),
    [`/models/${MODEL}`, CONTEXT],
  );
  assert.ok(loaded.ok, `load failed: ${JSON.stringify(loaded.error)}\n${browser.recentLogs()}`);
  assert.equal(loaded.stats.subgroups, false, 'stats().subgroups with subgroups: false');
  try {
    const got = await page.evaluate(([p, n]) => harness.generate('tiny-portable', p, { maxTokens: n }), [prompt, MAX_TOKENS]);
    assert.ok(got.ok, `generate failed: ${JSON.stringify(got.error)}\n${browser.recentLogs()}`);
    assert.deepEqual(got.ids, reference.ids, `browser ${got.ids} vs native ${reference.ids}`);
    assert.equal(got.text, reference.text);
    note(`portable kernels (subgroups: false): ${got.ids.length} tokens in ${secs(got.ms)}, equal to native --no-subgroups`);
  } finally {
    await page.evaluate(() => harness.unload('tiny-portable'));
  }
});
