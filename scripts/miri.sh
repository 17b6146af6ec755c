#!/usr/bin/env bash
# Runs a subset of the runtime's tests under Miri (nightly), which checks every memory access of
# the code it interprets: out-of-bounds reads and writes, use of dangling or misaligned
# pointers, aliasing violations of references, data races, uninitialised memory.
#
# The subset (on the project's 2-core VM: about 1.5 min when the Miri build is cached, 3 min
# from scratch):
#   * the runtime's unit tests (`--lib`): JSON, safetensors and config parsers, checksums, the
#     scalar erf, block and thread splits, resampling; minus four exhaustive loops over safe
#     arithmetic (listed in SKIP below), which take minutes under Miri and are covered by the
#     native run;
#   * runtime/tests/memory_safety.rs: `Model::from_bytes` of tests/data/tiny.fvit from aligned
#     and misaligned (offset by one byte: tensors copied) buffers, truncated and corrupted files,
#     whole session runs (one and two threads), and the scalar kernels (gemm with every dtype,
#     layout and epilogue, gemm_parallel, sparse_add with u16/u32 indices, LayerNorm, softmax,
#     GELU, scaled add) on exact-size buffers, so that one element too many is outside the
#     allocation. Tests skip or shrink their work with `cfg!(miri)`; `Model::open` (a memory
#     map) is ignored under Miri. Under Miri only the scalar backend is detected.
#
# Two passes:
#   1. single-threaded tests (unit tests, `kernel_*`) under the default Stacked Borrows model,
#      with -Zmiri-strict-provenance (no integer-to-pointer casts anywhere);
#   2. tests that load a model or use a thread pool (`model_*`, `threads_*`; loading a file over
#      4 MiB runs the integrity pass on rayon) under Tree Borrows: crossbeam-epoch, inside rayon, violates
#      Stacked Borrows (crossbeam-rs/crossbeam#545; crossbeam tests itself with Tree Borrows)
#      and casts integers to pointers. -Zmiri-ignore-leaks lets rayon's global pool outlive
#      the test's main thread.
# A unit test that loads a model or starts a thread pool fails pass 1: give it
# `#[cfg_attr(miri, ignore)]` and cover it from memory_safety.rs (`model_*` / `threads_*`).
#
# libm is built with `force-soft-floats`: its default `sqrtf` is inline assembly (sqrtss),
# which Miri cannot run; the soft version is also correctly rounded, so results do not change.
#
#   ./scripts/miri.sh                 # both passes; MIRIFLAGS is appended to each pass's flags
#   CARGO_TARGET_DIR=/tmp/t ./scripts/miri.sh   # builds in /tmp/t/miri
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/miri
extra_flags=${MIRIFLAGS:-}

if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "miri.sh: the nightly toolchain with miri is not installed (run scripts/install-deps.sh)" >&2
  exit 1
fi

# Exhaustive loops over safe arithmetic (together two minutes under Miri, nothing unsafe
# inside; the native run covers them).
SKIP=(
  format::checksum::tests::sliced_equals_bitwise_for_every_length_and_split
  format::checksum::tests::every_single_bit_flip_changes_the_crc
  session::attention::tests::query_split_covers_rows_without_single_row_items
  kernels::scalar::tests::exp_is_accurate
)
skip_args=()
for t in "${SKIP[@]}"; do skip_args+=(--skip "$t"); done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
miri() {
  cargo +nightly miri test -p factorvit --features libm/force-soft-floats "$@" 2>&1 | tee -a "$log"
}

echo "--- miri pass 1: unit tests and single-threaded kernel tests (Stacked Borrows, strict provenance)"
MIRIFLAGS="-Zmiri-strict-provenance $extra_flags" \
  miri --lib --test memory_safety -- --skip model_ --skip threads_ "${skip_args[@]}"

echo "--- miri pass 2: model loading, sessions, thread pools (Tree Borrows)"
MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-permissive-provenance $extra_flags" \
  miri --test memory_safety -- model_ threads_

passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
ignored=$(sed -n 's/^test result: ok\..* \([0-9]*\) ignored.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
echo "miri.sh: $passed tests passed under Miri ($ignored ignored) in $(($(date +%s) - start)) s"
if [ "$passed" -eq 0 ]; then
  echo "miri.sh: no test ran under Miri" >&2
  exit 1
fi
