#!/usr/bin/env bash
# Fuzzes the engine's untrusted-input paths with cargo-fuzz (targets in fuzz/, see
# fuzz/README.md): each target runs SECONDS (default 60) from the committed seeds under
# libFuzzer's memory and time limits, and the script prints its exec count and exec/s.
# Exits non-zero on any crash, panic, timeout or out-of-memory, naming the reproducer.
#
#   pkg-scripts/fuzz.sh [--build-only] [SECONDS] [TARGET...]   (default: every target)
#
# Environment: FUZZ_TARGET_DIR (cargo target dir; default ~/.cache/gemma-wgpu/fuzz-target, which
# outlives a checkout, so a later run, CI's in a fresh clone included, skips the 4-10 minute
# cold build), FUZZ_PARALLEL=2 (run two targets at a time), GEMMA_FUZZ_TOKENIZER_GGUF (see
# fuzz/fuzz_targets/tokenizer.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

build_only=0
if [ "${1:-}" = --build-only ]; then
    # Only build the targets (the test suite builds them while other tests run).
    build_only=1
    shift
fi
secs="${1:-60}"
[ $# -gt 0 ] && shift
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [--build-only] [SECONDS] [TARGET...]" >&2; exit 2 ;; esac
all=(gguf tokenizer chat tokenizer_json)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
target_dir="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-wgpu/fuzz-target}"
parallel="${FUZZ_PARALLEL:-1}"

# Largest input per target: above the largest seed (a real GGUF header is ~100 kB, the tiny
# tokenizer.json 106 kB); text inputs stay short so each run is fast.
max_len() {
    case "$1" in
        gguf) echo 262144 ;;
        tokenizer_json) echo 131072 ;;
        *) echo 4096 ;;
    esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    # A debug build: compiles in half the time, and its speed does not matter.
    cargo install --locked --debug cargo-fuzz
fi

# libFuzzer's instrumentation and AddressSanitizer need -Z flags: a nightly toolchain if there
# is one, else the stable one with RUSTC_BOOTSTRAP=1 (it ships the ASan runtime too).
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

# One cargo call builds every target (they share the engine's build). cargo-fuzz's defaults:
# release with debug assertions and overflow checks, and ASan, which is also what makes
# -malloc_limit_mb work (libFuzzer sees each malloc through the sanitizer's hooks); ASan costs
# about a quarter more build time (cold, 2 cores: 4.0 min against 3.2 with --sanitizer none).
echo "fuzz: building the fuzz targets (${toolchain[*]:-stable, RUSTC_BOOTSTRAP=1})" >&2
start=$(date +%s)
cargo "${toolchain[@]}" fuzz build --target-dir "$target_dir" >&2
echo "fuzz: build took $(($(date +%s) - start)) s" >&2
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
[ "$build_only" -eq 1 ] && exit 0

# Runs one target; writes its verdict to fuzz/artifacts/<target>/result.
run_target() {
    local t=$1 art="fuzz/artifacts/$1" corpus="fuzz/corpus/$1" rc=0
    mkdir -p "$art" "$corpus"
    rm -f "$art/result"
    # New inputs go to the scratch corpus (git-ignored); the seeds dir is only read.
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}" "$bin_dir/$t" \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="$art/" \
        "$corpus" "fuzz/seeds/$t" >"$art/log" 2>&1 || rc=$?
    # libFuzzer's last line: "Done N runs in S second(s)".
    local done runs s
    done=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$art/log" | tail -1 || true)
    runs=$(awk '{print $2}' <<<"$done")
    s=$(awk '{print $5}' <<<"$done")
    # A failed run has no Done line: its last status line ("#N ...") has the count.
    [ -n "$runs" ] || runs=$(grep -oE '^#[0-9]+' "$art/log" | tail -1 | tr -d '#' || true)
    if [ "$rc" -eq 0 ] && [ -n "$done" ]; then
        echo "$t: ok: ${runs} runs in ${s} s, $((runs / (s > 0 ? s : 1))) exec/s" >"$art/result"
    else
        local repro
        repro=$(ls -t "$art"/crash-* "$art"/timeout-* "$art"/oom-* "$art"/leak-* 2>/dev/null | head -1 || true)
        {
            echo "$t: FAILED (exit $rc) after ${runs:-?} runs"
            grep -E -A12 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==ERROR" "$art/log" | head -40 || true
            echo "$t: reproducer: ${repro:-none written (see $art/log)}"
            if [ -n "$repro" ]; then echo "$t: rerun it with: $bin_dir/$t $repro"; fi
        } >"$art/result"
    fi
}

running=0
for t in "${targets[@]}"; do
    [ -d "fuzz/seeds/$t" ] || { echo "fuzz: unknown target $t (have: ${all[*]})" >&2; exit 2; }
    echo "fuzz: $t for $secs s" >&2
    run_target "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$parallel" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=0
for t in "${targets[@]}"; do
    cat "fuzz/artifacts/$t/result"
    grep -q "^$t: ok" "fuzz/artifacts/$t/result" || failed=1
done
exit "$failed"
