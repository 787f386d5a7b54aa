#!/usr/bin/env bash
# Browser tests: the npm package built from this tree, packed as npm would publish it, run in
# headless Chromium on its software WebGPU (SwiftShader), compared against the native CLI. Also
# the local server, a Vite build of an app using the package, the demo page, every WGSL
# kernel variant through Dawn's compiler, and `gemma-wgpu serve` through OpenAI's npm client.
# Installs what is missing (Chromium from apt, web/node_modules with `npm ci`), builds pkg/,
# makes sure target/debug/gemma-wgpu and the default model exist, then runs web/tests.
#   pkg-scripts/test-web.sh [--no-build] [test files...]   (default: all of web/tests/*.test.mjs)
# --no-build tests the pkg/ already built. Honours CARGO_TARGET_DIR; GEMMA_WGPU_NATIVE_CLI names
# another native CLI to take the reference tokens from (e.g. a release build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

say() { echo "test-web: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
    say "installing chromium"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium > /dev/null
fi
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
    say "installing nodejs and npm"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm > /dev/null
fi

# Vite 8 and the test runner's features need Node 20.19 or later.
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' ||
    { say "Node.js 20.19 or later is needed, found $(node --version)"; exit 1; }

# `npm ci` when web/node_modules is missing or older than the lock file.
if [ ! -f web/node_modules/.package-lock.json ] ||
    [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
    say "npm ci in web/"
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

build=1
if [ "${1:-}" = --no-build ]; then
    build=0
    shift
fi
if [ $build = 1 ] || [ ! -f pkg/package.json ]; then
    say "building the package ($(elapsed))"
    pkg-scripts/build-web.sh
fi

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# The tests compare the browser's tokens with this CLI's (web/tests/helpers/paths.mjs).
if [ -z "${GEMMA_WGPU_NATIVE_CLI:-}" ]; then
    GEMMA_WGPU_NATIVE_CLI="$(realpath -m "${CARGO_TARGET_DIR:-target}/debug/gemma-wgpu")"
    if [ ! -x "$GEMMA_WGPU_NATIVE_CLI" ]; then
        say "building the native CLI for the reference tokens ($(elapsed))"
        cargo build --locked
    fi
fi
export GEMMA_WGPU_NATIVE_CLI
pkg-scripts/fetch-model.sh > /dev/null

rm -rf web/tests/artifacts
mkdir -p web/tests/artifacts
say "running the browser tests ($(elapsed)); timings go to web/tests/artifacts/timings.txt"
if [ $# -gt 0 ]; then files=("$@"); else files=(web/tests/*.test.mjs); fi
# Node's summary stays the last thing printed.
exec node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
