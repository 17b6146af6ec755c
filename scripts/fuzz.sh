#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the file parsers with libFuzzer, on the stable toolchain
# (SanitizerCoverage flags are stable; the runtime's parsers are safe Rust, so bounds are
# checked without ASan). Seeds are real model files written by the test suite.
#   FUZZ_SECONDS=60 ./scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-45}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS (the sanitizer-coverage passes) off build scripts and
# proc macros, which would otherwise fail to link without the libFuzzer runtime.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --manifest-path fuzz/Cargo.toml --release --bins --target "$host"
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cp fuzz/seeds/* "$corpus"/ 2>/dev/null || true
for target in safetensors_header load_model; do
  echo "fuzzing $target for ${seconds}s"
  "$CARGO_TARGET_DIR/$host/release/$target" "$corpus" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
done
