// `gemma-wgpu serve` through OpenAI's own npm client: chat completions (whole and streamed, the
// greedy text checked against the native CLI's), text completions, the model list, stop
// sequences, a client that drops its stream, refused requests (bad JSON, bad fields, wrong API
// key, an oversized body), 20 clients at once, and a full queue refused. One server on the default Gemma 3 270M model;
// token counts stay small because lavapipe decodes about two tokens per second.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import OpenAI from 'openai';
import { NATIVE_CLI, REPO_ROOT, MODEL_270M } from './helpers/paths.mjs';
import { ensureNativeCli, record, secs, startServe, stopServe } from './helpers/setup.mjs';

const run = promisify(execFile);
const API_KEY = 'test-key-1234';
const MAX_REQUEST_BYTES = 65536;
const PROMPT = 'Name three colors.';
const MAX_TOKENS = 6;
const MODEL_ID = path.basename(MODEL_270M, '.gguf');
const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' };
const note = (line) => console.log(record(import.meta.filename, line));

let server;
let baseURL;
let client;
let reference;

before(async () => {
  await ensureNativeCli();
  const t0 = performance.now();
  // The native CLI's greedy answer to the same one-message chat: the server must give the same.
  const { stdout } = await run(
    NATIVE_CLI,
    ['generate', '--chat', '--json', '--temperature', '0', '--max-tokens', String(MAX_TOKENS), '--prompt', PROMPT],
    { cwd: REPO_ROOT, env, maxBuffer: 16 << 20 },
  );
  reference = JSON.parse(stdout.trim().split('\n').at(-1));
  const t1 = performance.now();
  server = startServe(['--api-key', API_KEY, '--max-request-bytes', String(MAX_REQUEST_BYTES), '--max-tokens-limit', '512']);
  baseURL = `${await server.ready}/v1`;
  note(`native reference ${secs(t1 - t0)}, server ready ${secs(performance.now() - t1)} at ${baseURL}`);
  // No retries: a refused or failed request must fail the test, not be sent again.
  client = new OpenAI({ baseURL, apiKey: API_KEY, maxRetries: 0, timeout: 180_000 });
});

after(async () => {
  await stopServe(server);
});

const greedy = { model: MODEL_ID, messages: [{ role: 'user', content: PROMPT }], temperature: 0, max_tokens: MAX_TOKENS };

/** The server answers a small request (it is still up and its queue moves). */
async function assertServing(label) {
  const t0 = performance.now();
  const r = await client.completions.create({ model: MODEL_ID, prompt: 'Hello', max_tokens: 1, temperature: 0 });
  assert.equal(r.choices.length, 1, label);
  assert.equal(r.usage.completion_tokens, 1, label);
  return performance.now() - t0;
}

test('chat completion: the native CLI greedy text, with usage', async () => {
  const t0 = performance.now();
  const r = await client.chat.completions.create(greedy);
  note(`chat completion of ${r.usage.completion_tokens} tokens ${secs(performance.now() - t0)}`);
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, MODEL_ID);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, reference.text);
  assert.equal(r.choices[0].finish_reason, reference.finish === 'max_tokens' ? 'length' : 'stop');
  assert.equal(r.usage.prompt_tokens, reference.prompt_tokens.length);
  assert.equal(r.usage.completion_tokens, reference.tokens.length);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('streamed chat completion: the same text in chunks, then usage and [DONE]', async () => {
  const stream = await client.chat.completions.create({ ...greedy, stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.length >= 3, `too few chunks: ${JSON.stringify(chunks)}`);
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.ok(chunks.every((c) => c.id === chunks[0].id), 'one id for the whole stream');
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, reference.text);
  const finish = chunks.at(-2).choices[0].finish_reason;
  assert.equal(finish, reference.finish === 'max_tokens' ? 'length' : 'stop');
  const usage = chunks.at(-1);
  assert.deepEqual(usage.choices, []);
  assert.equal(usage.usage.completion_tokens, reference.tokens.length);
  assert.equal(usage.usage.prompt_tokens, reference.prompt_tokens.length);
});

