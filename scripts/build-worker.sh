#!/usr/bin/env bash
# Builds a Rust Worker crate of this workspace (`edge`, or the bench's `ceiling`)
# to wasm32 and its JS shim, with local helper binaries: worker-build would
# otherwise try to download them, and these machines reach only the package
# registries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$HOME/.cargo/bin/wasm-bindgen}"
export ESBUILD_BIN="${ESBUILD_BIN:-$root/node_modules/.bin/esbuild}"
cd "$root/${1:?which crate: edge or ceiling}"
exec worker-build --release
