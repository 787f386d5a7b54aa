#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine to run gemma-wgpu: Rust (if missing), the Vulkan
# loader and Mesa's software Vulkan driver (lavapipe, so machines without a GPU work too), and
# the default model (pkg-scripts/fetch-model.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian 12 ships Mesa 22.3, whose lavapipe loads a storage buffer one lane at a time (a scalar
# load and a stack round trip per lane and 4-byte word): our kernels run 3-4x slower on it than
# on Mesa 25 from bookworm-backports. On a bookworm machine without a GPU (no DRM render node,
# no NVIDIA device: nothing but lavapipe can run there, so no GPU driver changes under the
# user), lavapipe comes from backports.
no_gpu() { ! ls /dev/dri/renderD* /dev/nvidia0 >/dev/null 2>&1; }
mesa_version=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
lavapipe_from_backports=false
if grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release 2>/dev/null && no_gpu &&
    { [ -z "$mesa_version" ] || dpkg --compare-versions "$mesa_version" lt 24; }; then
    lavapipe_from_backports=true
fi

need_apt=()
apt_release=()
if $lavapipe_from_backports; then
    # Mesa 25 needs libdrm from backports too; of the rest only Mesa and libdrm are there.
    apt_release=(-t bookworm-backports)
    need_apt+=(mesa-vulkan-drivers)
else
    # Mesa 22 names the file lvp_icd.x86_64.json, Mesa 25 lvp_icd.json.
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
fi
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need_apt+=(libvulkan1)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v cc >/dev/null || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    if $lavapipe_from_backports; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' |
            as_root tee /etc/apt/sources.list.d/gemma-wgpu-backports.list >/dev/null
    fi
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${apt_release[@]}" "${need_apt[@]}" >&2
fi

if ! command -v cargo >/dev/null; then
    echo "setup: installing Rust with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

pkg-scripts/fetch-model.sh >/dev/null
