#!/usr/bin/env bash
# Produces the compressed Fashion-MNIST model shared by the deployment examples (the Cortex-M
# firmware, the C example, the aarch64 checks) and prints its path on stdout:
#
#   factorvit compress --model models/fmnist-deit-tiny --calib data/fmnist-calib.safetensors \
#       --keep 0.25 --dtype f16 --seed 0 -o $CARGO_TARGET_DIR/deploy-examples/fmnist-deit-tiny-k25-f16.fvit
#
# 25 % of the block-linear parameters (1.33 M of 5.31 M), every tensor stored as f16: a 2.8 MB
# file that fits the 4 MB flash of the MPS2 AN386 with the firmware's code. The result is
# cached and rebuilt when the CLI, the source model or the calibration data is newer than it.
# Takes 1-1.5 minutes on 2 cores (plus building the CLI if needed).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
out_dir="$CARGO_TARGET_DIR/deploy-examples"
out="$out_dir/fmnist-deit-tiny-k25-f16.fvit"
src=models/fmnist-deit-tiny
calib=data/fmnist-calib.safetensors

# FACTORVIT_CLI: an already built CLI (the test scripts pass the one `cargo test --workspace`
# builds, so that no second feature set of the compressor is compiled).
if [ -n "${FACTORVIT_CLI:-}" ]; then
  cli=$FACTORVIT_CLI
  [ -x "$cli" ] || { echo "make-model: FACTORVIT_CLI=$cli is not an executable" >&2; exit 1; }
else
  cargo build --release --quiet -p factorvit-compress --bin factorvit >&2
  cli="$CARGO_TARGET_DIR/release/factorvit"
fi
if [ -s "$out" ] && [ "$out" -nt "$cli" ] && [ "$out" -nt "$src/model.safetensors" ] && [ "$out" -nt "$calib" ]; then
  echo "make-model: $out is up to date" >&2
else
  mkdir -p "$out_dir"
  echo "make-model: compressing $src (keep 0.25, f16) ..." >&2
  start=$(date +%s)
  "$cli" compress --model "$src" --calib "$calib" --keep 0.25 --dtype f16 --seed 0 -o "$out" >"$out.log" 2>&1 || {
    cat "$out.log" >&2
    echo "make-model: factorvit compress failed" >&2
    exit 1
  }
  tail -n 3 "$out.log" >&2
  echo "make-model: done in $(( $(date +%s) - start )) s" >&2
fi
echo "$out"
