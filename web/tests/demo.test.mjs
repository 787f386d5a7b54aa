// The demo page (web/demo) with the tiny model: load, chat with streamed text, stop, chat again,
// and the layout at phone and desktop sizes (screenshots go to artifacts/).
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
  // The composer stays usable on a phone.
  assert.ok(await page.isVisible('#prompt'));
  assert.ok(await page.isVisible('#send'));
  await page.close();
});

test('demo: a first visit on a phone fits its width', { timeout: 120_000 }, async () => {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 375, height: 812 });
  await page.goto(srv.url('/?model=./models/tiny/gemma4_tiny_a.gguf'));
  await waitState(page, 'ready');
  const scroll = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(scroll <= 375, `scrollWidth ${scroll}`);
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, 'demo-375x812-ready.png'), fullPage: true });
  await page.close();
});
