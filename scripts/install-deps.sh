#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine with rustup: cross targets, the aarch64
# cross linker and qemu, qemu-system-arm and arm-none-eabi binutils for the Cortex-M firmware, and
# the Python packages the interoperability tests use (numpy + safetensors), and a nightly
# toolchain with Miri for scripts/miri.sh. Idempotent.
set -euo pipefail
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add aarch64-unknown-linux-gnu thumbv7em-none-eabihf

# Miri (scripts/miri.sh): the nightly toolchain, its miri and rust-src components, and the Miri
# sysroot (built once into ~/.cache/miri, about 30 s).
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
rustup +nightly component add miri rust-src
cargo +nightly miri setup

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
# arm-none-eabi-size reports the Cortex-M firmware's flash and RAM use (scripts/test-firmware.sh).
command -v arm-none-eabi-size >/dev/null || need_apt+=(binutils-arm-none-eabi)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
python3 -c "import numpy, safetensors" 2>/dev/null || python3 -m pip install -q numpy safetensors
