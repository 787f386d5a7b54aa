#!/usr/bin/env bash
# Serves the demo locally: / is web/demo, /gemma-wgpu the built npm package (pkg/), /models the
# model cache directory (the default Gemma 3 270M) and /models/tiny the tiny Gemma 4 test models.
# Builds the package when pkg/ is missing and fetches the default model when it is not cached.
#
#   pkg-scripts/serve.sh [port]        (default 8080; HOST=0.0.0.0 to serve other machines)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port="${1:-${PORT:-8080}}"
host="${HOST:-127.0.0.1}"
models="${XDG_CACHE_HOME:-$HOME/.cache}/gemma-wgpu"
model=gemma-3-270m-q4_k_m.gguf

command -v node > /dev/null || { echo "serve: node is needed (apt-get install nodejs)" >&2; exit 1; }
[ -f pkg/index.js ] || pkg-scripts/build-web.sh
[ -f "$models/$model" ] || pkg-scripts/fetch-model.sh > /dev/null

shown_host="$host"
[ "$host" = 0.0.0.0 ] && shown_host=localhost
echo "Demo:             http://$shown_host:$port/"
echo "Tiny test model:  http://$shown_host:$port/?model=./models/tiny/gemma4_tiny_a.gguf"
exec node web/server.mjs --host "$host" --port "$port" --root web/demo \
    --mount /gemma-wgpu=pkg --mount "/models=$models" --mount /models/tiny=tests/data/gemma4
