#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs (pkg-scripts/setup.sh),
# then `cargo test`, then the browser tests (pkg-scripts/test-web.sh). Without a GPU the kernels
# run on Mesa's lavapipe (software Vulkan) and Chromium's SwiftShader.
set -euo pipefail
cd "$(dirname "$0")/.."
pkg-scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export LP_NUM_THREADS="${LP_NUM_THREADS:-$(nproc)}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --locked "$@"
# The browser build, in headless Chromium's WebGPU (installs Chromium and the npm tooling).
pkg-scripts/test-web.sh
