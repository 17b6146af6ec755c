#!/usr/bin/env bash
# Bounded coverage-guided fuzzing with libFuzzer, on the stable toolchain (SanitizerCoverage
# flags are stable; the parsers are safe Rust, so bounds are checked without ASan). Runs every
# target of fuzz/Cargo.toml ([[bin]] entries), each for FUZZ_SECONDS with its own corpus seeded
# from fuzz/seeds/<target>/ (valid files written by the compressor's writer, see
# tests/fuzz_seeds.rs), and fails if any target crashes (panic, abort, timeout, OOM).
#
#   ./scripts/fuzz.sh                                  # every target, 30 s each
#   FUZZ_SECONDS=600 FUZZ_TARGETS=read_fvit ./scripts/fuzz.sh
#
# Crash inputs are kept under $CARGO_TARGET_DIR/fuzz/artifacts/<target>/ (reproduce with
# `<binary> <crash file>`); the corpus grown by a run is discarded (the committed seeds are
# the corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS (the sanitizer-coverage passes) off build scripts and
# proc macros, which would otherwise fail to link without the libFuzzer runtime.
host=$(rustc -vV | sed -n 's/^host: //p')
build_start=$(date +%s)
cargo build --manifest-path fuzz/Cargo.toml --release --bins --target "$host"
echo "instrumented build: $(($(date +%s) - build_start)) s"

all_targets=$(awk '/^\[\[bin\]\]/ { bin = 1 } bin && /^name *=/ { gsub(/^name *= *"|"$/, ""); print; bin = 0 }' fuzz/Cargo.toml)
targets=${FUZZ_TARGETS:-$all_targets}
artifacts=$CARGO_TARGET_DIR/artifacts
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in $targets; do
  corpus=$work/corpus/$target
  mkdir -p "$corpus" "$artifacts/$target"
  if [ -d "fuzz/seeds/$target" ]; then
    cp fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  fi
  echo "=== fuzzing $target for ${seconds}s ($(find "$corpus" -type f | wc -l) seeds)"
  log=$work/$target.log
  # libFuzzer exits non-zero on a crash (deadly signal, panic = abort, -timeout per input,
  # -rss_limit_mb); the log is kept and shown below instead of going through a pipe.
  status=0
  "$CARGO_TARGET_DIR/$host/release/$target" "$corpus" -max_total_time="$seconds" -max_len=65536 \
    -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/$target/" \
    >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 80 "$log"
    echo "*** $target FAILED (exit status $status); crash inputs in $artifacts/$target/"
    failed+=("$target")
  else
    # The last status line (coverage, corpus) and the final statistics (exec counts).
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
    grep -E '^stat::' "$log" || true
  fi
done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzzing failed: ${failed[*]}"
  exit 1
fi
echo "fuzzing passed: $(echo $targets | wc -w) target(s), ${seconds}s each"
