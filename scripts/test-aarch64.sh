#!/usr/bin/env bash
# aarch64 (Raspberry Pi 4/5 class) checks under user-mode QEMU: the NEON kernels against the
# scalar ones and against the fixtures' PyTorch references, with f32 and f16 weights.
#   1. `cargo test -p factorvit --release --target aarch64-unknown-linux-gnu`: the runtime's unit
#      and kernel tests (every NEON kernel against scalar and naive references; the runner
#      `qemu-aarch64 -L /usr/aarch64-linux-gnu` comes from .cargo/config.toml). Builds the
#      runtime only (no compressor, no faer).
#   2. runtime/examples/check_fixtures.rs under qemu: the fixture models, converted natively by
#      the host CLI (`factorvit convert`, f32 and --dtype f16), must reproduce every reference
#      tensor of tests/fixtures/*/expected.safetensors with the scalar and the NEON kernels,
#      also with every block linear re-expressed as low rank / low rank + sparse; f16 models
#      must agree across kernels; a compressed (low-rank, f16) Fashion-MNIST model must give the
#      same logits and classes with both kernels.
#
#   ./scripts/test-aarch64.sh          # uses $CARGO_TARGET_DIR or ./target
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
TARGET=aarch64-unknown-linux-gnu
# Bound on each emulated program (the kernel test binary, the longest, takes 30-50 s here).
QEMU_TIMEOUT=${QEMU_TIMEOUT:-900}
FMNIST_IMAGES=${FMNIST_IMAGES:-8}
start=$(date +%s)
step() { printf '\n--- test-aarch64: %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }
fail() {
  echo "test-aarch64: FAILED: $*" >&2
  exit 1
}
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done
# The runner of .cargo/config.toml, with a time bound on every test binary.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="timeout $QEMU_TIMEOUT qemu-aarch64 -L /usr/aarch64-linux-gnu"

step "runtime tests for $TARGET (build)"
cargo test -p factorvit --release --target "$TARGET" --no-run

step "runtime tests for $TARGET under qemu-aarch64"
cargo test -p factorvit --release --target "$TARGET"

step "fixture models converted natively (f32 and f16)"
# The CLI of the workspace's test build (`cargo test --workspace --release`, run before this
# script in test-all.sh): the same feature set, so it is not compiled a second time.
cargo test --workspace --release --no-run
cli="$CARGO_TARGET_DIR/release/factorvit"
[ -x "$cli" ] || fail "$cli was not built"
models="$CARGO_TARGET_DIR/test-aarch64/models"
rm -rf "$models"
mkdir -p "$models"
for dir in tests/fixtures/*/; do
  name=$(basename "$dir")
  [ -f "$dir/expected.safetensors" ] && [ -f "$dir/config.json" ] || continue
  "$cli" --quiet convert --model "$dir" -o "$models/$name.fvit"
  "$cli" --quiet convert --model "$dir" --dtype f16 -o "$models/$name.f16.fvit"
done
ls -l "$models"

step "compressed Fashion-MNIST model"
fmnist=$(FACTORVIT_CLI="$cli" examples/cortex-m/make-model.sh)

step "end-to-end checks under qemu-aarch64 (runtime/examples/check_fixtures.rs)"
cargo run --release -p factorvit --target "$TARGET" --example check_fixtures -- \
  --fixtures tests/fixtures --models "$models" --fmnist "$fmnist" data/fmnist-test.safetensors "$FMNIST_IMAGES" |
  tee "$CARGO_TARGET_DIR/test-aarch64/check_fixtures.txt"
grep -q "^backends: scalar, neon$" "$CARGO_TARGET_DIR/test-aarch64/check_fixtures.txt" ||
  fail "the NEON backend was not exercised"

step "passed in $(($(date +%s) - start)) s"
