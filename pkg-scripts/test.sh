#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs (pkg-scripts/setup.sh),
# then `cargo test`, the portability checks (clippy native and wasm32, `cargo check` for macOS
# and iOS: pkg-scripts/check-portability.sh), 60 s of each fuzz target (pkg-scripts/fuzz.sh),
# then the browser tests (pkg-scripts/test-web.sh). Without a GPU the kernels run on Mesa's
# lavapipe (software Vulkan) and Chromium's SwiftShader.
#
# The fuzz targets, clippy, the Apple check and the browser package (wasm32) build in their own
# target directories, in the background at low priority while the tests run: the GPU tests on
# lavapipe leave a core idle much of the time, and those builds would otherwise add more than a
# quarter of an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg-scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export LP_NUM_THREADS="${LP_NUM_THREADS:-$(nproc)}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# lavapipe's LLVM compiles 4-wide instead of 8-wide vectors: the same run speed on our kernels
# (270M decode 2.58 against 2.61 tok/s on Mesa 25) and pipelines compile 2.2x faster, which is
# most of the kernel tests' time (each shape is its own pipeline).
export LP_NATIVE_VECTOR_WIDTH="${LP_NATIVE_VECTOR_WIDTH:-128}"

logs=$(mktemp -d)
# Toolchain parts the background jobs need, installed once here: rustup is not safe to run
# from several of them at once.
rustup component add clippy rustfmt >&2
rustup target add wasm32-unknown-unknown >&2
cargo test --locked --no-run "$@"
nice -n 19 pkg-scripts/fuzz.sh --build-only > "$logs/fuzz-build" 2>&1 &
fuzz_build=$!
nice -n 19 pkg-scripts/check-portability.sh > "$logs/portability" 2>&1 &
portability=$!
CARGO_TARGET_DIR=target/web nice -n 19 pkg-scripts/build-web.sh > "$logs/web-build" 2>&1 &
web_build=$!

cargo test --locked "$@"

status=0
wait "$fuzz_build" || status=$?
tail -n 5 "$logs/fuzz-build"
[ "$status" -eq 0 ] || { echo "test: the fuzz build failed:" >&2; cat "$logs/fuzz-build" >&2; exit 1; }
wait "$portability" || status=$?
cat "$logs/portability"
[ "$status" -eq 0 ] || { echo "test: the portability checks failed" >&2; exit 1; }

FUZZ_PARALLEL=4 pkg-scripts/fuzz.sh 60
wait "$web_build" || status=$?
tail -n 4 "$logs/web-build"
[ "$status" -eq 0 ] || { echo "test: the browser package build failed:" >&2; cat "$logs/web-build" >&2; exit 1; }
# The browser build, in headless Chromium's WebGPU (installs Chromium and the npm tooling).
pkg-scripts/test-web.sh --no-build
