// The demo page (web/demo) with the tiny model: load, chat with streamed text, stop, chat again,
// and the layout at phone and desktop sizes (screenshots go to artifacts/). The tiny model has
// random weights: it samples control tokens and stray byte tokens all the time, so what reaches
// the conversation shows whether only printable text gets through.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { TINY_MODEL_DIR, WEB_DIR, ARTIFACTS_DIR } from './helpers/paths.mjs';
import { packedPackage, testServer, launchBrowser, record, secs } from './helpers/setup.mjs';

const note = (line) => console.log(record(import.meta.filename, line));

let srv;
let browser;

before(async () => {
  const pkg = await packedPackage();
  srv = await testServer({ '/': path.join(WEB_DIR, 'demo'), '/gemma-wgpu': pkg.dir, '/models/tiny': TINY_MODEL_DIR });
  browser = await launchBrowser({ viewport: { width: 1280, height: 800 } });
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
});

after(async () => {
  await browser?.close();
  await srv?.close();
});

const state = (page) => page.evaluate(() => document.body.dataset.state);
const waitState = (page, s, timeout = 60_000) =>
  page.waitForSelector(`body[data-state="${s}"]`, { timeout }).catch(async (err) => {
    throw new Error(`state ${await state(page)} instead of ${s} (${err.message})\n${browser.recentLogs()}`);
  });
const lastReply = (page) =>
  page.evaluate(() => {
    const replies = document.querySelectorAll('#messages .msg.assistant');
    return { count: replies.length, text: replies[replies.length - 1]?.textContent ?? '' };
  });

/** The bounding box of `selector` in CSS pixels of the viewport. */
const box = (page, selector) =>
  page.$eval(selector, (el) => {
    const { top, bottom, height } = el.getBoundingClientRect();
    return { top, bottom, height };
  });
const panelOpen = (page) => page.$eval('#model-panel', (el) => el.open);

/** The expanded state of `selector` in Chromium's accessibility tree: what a screen reader gets. */
async function expanded(page, selector) {
  const cdp = await page.context().newCDPSession(page);
  try {
    const { root } = await cdp.send('DOM.getDocument', { depth: 0 });
    const { nodeId } = await cdp.send('DOM.querySelector', { nodeId: root.nodeId, selector });
    const { nodes } = await cdp.send('Accessibility.getPartialAXTree', { nodeId, fetchRelatives: false });
    return nodes[0].properties?.find((p) => p.name === 'expanded')?.value.value;
  } finally {
    await cdp.detach();
  }
}

// What must never show in a reply: U+FFFD, C0/C1 control characters other than tab and line
// breaks, and the names of Gemma 3 and Gemma 4 control tokens.
const NOT_PRINTABLE = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F\uFFFD]/u;
const CONTROL_TOKEN =
  /<(?:pad|eos|bos|unk|mask|unused\d+|(?:start|end)_of_(?:turn|image)|image_soft_token)>|\[multimodal\]|<\|[^<>\s]*>|<[^<>\s]*\|>/;

/** Waits until the last reply's text is longer than `than` characters. */
async function replyLongerThan(page, than, timeout = 60_000) {
  await page.waitForFunction(
    (n) => {
      const replies = document.querySelectorAll('#messages .msg.assistant');
      return (replies[replies.length - 1]?.textContent.length ?? 0) > n;
    },
    than,
    { timeout, polling: 50 },
  );
  return (await lastReply(page)).text;
}

