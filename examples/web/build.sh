#!/usr/bin/env bash
# Build the demo's wasm module and bind it for the page: examples/web/pkg/ (then serve
# examples/web/ with any static server). Uses rustup's wasm32 target when it is installed
# (`rustup target add wasm32-unknown-unknown`), else Debian's rustc-web toolchain (rustc-web,
# cargo-web, rust-web-src, lld), which builds the standard library from source.
# wasm-bindgen (the CLI) must be the lockfile's version.
set -euo pipefail
cd "$(dirname "$0")"
want="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" || true
if [ "$have" != "$want" ]; then
    echo "build.sh: wasm-bindgen $want is needed (found '${have:-none}'):" >&2
    echo "  cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    cargo build --release --lib --target wasm32-unknown-unknown
elif [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ]; then
    # Debian: the packaged compiler knows wasm32 and builds std for it (nightly flag allowed
    # by RUSTC_BOOTSTRAP); wasm-ld from lld links.
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
        /usr/bin/cargo build --release --lib -Z build-std=std,panic_abort --target wasm32-unknown-unknown
else
    echo "build.sh: no wasm32 toolchain: rustup target add wasm32-unknown-unknown" >&2
    echo "  (or on Debian: apt-get install -y rustc-web cargo-web rust-web-src lld)" >&2
    exit 1
fi
wasm-bindgen --target web --no-typescript --out-dir pkg \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/wgpu_optim_web.wasm"
echo "built examples/web/pkg/; serve examples/web/ (e.g. python3 -m http.server -d examples/web 8000)"
