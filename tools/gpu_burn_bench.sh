#!/usr/bin/env bash
# The Burn comparison (examples/burn_mlp.rs: our step against Burn's AdamW inside the same Burn
# training loop, on the digits MLP and on GPT-2-like layouts of 2^20 and 2^24 parameters) on
# a GPU machine that has no Rust toolchain, next to the GPU benchmark bundle that
# `../shared/gpu-bench/prepare.sh` puts in `.devbin/` (the Vulkan loader packages in `.gl/`).
#
#   bash tools/gpu_burn_bench.sh prepare    # here, after prepare.sh: adds burn_mlp to .devbin/
#   bash .devbin/gpu_burn_bench.sh run      # there, from the project root, with $OUT set
#
# `prepare` builds the example in release with `--features burn`, strips it and compresses it
# with xz (about 9 MB instead of 80), so that `.devbin/` and `.gl/` stay inside what a device
# run carries. `run` installs the Vulkan loader from `.gl/` when it is missing, points it at
# the NVIDIA driver's manifest as on-device.sh does, and writes `$OUT/burn.txt` (the example's
# output) and `$OUT/burn_loss_curves.png`. Arguments after `run` go to the example (default:
# `--backend vulkan --epochs 10 --many 20,24`).
set -euo pipefail

case "${1:-}" in
prepare)
    top=$(git rev-parse --show-toplevel)
    cd "$top"
    [ -d .devbin ] || { echo "run ../shared/gpu-bench/prepare.sh first" >&2; exit 1; }
    cargo build --release --features burn --example burn_mlp
    strip -o .devbin/burn_mlp target/release/examples/burn_mlp
    xz -T0 -f .devbin/burn_mlp
    cp tools/gpu_burn_bench.sh .devbin/
    du -sh .devbin .gl
    echo "ready: on the GPU machine run: bash .devbin/gpu_burn_bench.sh run"
    ;;
run)
    shift
    : "${OUT:?set OUT to the folder for the results}"
    if ! ldconfig -p | grep -q libvulkan.so.1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    bin=$(mktemp -d)/burn_mlp
    if command -v xz >/dev/null; then
        xz -dc .devbin/burn_mlp.xz > "$bin"
    else
        python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' \
            .devbin/burn_mlp.xz > "$bin"
    fi
    chmod +x "$bin"
    [ "$#" -gt 0 ] || set -- --backend vulkan --epochs 10 --many 20,24
    (cd "$OUT" && timeout 400 "$bin" "$@") 2>&1 | tee "$OUT/burn.txt"
    ;;
*)
    echo "usage: bash tools/gpu_burn_bench.sh prepare | bash .devbin/gpu_burn_bench.sh run [ARGS]" >&2
    exit 2
    ;;
esac
