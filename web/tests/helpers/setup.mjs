// Shared setup for the browser tests: the packed npm package, the local server, Chromium, and
// reference tokens from the native CLI.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, mkdirSync, rmSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from '../../server.mjs';
import { PKG_DIR, REPO_ROOT, NATIVE_CLI, NATIVE_CLI_OVERRIDE, ARTIFACTS_DIR, TESTS_DIR } from './paths.mjs';

const run = promisify(execFile);

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu',
  '--no-sandbox',
  '--disable-gpu-sandbox',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

/** A temp directory removed when the process exits. */
export function tempDir(prefix) {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * `npm pack` of pkg/, extracted: what npm would publish, so a file missing from the package's
 * `files` list fails here too. Returns { dir (the extracted package), tarball }.
 */
export async function packedPackage() {
  if (!existsSync(path.join(PKG_DIR, 'package.json'))) {
    throw new Error(`no built package in ${PKG_DIR}: run pkg-scripts/build-web.sh first`);
  }
  const out = tempDir('gemma-wgpu-pack-');
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', out], {
    cwd: PKG_DIR,
    maxBuffer: 16 << 20,
  });
  const [{ filename }] = JSON.parse(stdout);
  const tarball = path.join(out, path.basename(filename));
  await run('tar', ['xzf', tarball, '-C', out]);
  return { dir: path.join(out, 'package'), tarball };
}

/** The in-process server with the test hooks; `mounts` maps URL prefixes to directories. */
export async function testServer(mounts) {
  const srv = await startServer({ port: 0, testHooks: true, mounts });
  return {
    ...srv,
    /** Requests the server saw for `pathname` (query ignored). */
    requestsFor: (pathname) => srv.log().filter((e) => e.path === pathname),
  };
}

/**
 * Headless Chromium with a fresh profile (a persistent one, so OPFS is on disk as for a user).
 * Console output and page errors are kept for failure messages.
 */
export async function launchBrowser({ viewport = { width: 1280, height: 800 } } = {}) {
  const userDataDir = tempDir('gemma-wgpu-chromium-');
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
  });
  const logs = [];
  const watch = (page) => {
    page.on('console', (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));
    page.on('worker', (w) => {
      logs.push(`[worker] ${w.url()}`);
      w.on('console', (m) => logs.push(`[worker console.${m.type()}] ${m.text()}`));
    });
    page.on('crash', () => logs.push('[crash] the page crashed'));
  };
  context.pages().forEach(watch);
  context.on('page', watch);
  return {
    context,
    logs,
    /** The last lines of browser output, for assertion messages. */
    recentLogs: (n = 30) => logs.slice(-n).join('\n'),
    async newPage(url) {
      const page = await context.newPage();
      if (url) {
        await page.goto(url);
      }
      return page;
    },
    close: () => context.close(),
  };
}

/** Opens the test harness page (web/tests/pages) and waits for the package import. */
export async function harnessPage(browser, srv) {
  const page = await browser.newPage(srv.url('/index.html'));
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30_000 }).catch((err) => {
    throw new Error(`the harness page did not load the package: ${err.message}\n${browser.recentLogs()}`);
  });
  return page;
}

export const PAGES_DIR = path.join(TESTS_DIR, 'pages');

let nativeBuild = null;

/** Builds target/debug/gemma-wgpu when it is missing. */
export function ensureNativeCli() {
  if (existsSync(NATIVE_CLI)) return Promise.resolve();
  if (NATIVE_CLI_OVERRIDE) return Promise.reject(new Error(`GEMMA_WGPU_NATIVE_CLI: no file ${NATIVE_CLI}`));
  nativeBuild ??= run('cargo', ['build', '--locked'], { cwd: REPO_ROOT, maxBuffer: 64 << 20 });
  return nativeBuild.then(() => {
    if (!existsSync(NATIVE_CLI)) throw new Error(`cargo build did not produce ${NATIVE_CLI}`);
  });
}

/**
 * Greedy tokens from the native CLI under the browser's constraints (WebGPU default limits, no
 * f16): the reference the browser build must reproduce exactly. Subgroup kernels where the
 * native adapter has subgroups (lavapipe does), as in the browser; `subgroups: false` runs the
 * portable kernels (`--no-subgroups`). `adapter` is the CLI's one-line description of the
 * adapter and the kernel variant ("..., f16 off, subgroups on, ...").
 */
