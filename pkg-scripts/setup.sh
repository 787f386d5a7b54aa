#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine to run gemma-wgpu: Rust (if missing), the Vulkan
# loader and Mesa's software Vulkan driver (lavapipe, so machines without a GPU work too), and
# the default model (pkg-scripts/fetch-model.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need_apt+=(libvulkan1)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v cc >/dev/null || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >&2
fi

if ! command -v cargo >/dev/null; then
    echo "setup: installing Rust with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

pkg-scripts/fetch-model.sh >/dev/null
