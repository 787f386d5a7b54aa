#!/usr/bin/env bash
# Builds the npm package `gemma-wgpu` into pkg/: the engine compiled to wasm32 and bound with
# wasm-bindgen (pkg/wasm/), plus the JS wrapper from web/package/. Prints the package size.
# Installs the wasm32 target and the matching wasm-bindgen CLI when they are missing. Safe to
# run again: pkg/ is rebuilt from scratch each time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

say() { echo "build-web: $*" >&2; }

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# The CLI and the crate share a private interface: their versions must match exactly.
bindgen_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$bindgen_version" ] || { say "no wasm-bindgen crate in Cargo.lock"; exit 1; }
installed=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$installed" != "$bindgen_version" ]; then
    say "installing wasm-bindgen-cli $bindgen_version (found: ${installed:-none})"
    # --locked can fail when a pinned dependency has been yanked since the release.
    cargo install --locked wasm-bindgen-cli --version "$bindgen_version" ||
        cargo install wasm-bindgen-cli --version "$bindgen_version"
fi

# The release profile keeps debug info for native profiling; the browser download must not.
CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked --lib \
    --target wasm32-unknown-unknown --no-default-features

rm -rf pkg
mkdir -p pkg
wasm-bindgen --target web --no-typescript --out-dir pkg/wasm \
    "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/gemma_wgpu.wasm"
wasm=pkg/wasm/gemma_wgpu_bg.wasm

for name in Engine HeaderProbe; do
    grep -q "^export class $name " pkg/wasm/gemma_wgpu.js ||
        { say "the wasm module exports no $name class (is src/web/ built into the library?)"; exit 1; }
done

if command -v wasm-opt > /dev/null; then
    # The features rustc enables by default for wasm32-unknown-unknown.
    wasm-opt -O2 --enable-bulk-memory --enable-mutable-globals --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-reference-types --enable-multivalue \
        "$wasm" -o "$wasm.opt"
    mv "$wasm.opt" "$wasm"
else
    say "wasm-opt not found on PATH: the wasm is not size-optimised (install binaryen for a smaller file)"
fi

cp -R web/package/. pkg/
version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
sed -i "0,/\"version\": \"[^\"]*\"/s//\"version\": \"$version\"/" pkg/package.json

wasm_bytes=$(stat -c %s "$wasm")
gzip_bytes=$(gzip -9 -c "$wasm" | wc -c)
total_bytes=$(find pkg -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
echo "wasm:        $wasm_bytes bytes ($(mib "$wasm_bytes"))"
echo "wasm, gzip:  $gzip_bytes bytes ($(mib "$gzip_bytes"))"
echo "package:     $total_bytes bytes ($(mib "$total_bytes")) in pkg/"

if command -v npm > /dev/null; then
    # What `npm publish` would ship: every module the package loads must be in it.
    packed=$(cd pkg && npm pack --dry-run --json 2> /dev/null)
    for file in package.json README.md index.js index.d.ts worker.js cache.js wasm/gemma_wgpu.js wasm/gemma_wgpu_bg.wasm; do
        grep -q "\"path\": \"$file\"" <<< "$packed" || { say "npm pack would leave out $file"; exit 1; }
    done
    tarball=$(sed -n 's/^ *"size": \([0-9]*\),$/\1/p' <<< "$packed" | head -n 1)
    echo "npm tarball: $tarball bytes ($(mib "$tarball")), gemma-wgpu@$version"
else
    say "npm not found: skipping the npm pack check"
fi
