import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const TESTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const WEB_DIR = path.dirname(TESTS_DIR);
export const REPO_ROOT = path.dirname(WEB_DIR);
export const PKG_DIR = path.join(REPO_ROOT, 'pkg');
export const ARTIFACTS_DIR = path.join(TESTS_DIR, 'artifacts');
export const TINY_MODEL_DIR = path.join(REPO_ROOT, 'tests', 'data', 'gemma4');
export const MODEL_CACHE_DIR = path.join(
  process.env.XDG_CACHE_HOME || path.join(process.env.HOME || '/root', '.cache'),
  'gemma-wgpu',
);
export const MODEL_270M = 'gemma-3-270m-q4_k_m.gguf';
// The native CLI the browser's tokens are compared with: the debug build, or GEMMA_WGPU_NATIVE_CLI
// (e.g. a build in another CARGO_TARGET_DIR).
export const NATIVE_CLI_OVERRIDE = process.env.GEMMA_WGPU_NATIVE_CLI || null;
export const NATIVE_CLI = NATIVE_CLI_OVERRIDE || path.join(REPO_ROOT, 'target', 'debug', 'gemma-wgpu');