test('text completion and the model list', async () => {
  const r = await client.completions.create({ model: MODEL_ID, prompt: 'The capital of France is', max_tokens: 3, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.ok(r.choices[0].text.length > 0);
  assert.equal(r.usage.completion_tokens, 3);
  assert.equal(r.choices[0].finish_reason, 'length');
  // The raw prompt with BOS, no chat template: <bos> + the words.
  const { stdout } = await run(NATIVE_CLI, ['generate', '--json', '--temperature', '0', '--max-tokens', '3', '--prompt', 'The capital of France is'], {
    cwd: REPO_ROOT, env, maxBuffer: 16 << 20,
  });
  const native = JSON.parse(stdout.trim().split('\n').at(-1));
  assert.equal(r.choices[0].text, native.text);
  assert.equal(r.usage.prompt_tokens, native.prompt_tokens.length);

  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => [m.id, m.object]), [[MODEL_ID, 'model']]);
});

test('stop sequences cut the output before the match', async () => {
  // A stop string taken from inside the known greedy answer.
  const text = reference.text;
  const at = Math.max(1, Math.floor(text.length / 2));
  const stop = text.slice(at, at + 2);
  assert.ok(stop.length > 0, `the reference answer is too short to cut: ${JSON.stringify(text)}`);
  const expected = text.slice(0, text.indexOf(stop));
  const r = await client.chat.completions.create({ ...greedy, stop: [stop, 'never-appears'] });
  assert.equal(r.choices[0].message.content, expected);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.completion_tokens <= reference.tokens.length);
  // Streamed: no chunk carries any part of the stop string.
  const stream = await client.chat.completions.create({ ...greedy, stop, stream: true });
  let streamed = '';
  let finish = null;
  for await (const c of stream) {
    streamed += c.choices[0]?.delta?.content ?? '';
    finish = c.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(streamed, expected);
  assert.equal(finish, 'stop');
});

test('a dropped stream cancels its generation: the next request is answered at once', async () => {
  // Counting goes on for hundreds of tokens: minutes on lavapipe unless cancelled.
  const controller = new AbortController();
  const stream = await client.completions.create(
    { model: MODEL_ID, prompt: '1, 2, 3, 4, 5, 6, 7, 8,', max_tokens: 400, temperature: 0, stream: true },
    { signal: controller.signal },
  );
  let first = null;
  for await (const chunk of stream) {
    first = chunk;
    // The client's stream ends quietly on abort; the server sees the connection close.
    controller.abort();
  }
  assert.equal(first?.object, 'text_completion');
  const ms = await assertServing('after a dropped stream');
  note(`request after a dropped 400-token stream answered in ${secs(ms)}`);
  assert.ok(ms < 60_000, `the next request took ${secs(ms)}: the dropped generation went on`);
});

test('a closed connection cancels a non-streamed generation too', async () => {
  const controller = new AbortController();
  const pending = client.completions.create(
    { model: MODEL_ID, prompt: '1, 2, 3, 4, 5, 6, 7, 8,', max_tokens: 400, temperature: 0 },
    { signal: controller.signal },
  );
  setTimeout(() => controller.abort(), 3000);
  await assert.rejects(pending, (err) => err.name === 'AbortError' || err.constructor.name === 'APIUserAbortError');
  const ms = await assertServing('after a closed connection');
  note(`request after a closed non-streamed request answered in ${secs(ms)}`);
  assert.ok(ms < 60_000, `the next request took ${secs(ms)}: the abandoned generation went on`);
});