test('demo: load, stream, stop, send again; layout at 375 and 1280 px', { timeout: 300_000 }, async () => {
  const page = await browser.newPage();
  const t0 = performance.now();
  await page.goto(srv.url('/?model=./models/tiny/gemma4_tiny_a.gguf'));
  assert.match(await state(page), /^(loading|ready)$/);
  await waitState(page, 'ready');
  note(`demo: tiny model ready ${secs(performance.now() - t0)} after navigation`);
  assert.equal(await panelOpen(page), true, 'on a wide screen the model panel stays open beside the conversation');
  assert.ok((await page.textContent('#status')).trim().length > 0, '#status says something');
  assert.ok(await page.$('#progress'), '#progress exists');
  const modelRequests = srv.requestsFor('/models/tiny/gemma4_tiny_a.gguf');
  assert.ok(modelRequests.length >= 1, 'the ?model= URL was the one loaded');

  // First message: the reply streams in (grows several times), then Stop ends it.
  await page.fill('#prompt', 'Tell me a story about a lighthouse.');
  await page.click('#send');
  await waitState(page, 'generating', 10_000);
  const user = await page.$$eval('#messages .msg.user', (els) => els.map((e) => e.textContent));
  assert.deepEqual(user.map((t) => t.trim()), ['Tell me a story about a lighthouse.']);
  const lengths = [];
  let text = await replyLongerThan(page, 0);
  lengths.push(text.length);
  for (let i = 0; i < 2; i++) {
    text = await replyLongerThan(page, text.length);
    lengths.push(text.length);
  }
  assert.ok(lengths[0] < lengths[1] && lengths[1] < lengths[2], `streamed lengths ${lengths}`);
  await page.click('#stop');
  const stopClicked = performance.now();
  await waitState(page, 'ready', 10_000);
  note(`demo: stop took ${(performance.now() - stopClicked).toFixed(0)} ms; reply grew ${lengths.join(' -> ')} chars`);
  const stopped = await lastReply(page);
  await page.waitForTimeout(500);
  assert.equal((await lastReply(page)).text, stopped.text, 'nothing is added after Stop');
  assert.equal(await page.isVisible('#send'), true);

  // The stats panel shows the generation's numbers.
  const decode = await page.textContent('#stats');
  assert.match(decode, /tok\/s/);

  // Second message in the same conversation.
  await page.fill('#prompt', 'And then?');
  await page.click('#send');
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg.user').length === 2);
  const second = await replyLongerThan(page, 0);
  assert.ok(second.length > 0);
  assert.equal((await lastReply(page)).count, 2);
  if ((await state(page)) === 'generating') {
    await replyLongerThan(page, second.length);
    await page.click('#stop');
  }
  await waitState(page, 'ready', 30_000);

  await page.screenshot({ path: path.join(ARTIFACTS_DIR, 'demo-1280x800.png') });
  await page.setViewportSize({ width: 375, height: 812 });
  await page.waitForTimeout(200);
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }));
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, 'demo-375x812.png') });
  assert.ok(widths.scroll <= 375, `no horizontal overflow at 375 px: scrollWidth ${widths.scroll}`);
  assert.equal(await panelOpen(page), false, 'the model panel folds when the layout becomes one column');
  // The composer stays usable on a phone.
  assert.ok(await page.isVisible('#prompt'));
  assert.ok(await page.isVisible('#send'));
  await page.close();
});

