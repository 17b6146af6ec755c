#!/usr/bin/env bash
# Python package tests (python/: the PyO3 module `factorvit._native` + the pure-Python part):
#   1. rustfmt and clippy (-D warnings) on the python/ crate (the root workspace excludes it);
#   2. the package built by maturin and installed with pip into a venv (target/py-venv by
#      default; maturin, pytest and numpy from PyPI), with the root target directory so the
#      runtime and the compressor are not compiled twice;
#   3. pytest python/tests: the checkpoint fixtures within 1e-4, bad inputs raising typed errors,
#      sessions in two Python threads, preprocessing, compression at keep 0.4, evaluation.
#
#   ./scripts/test-python.sh           # from anywhere; uses $CARGO_TARGET_DIR or ./target
#   PY_VENV=/tmp/venv ./scripts/test-python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
VENV=${PY_VENV:-$CARGO_TARGET_DIR/py-venv}
start=$(date +%s)
step() { printf '\n--- test-python: %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }
fail() {
  echo "test-python: FAILED: $*" >&2
  exit 1
}
command -v python3 >/dev/null || fail "python3 is not installed"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || fail "python3 >= 3.9 is needed"

step "venv $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || fail "cannot create a venv (apt-get install python3-venv)"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.16,<2" pytest numpy
# The interpreter pyo3's build script configures for: the same for clippy and maturin, so the
# pyo3 crates are built once.
export PYO3_PYTHON="$VENV/bin/python"
export PATH="$VENV/bin:$PATH" # maturin, for pip's build backend

step "rustfmt (python/)"
(cd python && cargo fmt -- --check)

step "clippy (python/, all targets)"
(cd python && cargo clippy --all-targets --release -- -D warnings)

step "build and install the package (pip install ./python)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./python

step "pytest python/tests"
# From outside python/ so that the installed package is imported, not the source folder.
(cd "$VENV" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/python/tests")

step "passed"