test('bad requests get OpenAI error JSON and the server keeps serving', async () => {
  const post = (body, headers = {}) =>
    fetch(`${baseURL}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, ...headers },
      body,
    });
  let r = await post('{"messages": [');
  assert.equal(r.status, 400);
  let body = await r.json();
  assert.equal(body.error.type, 'invalid_request_error');
  assert.match(body.error.message, /not valid JSON/);

  r = await post('x'.repeat(MAX_REQUEST_BYTES + 1000));
  assert.equal(r.status, 413);
  body = await r.json();
  assert.match(body.error.message, /larger than/);

  // The client's own error types, with the field named.
  await assert.rejects(
    client.chat.completions.create({ ...greedy, temperature: -1 }),
    (err) => err instanceof OpenAI.BadRequestError && err.status === 400 && err.param === 'temperature',
  );
  await assert.rejects(
    client.chat.completions.create({ ...greedy, max_tokens: 100000 }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'max_tokens',
  );
  await assert.rejects(
    client.chat.completions.create({ ...greedy, n: 2 }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'n',
  );
  // A schema the grammar compiler refuses names the field.
  await assert.rejects(
    client.chat.completions.create({
      ...greedy,
      response_format: { type: 'json_schema', json_schema: { name: 'bad', schema: { type: 'no-such-type' } } },
    }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'response_format' && /output format/.test(err.message),
  );
  // The chat template refuses roles that do not alternate; that is the request's fault too.
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: [{ role: 'assistant', content: 'hi' }] }),
    (err) => err instanceof OpenAI.BadRequestError && /alternate/.test(err.message),
  );

  r = await fetch(`${baseURL}/nowhere`, { headers: { authorization: `Bearer ${API_KEY}` } });
  assert.equal(r.status, 404);
  assert.equal((await r.json()).error.code, 'not_found');
  await assertServing('after bad requests');
});

test('json_schema response_format: the output parses and validates', async () => {
  const schema = {
    type: 'object',
    properties: {
      capital: { type: 'string', maxLength: 20 },
      country: { enum: ['France', 'Germany', 'Italy'] },
    },
    required: ['capital', 'country'],
    additionalProperties: false,
  };
  const r = await client.chat.completions.create({
    model: MODEL_ID,
    messages: [{ role: 'user', content: 'What is the capital of France? Answer in JSON.' }],
    temperature: 0,
    max_tokens: 48,
    response_format: { type: 'json_schema', json_schema: { name: 'capital', schema, strict: true } },
  });
  const text = r.choices[0].message.content;
  assert.equal(r.choices[0].finish_reason, 'stop', text);
  const value = JSON.parse(text);
  assert.deepEqual(Object.keys(value).sort(), ['capital', 'country'], text);
  assert.ok(typeof value.capital === 'string' && [...value.capital].length <= 20, text);
  assert.ok(['France', 'Germany', 'Italy'].includes(value.country), text);
  console.log(`json_schema answer: ${text}`);
});

test('a wrong or missing API key gets 401', async () => {
  const wrong = new OpenAI({ baseURL, apiKey: 'not-the-key', maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (err) => err instanceof OpenAI.AuthenticationError && err.status === 401);
  await assert.rejects(
    wrong.chat.completions.create(greedy),
    (err) => err instanceof OpenAI.AuthenticationError && err.code === 'invalid_api_key',
  );
  const r = await fetch(`${baseURL}/models`);
  assert.equal(r.status, 401);
  assert.match((await r.json()).error.message, /missing API key/);
  // Health checks need no key.
  assert.equal((await fetch(`${baseURL.replace(/\/v1$/, '')}/health`)).status, 200);
});

test('20 concurrent clients are all answered', async () => {
  // Short raw prompts keep the 20 prefills cheap: what is tested is the queue, not the model.
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: 20 }, (_, i) => {
      const c = new OpenAI({ baseURL, apiKey: API_KEY, maxRetries: 0, timeout: 300_000 });
      return c.completions.create({ model: MODEL_ID, prompt: 'Hello', max_tokens: 2, seed: i });
    }),
  );
  note(`20 concurrent completions of 2 tokens ${secs(performance.now() - t0)}`);
  for (const r of results) {
    assert.equal(r.object, 'text_completion');
    assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 2, JSON.stringify(r.usage));
    assert.equal(r.usage.prompt_tokens, results[0].usage.prompt_tokens);
  }
  assert.equal(new Set(results.map((r) => r.id)).size, 20, 'every answer has its own id');
});

test('a full queue refuses more requests with 503 and keeps the ones it took', async () => {
  const small = startServe(['--queue-limit', '1']);
  const url = `${await small.ready}/v1`;
  const c = new OpenAI({ baseURL: url, apiKey: 'unused', maxRetries: 0, timeout: 180_000 });
  try {
    // One generation running (its first chunk has arrived), one waiting: the queue is full.
    const controller = new AbortController();
    const running = await c.completions.create(
      { model: MODEL_ID, prompt: '1, 2, 3, 4, 5, 6, 7, 8,', max_tokens: 400, temperature: 0, stream: true },
      { signal: controller.signal },
    );
    const it = running[Symbol.asyncIterator]();
    assert.equal((await it.next()).value.object, 'text_completion');
    const waiting = c.completions.create({ model: MODEL_ID, prompt: 'Hello', max_tokens: 1, temperature: 0 });
    // Give the waiting request time to reach the queue before the one that must be refused.
    await new Promise((resolve) => setTimeout(resolve, 500));
    await assert.rejects(
      c.completions.create({ model: MODEL_ID, prompt: 'Hello', max_tokens: 1 }),
      (err) => err instanceof OpenAI.InternalServerError && err.status === 503 && err.code === 'queue_full',
    );
    controller.abort();
    const r = await waiting;
    assert.equal(r.usage.completion_tokens, 1);
  } finally {
    small.child.kill('SIGKILL');
  }
});

// Tool calls, on the tiny Gemma 4 fixture (its chat template has Gemma 4's tool format; its
// weights are random, so `tool_choice` makes it call: the grammar built from the tool's schema
// shapes what it writes).
const TINY_GEMMA4 = path.join(REPO_ROOT, 'tests', 'data', 'gemma4_mtp', 'gemma4_mtp_target.gguf');
const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string', maxLength: 12 },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
        days: { type: 'integer' },
      },
      required: ['city', 'unit'],
    },
  },
};
const ALARM_TOOL = {
  type: 'function',
  function: {
    name: 'set_alarm',
    description: 'Sets an alarm',
    parameters: { type: 'object', properties: { time: { type: 'string', minLength: 4, maxLength: 5 } }, required: ['time'] },
  },
};

test('tool calls on Gemma 4: forced, streamed, answered; Gemma 3 refuses tools', { timeout: 300_000 }, async () => {
  const tiny = startServe(['--model', TINY_GEMMA4, '--context', '1024']);
  try {
    const c = new OpenAI({ baseURL: `${await tiny.ready}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 180_000 });
    const request = {
      model: 'tiny',
      messages: [{ role: 'user', content: 'What is the weather in Oslo?' }],
      tools: [WEATHER_TOOL, ALARM_TOOL],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      temperature: 0,
      max_tokens: 120,
    };
    const r = await c.chat.completions.create(request);
    const message = r.choices[0].message;
    note(`tool call: ${JSON.stringify(message.tool_calls)}`);
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(message.content, null);
    assert.equal(message.tool_calls.length, 1);
    const call = message.tool_calls[0];
    assert.equal(call.type, 'function');
    assert.match(call.id, /^call_/);
    assert.equal(call.function.name, 'get_weather');
    const args = JSON.parse(call.function.arguments);
    assert.equal(typeof args.city, 'string');
    assert.ok([...args.city].length <= 12, args.city);
    assert.ok(['celsius', 'fahrenheit'].includes(args.unit), args.unit);
    assert.ok(args.days === undefined || Number.isInteger(args.days), JSON.stringify(args));
    assert.deepEqual(Object.keys(args).filter((k) => !['city', 'unit', 'days'].includes(k)), []);

    // Streamed: the same call, in a delta with its index.
    const stream = await c.chat.completions.create({ ...request, stream: true });
    const deltas = [];
    let finish = null;
    for await (const chunk of stream) {
      deltas.push(...(chunk.choices[0]?.delta?.tool_calls ?? []));
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(finish, 'tool_calls');
    assert.deepEqual(deltas.map((d) => [d.index, d.function.name, d.function.arguments]), [[0, call.function.name, call.function.arguments]]);

    // The tool's result goes back; the model answers (auto: text or more calls, parsed).
    const next = await c.chat.completions.create({
      ...request,
      tool_choice: 'auto',
      max_tokens: 8,
      messages: [
        ...request.messages,
        { role: 'assistant', content: null, tool_calls: [call] },
        { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ temperature: -3, sky: 'snow' }) },
      ],
    });
    assert.ok(['stop', 'length', 'tool_calls'].includes(next.choices[0].finish_reason), next.choices[0].finish_reason);
    assert.ok(next.usage.prompt_tokens > r.usage.prompt_tokens, JSON.stringify([next.usage, r.usage]));

    // A tool result that answers no call is refused, naming the message.
    await assert.rejects(
      c.chat.completions.create({ ...request, messages: [...request.messages, { role: 'tool', tool_call_id: 'x', content: '1' }] }),
      (err) => err instanceof OpenAI.BadRequestError && /messages\[1\]/.test(err.message),
    );
  } finally {
    await stopServe(tiny);
  }
  // Gemma 3's template has no tool format: a clear 400 about `tools`.
  await assert.rejects(
    client.chat.completions.create({ ...greedy, tools: [WEATHER_TOOL] }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'tools' && /no tool-call format/.test(err.message),
  );
});
