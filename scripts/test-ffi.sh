#!/usr/bin/env bash
# C ABI tests (crate runtime/ffi, header include/factorvit.h):
#   1. the Rust tests of the ABI, including the check that the committed header is what
#      cbindgen generates (tests/header.rs);
#   2. examples/c/classify.c compiled with gcc against the static and the shared library and
#      run natively on the bundled Fashion-MNIST images with the compressed example model; its
#      top classes must equal the images' labels and the Rust CLI's (`factorvit infer`)
#      predictions, logits within 1e-4; the Rust example runtime/examples/classify.rs must agree;
#   3. the same C program cross-compiled for aarch64 and run under qemu-aarch64 (NEON kernels).
#
#   ./scripts/test-ffi.sh                     # from anywhere; uses $CARGO_TARGET_DIR or ./target
#   SKIP_AARCH64=1 ./scripts/test-ffi.sh      # native only
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
start=$(date +%s)
step() { printf '\n--- test-ffi: %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }
fail() {
  echo "test-ffi: FAILED: $*" >&2
  exit 1
}
AARCH64=aarch64-unknown-linux-gnu
QEMU_TIMEOUT=${QEMU_TIMEOUT:-600}
for tool in gcc python3; do command -v "$tool" >/dev/null || fail "$tool is not installed"; done
if [ -z "${SKIP_AARCH64:-}" ]; then
  for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
  done
fi
work="$CARGO_TARGET_DIR/test-ffi"
rm -rf "$work"
mkdir -p "$work"

# Host artifacts come from the workspace's test build (`cargo test --workspace --release`, the
# step before this script in test-all.sh): the same feature set, so nothing is compiled twice.
# Cargo reports the files it built (JSON messages); this picks factorvit-ffi's test binaries and
# libraries, the CLI and the Rust example.
step "host build (cargo test --workspace --release --no-run)"
cargo test --workspace --release --no-run --message-format=json-render-diagnostics >"$work/build.json"
python3 - "$work/build.json" >"$work/artifacts.txt" <<'EOF_PY'
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact":
        continue
    pkg, t = m["package_id"], m["target"]
    ffi = "factorvit-ffi" in pkg
    if ffi and m["profile"]["test"] and m.get("executable"):
        print("test", m["executable"])
    elif ffi and not m["profile"]["test"] and "staticlib" in t["kind"]:
        for f in m["filenames"]:
            if f.endswith(".a"):
                print("staticlib", f)
            elif f.endswith(".so"):
                print("cdylib", f)
    elif m["profile"]["test"] or not m.get("executable"):
        continue
    elif t["kind"] == ["bin"] and t["name"] == "factorvit":
        print("cli", m["executable"])
    elif t["kind"] == ["example"] and t["name"] == "classify":
        print("example", m["executable"])
EOF_PY
artifact() { awk -v k="$1" '$1 == k { print $2 }' "$work/artifacts.txt"; }
mapfile -t ffi_tests < <(artifact test)
static_lib=$(artifact staticlib)
shared_lib=$(artifact cdylib)
cli=$(artifact cli)
example=$(artifact example)
[ ${#ffi_tests[@]} -eq 3 ] || fail "expected 3 test binaries of factorvit-ffi (lib, api, header), got: ${ffi_tests[*]}"
for f in "$static_lib" "$shared_lib" "$cli" "$example"; do
  [ -n "$f" ] && [ -f "$f" ] || fail "a host artifact is missing (see $work/artifacts.txt)"
done
cat "$work/artifacts.txt"

step "Rust tests of the C ABI and the header check"
for t in "${ffi_tests[@]}"; do
  # Run from the crate's directory, as `cargo test` does.
  (cd runtime/ffi && "$t")
done

step "compressed example model"
model=$(FACTORVIT_CLI="$cli" examples/cortex-m/make-model.sh)

images=()
labels=()
while read -r file label _; do
  images+=("examples/c/images/$file")
  labels+=("$label")
done <examples/c/images/labels.txt
[ ${#images[@]} -gt 0 ] || fail "no images listed in examples/c/images/labels.txt"

CFLAGS=(-O2 -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude)
LIBS=(-lpthread -ldl -lm)

step "C example, native (static library, memory-mapped model)"
gcc "${CFLAGS[@]}" examples/c/classify.c "$static_lib" "${LIBS[@]}" -o "$work/classify-static"
"$work/classify-static" "$model" "${images[@]}" | tee "$work/c-native.txt"

step "C example, native (shared library, model opened from an aligned buffer)"
lib_dir=$(dirname "$shared_lib")
gcc "${CFLAGS[@]}" examples/c/classify.c -L"$lib_dir" -lfactorvit_ffi -Wl,-rpath,"$lib_dir" "${LIBS[@]}" -o "$work/classify-shared"
"$work/classify-shared" --memory --threads 2 "$model" "${images[@]}" | tee "$work/c-shared.txt"
grep -q "(0 bytes copied)" "$work/c-shared.txt" || fail "weights were copied although the buffer is aligned"

step "C++ compatibility of the header"
if command -v g++ >/dev/null; then
  printf '#include "factorvit.h"\nint main() { FvSessionOptions o = fv_session_options_default(); return (int)o.batch - 1; }\n' \
    >"$work/cxx.cpp"
  g++ -std=c++11 -Wall -Wextra -Werror -Iinclude "$work/cxx.cpp" "$static_lib" "${LIBS[@]}" -o "$work/cxx"
  "$work/cxx"
else
  echo "g++ not installed: skipped"
fi

step "Rust CLI on the same images (factorvit infer)"
python3 - "$work/pixels.safetensors" "$model" "${images[@]}" <<'EOF'
import json, struct, sys
import numpy as np
from safetensors.numpy import save_file
out, model, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
# The model's normalisation, read from the .fvit metadata (a safetensors header).
with open(model, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    pre = json.loads(json.loads(f.read(n))["__metadata__"]["preprocess"])
mean, std = np.float32(pre["mean"][0]), np.float32(pre["std"][0])
imgs = []
for p in paths:
    raw = open(p, "rb").read()
    header = b"P5\n28 28\n255\n"
    assert raw.startswith(header) and len(raw) == len(header) + 784, p
    px = np.frombuffer(raw[len(header):], dtype=np.uint8).astype(np.float32)
    # Same f32 operations as classify.c: (p / 255 - mean) / std.
    imgs.append(((px / np.float32(255) - mean) / std).reshape(1, 28, 28))
save_file({"pixel_values": np.stack(imgs).astype(np.float32)}, out)
EOF
"$cli" infer --model "$model" --input "$work/pixels.safetensors" -o "$work/cli-logits.safetensors" --threads 1
python3 - "$work/cli-logits.safetensors" >"$work/cli.txt" <<'EOF'
import sys
from safetensors.numpy import load_file
for row in load_file(sys.argv[1])["logits"]:
    print(int(row.argmax()), " ".join(f"{v:.4f}" for v in row))
EOF
cat "$work/cli.txt"

# Compares a classify.c transcript with the labels and the CLI: same top class, top logit
# within 1e-4 (printed with 4 decimals, so allow one unit of the last digit on top).
check_c_output() {
  local name=$1 transcript=$2
  local lines
  lines=$(grep -c ': class ' "$transcript" || true)
  [ "$lines" -eq ${#images[@]} ] || fail "$name: expected ${#images[@]} result lines, got $lines"
  local i=0
  while read -r cli_class cli_logits; do
    local line class logit cli_logit
    line=$(grep -F "${images[$i]}: class " "$transcript") || fail "$name: no result for ${images[$i]}"
    class=$(sed -E 's/.*: class ([0-9]+) .*/\1/' <<<"$line")
    logit=$(sed -E 's/.*" logit (-?[0-9.]+) \(second.*/\1/' <<<"$line")
    cli_logit=$(cut -d' ' -f$((class + 1)) <<<"$cli_logits")
    [ "$class" = "${labels[$i]}" ] || fail "$name: ${images[$i]} predicted $class, label ${labels[$i]}"
    [ "$class" = "$cli_class" ] || fail "$name: ${images[$i]} predicted $class, the CLI $cli_class"
    awk -v a="$logit" -v b="$cli_logit" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 2e-4) }' ||
      fail "$name: ${images[$i]} top logit $logit, the CLI $cli_logit"
    i=$((i + 1))
  done <"$work/cli.txt"
  echo "$name: ${#images[@]} images, classes equal to the labels and to the CLI, logits within 1e-4"
}
check_c_output "C native (static)" "$work/c-native.txt"
check_c_output "C native (shared, --memory)" "$work/c-shared.txt"

step "Rust embedding example (runtime/examples/classify.rs)"
for i in "${!images[@]}"; do
  line=$("$example" "$model" "${images[$i]}")
  echo "$line"
  c_line=$(grep -F "${images[$i]}: class " "$work/c-native.txt")
  [ "$(sed -E 's/ \(second.*//' <<<"$c_line")" = "$line" ] || fail "the Rust example and the C example disagree on ${images[$i]}"
done

if [ -z "${SKIP_AARCH64:-}" ]; then
  step "C example, aarch64 under qemu-aarch64 (cross-compiled, NEON kernels)"
  cargo build --release -p factorvit-ffi --target "$AARCH64"
  alib="$CARGO_TARGET_DIR/$AARCH64/release"
  aarch64-linux-gnu-gcc "${CFLAGS[@]}" examples/c/classify.c "$alib/libfactorvit_ffi.a" "${LIBS[@]}" -o "$work/classify-aarch64"
  timeout "$QEMU_TIMEOUT" qemu-aarch64 -L /usr/aarch64-linux-gnu "$work/classify-aarch64" --memory "$model" "${images[@]}" |
    tee "$work/c-aarch64.txt"
  grep -q ", neon kernels:" "$work/c-aarch64.txt" || fail "the aarch64 build did not use the NEON kernels"
  check_c_output "C aarch64 (qemu)" "$work/c-aarch64.txt"
fi

step "passed in $(($(date +%s) - start)) s"