test('demo on a phone: fits its width, the model panel folds away once ready and opens again, replies are printable text', { timeout: 180_000 }, async () => {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 375, height: 812 });
  await page.goto(srv.url('/?model=./models/tiny/gemma4_tiny_a.gguf'));
  await waitState(page, 'ready');
  const scroll = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(scroll <= 375, `scrollWidth ${scroll}`);
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, 'demo-375x812-ready.png'), fullPage: true });

  // Folded to its summary line, the panel leaves the conversation in view above the composer.
  assert.equal(await panelOpen(page), false, 'the model panel is folded once the model is ready');
  assert.equal(await expanded(page, '#model-panel > summary'), false);
  const panel = await box(page, '#model-panel');
  const chat = await box(page, '.chat');
  const empty = await box(page, '#empty');
  const composer = await box(page, '#composer');
  assert.ok(panel.height < 80, `folded panel height ${panel.height}`);
  assert.ok(panel.bottom <= chat.top, `panel ${JSON.stringify(panel)} overlaps the conversation ${JSON.stringify(chat)}`);
  assert.ok(empty.top >= 0 && empty.bottom <= composer.top,
    `the conversation ${JSON.stringify(empty)} is not in view above the composer ${JSON.stringify(composer)}`);

  // Its summary opens it again, by pointer or keyboard, and says so to assistive technology.
  await page.click('#model-panel > summary');
  assert.equal(await panelOpen(page), true);
  assert.equal(await expanded(page, '#model-panel > summary'), true);
  assert.ok(await page.isVisible('#load-preset'), 'the model choices are back');
  await page.focus('#model-panel > summary');
  await page.keyboard.press('Enter');
  assert.equal(await panelOpen(page), false);
  assert.equal(await expanded(page, '#model-panel > summary'), false);
  await page.keyboard.press(' ');
  assert.equal(await panelOpen(page), true);
  await page.click('#model-panel > summary');

  // A whole reply (to its end, where pending bytes are flushed) has printable text only.
  await page.click('#settings > summary');
  await page.fill('#max-tokens', '96');
  await page.click('#settings > summary');
  await page.fill('#prompt', 'Tell me a story about a lighthouse.');
  await page.click('#send');
  await waitState(page, 'generating', 10_000);
  await waitState(page, 'ready', 120_000);
  const reply = await lastReply(page);
  assert.equal(reply.count, 1);
  assert.ok(reply.text.length > 0, 'the reply has text');
  const conversation = await page.textContent('#messages');
  assert.doesNotMatch(conversation, NOT_PRINTABLE, `a character that is not printable: ${JSON.stringify(conversation)}`);
  assert.doesNotMatch(conversation, CONTROL_TOKEN, `a control token: ${JSON.stringify(conversation)}`);
  const shown = await box(page, '#messages .msg.assistant');
  assert.ok(shown.bottom > 0 && shown.bottom <= (await box(page, '#composer')).top + 1,
    `the end of the reply ${JSON.stringify(shown)} is in view above the composer`);
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, 'demo-375x812-reply.png') });
  await page.close();
});

test('demo: the JSON-schema reply format gives a reply that parses and follows the example schema', { timeout: 180_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(srv.url('/?model=./models/tiny/gemma4_tiny_a.gguf'));
  await waitState(page, 'ready');
  await page.click('#settings > summary');
  assert.equal(await page.isVisible('#json-schema'), false, 'the schema box shows only for the schema format');
  await page.selectOption('#reply-format', 'json_schema');
  assert.equal(await page.isVisible('#json-schema'), true);
  const schema = JSON.parse(await page.inputValue('#json-schema'));
  await page.fill('#max-tokens', '400');
  await page.click('#settings > summary');
  await page.fill('#prompt', 'Is the sea salty?');
  await page.click('#send');
  await waitState(page, 'generating', 10_000);
  await waitState(page, 'ready', 150_000);
  const reply = JSON.parse((await lastReply(page)).text);
  note(`demo JSON reply: ${JSON.stringify(reply)}`);
  assert.deepEqual(Object.keys(reply).sort(), [...schema.required].sort());
  assert.ok(typeof reply.answer === 'string' && [...reply.answer].length <= 200, JSON.stringify(reply));
  assert.ok(Number.isInteger(reply.confidence) && reply.confidence >= 0 && reply.confidence <= 100, JSON.stringify(reply));
  assert.ok(Array.isArray(reply.topics) && reply.topics.length <= 3 && reply.topics.every((t) => typeof t === 'string'), JSON.stringify(reply));
  // A schema that is not JSON is reported on the page and nothing is sent.
  await page.click('#settings > summary');
  await page.fill('#json-schema', '{ not json');
  await page.click('#settings > summary');
  await page.fill('#prompt', 'Again?');
  await page.click('#send');
  await page.waitForSelector('.note.error-note', { timeout: 10_000 });
  assert.match(await page.textContent('.note.error-note'), /not valid JSON/);
  assert.equal(await state(page), 'ready');
  await page.close();
});
