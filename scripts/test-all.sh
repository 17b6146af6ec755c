#!/usr/bin/env bash
# Runs every test of the repository: formatting, lints, unit + fixture + end-to-end tests,
# the no_std Cortex-M build, the aarch64 NEON tests under qemu, the C ABI, the firmware under
# qemu-system-arm, the Python package (build, install, pytest), a subset of the runtime's tests under
# Miri and a bounded fuzzing session.
# Installs what it needs first.
#
#   ./scripts/test-all.sh            # everything (what CI runs)
#   SKIP_INSTALL=1 ./scripts/test-all.sh   # assume tools are installed
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

if [ -z "${SKIP_INSTALL:-}" ]; then
  step "install toolchain targets and packages"
  ./scripts/install-deps.sh
fi

step "rustfmt"
cargo fmt --all -- --check

step "clippy (host, all targets)"
cargo clippy --workspace --all-targets --release -- -D warnings

step "tests (host, release)"
cargo test --workspace --release

step "no_std build for Cortex-M (thumbv7em-none-eabihf)"
cargo build -p factorvit --no-default-features --release --target thumbv7em-none-eabihf

for extra in scripts/test-aarch64.sh scripts/test-ffi.sh scripts/test-firmware.sh scripts/test-python.sh scripts/miri.sh scripts/fuzz.sh; do
  if [ -x "$extra" ]; then
    step "$extra"
    "./$extra"
  fi
done

step "all tests passed"
