#!/usr/bin/env bash
# Cortex-M firmware example (examples/cortex-m): builds it for thumbv7em-none-eabihf with the
# compressed Fashion-MNIST model embedded in flash, checks that it fits the board (4 MB flash at
# 0x0, 4 MB RAM at 0x20000000) and runs it under `qemu-system-arm -machine mps2-an386 -cpu
# cortex-m4` with semihosting and `-icount shift=0` (instruction counting). The firmware exits
# with status 0 only if its predictions and logits match the host runtime's, which build.rs
# computes when the firmware is built.
#
#   ./scripts/test-firmware.sh                       # uses $CARGO_TARGET_DIR or ./target
#   FACTORVIT_FIRMWARE_IMAGES=8 ./scripts/test-firmware.sh   # more images (~1.5 s each under QEMU here)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export FACTORVIT_FIRMWARE_IMAGES=${FACTORVIT_FIRMWARE_IMAGES:-4}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-600}
FLASH_BYTES=$((4 * 1024 * 1024))
RAM_BYTES=$((4 * 1024 * 1024))
start=$(date +%s)
step() { printf '\n--- test-firmware: %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }
fail() {
  echo "test-firmware: FAILED: $*" >&2
  exit 1
}
for tool in qemu-system-arm arm-none-eabi-size; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done

step "compressed Fashion-MNIST model"
# With the CLI of the workspace's test build (`cargo test --workspace --release`, run before this
# script in test-all.sh): the same feature set, so it is not compiled a second time.
cargo test --workspace --release --no-run
FACTORVIT_FIRMWARE_MODEL=$(FACTORVIT_CLI="$CARGO_TARGET_DIR/release/factorvit" examples/cortex-m/make-model.sh)
export FACTORVIT_FIRMWARE_MODEL

# The firmware is its own workspace; its .cargo/config.toml selects the target and the runner.
cd examples/cortex-m

step "rustfmt and clippy (firmware and build script)"
cargo fmt -- --check
cargo clippy --release -- -D warnings

step "build (thumbv7em-none-eabihf, release)"
cargo build --release
elf="$CARGO_TARGET_DIR/thumbv7em-none-eabihf/release/factorvit-cortex-m"
arm-none-eabi-size -A "$elf" | grep -E '^(section|\.vector_table|\.text|\.rodata|\.data|\.bss|\.uninit) '
read -r text data bss _ < <(arm-none-eabi-size "$elf" | tail -n 1)
model_bytes=$(stat -c %s "$FACTORVIT_FIRMWARE_MODEL")
flash=$((text + data))
ram=$((data + bss))
echo "flash: $flash bytes (text+rodata $text incl. the $model_bytes-byte model, data $data) of $FLASH_BYTES"
echo "RAM:   $ram bytes reserved (data $data, bss $bss incl. the heap) of $RAM_BYTES; the rest is stack"
[ "$flash" -le "$FLASH_BYTES" ] || fail "the firmware ($flash bytes) does not fit the 4 MB flash"
[ "$ram" -le $((RAM_BYTES - 64 * 1024)) ] || fail "static RAM ($ram bytes) leaves less than 64 KB of stack"

step "run under qemu-system-arm (mps2-an386, Cortex-M4, -icount shift=0)"
log="$CARGO_TARGET_DIR/test-firmware.log"
set +e
timeout "$QEMU_TIMEOUT" qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic -monitor none -serial none \
  -semihosting-config enable=on,target=native -icount shift=0,align=off,sleep=off -kernel "$elf" | tee "$log"
status=${PIPESTATUS[0]}
set -e
[ "$status" -ne 124 ] || fail "the firmware did not finish within $QEMU_TIMEOUT s"
[ "$status" -eq 0 ] || fail "the firmware exited with status $status"
grep -q '^PASS: every prediction matches the host runtime$' "$log" || fail "no PASS line in the firmware output"
grep -q ', 0 copied to RAM$' "$log" || fail "weights were copied into RAM"
grep -q '^integrity: Verified' "$log" || fail "the model's checksums were not verified at boot"

step "passed in $(($(date +%s) - start)) s"
