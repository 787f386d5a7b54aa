#!/usr/bin/env bash
# Portability checks: the tree is formatted, clippy is clean with -D warnings for native and for
# the browser build (wasm32), and the crate type-checks for Apple's targets (macOS and iOS,
# where wgpu uses Metal: code behind cfg(target_os = ...) and Metal-only dependencies are
# compiled nowhere else). Installs the rustup components and targets it needs.
#   pkg-scripts/check-portability.sh [--apple-only | --no-apple]
# Clippy builds in target/lint and the Apple check in target/apple, so they can run beside a
# `cargo test` of the same tree (the test suite runs them in the background).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

say() { echo "check-portability: $*" >&2; }
start=$(date +%s)
mode="${1:-all}"
case "$mode" in all | --apple-only | --no-apple) ;; *) echo "usage: $0 [--apple-only | --no-apple]" >&2; exit 2 ;; esac

if [ "$mode" != --apple-only ]; then
    rustup component add clippy rustfmt >&2
    cargo fmt --all -- --check
    say "cargo fmt: clean"
    cargo clippy --locked --target-dir target/lint --all-targets -- -D warnings
    rustup target add wasm32-unknown-unknown >&2
    cargo clippy --locked --target-dir target/lint --target wasm32-unknown-unknown --lib \
        --no-default-features -- -D warnings
    say "clippy -D warnings: native and wasm32 clean"
fi

if [ "$mode" != --no-apple ]; then
    apple=(aarch64-apple-darwin aarch64-apple-ios)
    if rustup target add "${apple[@]}" >&2; then
        # Type-checking needs no Apple SDK or linker; both targets in one cargo run share the
        # host-side build scripts and proc-macros.
        # The library: the engine an Apple app embeds (the CLI adds only portable crates).
        cargo check --locked --target-dir target/apple --lib --no-default-features "${apple[@]/#/--target=}"
        say "cargo check: ${apple[*]} clean"
    else
        # Without the rustup download the Metal proof is naga's translation of every kernel to
        # MSL (tests/shaders_validate.rs, part of cargo test).
        say "NOTICE: rustup could not install ${apple[*]}; Apple is covered only by the naga Metal translation in tests/shaders_validate.rs"
    fi
fi
say "done in $(($(date +%s) - start)) s"