export async function nativeGreedy({ model, prompt, maxTokens, contextLength, subgroups = true, sampling = ['--temperature', '0'] }) {
  await ensureNativeCli();
  const args = ['generate', '--model', model, '--prompt', prompt, ...sampling, '--max-tokens', String(maxTokens),
    '--json', '--no-f16', '--webgpu-limits'];
  if (contextLength) args.push('--context', String(contextLength));
  if (!subgroups) args.push('--no-subgroups');
  const t0 = performance.now();
  const { stdout } = await run(NATIVE_CLI, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' },
    maxBuffer: 16 << 20,
  });
  const json = JSON.parse(stdout.trim().split('\n').at(-1));
  return { ids: json.tokens, text: json.text, adapter: json.adapter, ms: performance.now() - t0 };
}

/**
 * `gemma-wgpu bench --json` under the browser's constraints (as `nativeGreedy`): the `results`
 * object the browser's `Gemma.bench` must match in kind.
 */
export async function nativeBench({ model, promptLen, gen, contextLength }) {
  await ensureNativeCli();
  const args = ['bench', '--model', model, '--prompt-len', String(promptLen), '--gen', String(gen), '--repeat', '1',
    '--profile-tokens', '0', '--no-copy-bandwidth', '--json', '--no-f16', '--webgpu-limits', '--context', String(contextLength)];
  const { stdout } = await run(NATIVE_CLI, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' },
    maxBuffer: 16 << 20,
  });
  return JSON.parse(stdout);
}

/** Runs the native references one after another (two cores: parallel runs only slow both). */
export async function nativeGreedyAll(requests) {
  const out = [];
  for (const r of requests) out.push(await nativeGreedy(r));
  return out;
}

/**
 * The greedy comparisons run the subgroup kernels on both sides: asserts that the browser's
 * WebGPU adapter offers `subgroups` (Chromium 134+; headless Chromium's SwiftShader does), that
 * the engine then uses them (`stats().subgroups`, i.e. the `subgroups` feature reached the
 * device through wgpu: patches/wgpu), and that every native reference in `native` ran with
 * subgroups too.
 */
export async function assertSubgroupKernels(page, stats, native) {
  const adapter = await page.evaluate(() => harness.adapterFeatures());
  assert.ok(
    adapter.features.includes('subgroups'),
    `this Chromium's WebGPU adapter offers no 'subgroups' (features: ${adapter.features.join(' ')})`,
  );
  assert.equal(stats.subgroups, true, `stats().subgroups with an adapter that offers subgroups: ${JSON.stringify(stats)}`);
  for (const r of native) assert.match(r.adapter, /subgroups on/, `the native reference ran without subgroups: ${r.adapter}`);
  return adapter;
}

/** Appends a line to artifacts/timings.txt (the CI log prints it) and returns it. */
export function record(file, line) {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const text = `${path.basename(file)}: ${line}`;
  appendFileSync(path.join(ARTIFACTS_DIR, 'timings.txt'), text + '\n');
  return text;
}

export const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
export const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

/**
 * Starts `gemma-wgpu serve --port 0 ARGS` and resolves `ready` once it prints the address it
 * listens on.
 */
export function startServe(args) {
  const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' };
  const child = spawn(NATIVE_CLI, ['serve', '--port', '0', ...args], { cwd: REPO_ROOT, env });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`gemma-wgpu serve exited with ${code} before listening:\n${stderr}`)));
  });
  return { child, ready, stderr: () => stderr };
}

/** Stops a server of `startServe` with Ctrl-C; one that does not stop cleanly fails the run. */
export async function stopServe(server) {
  const child = server?.child;
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.kill('SIGINT');
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const { code, signal } = await exited;
  clearTimeout(timer);
  assert.equal(signal, null, `gemma-wgpu serve did not stop on SIGINT:\n${server.stderr()}`);
  assert.equal(code, 0, `gemma-wgpu serve exited with ${code}:\n${server.stderr()}`);
}

export { run };
