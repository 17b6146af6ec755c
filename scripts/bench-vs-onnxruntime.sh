#!/usr/bin/env bash
# End-to-end speed against ONNX Runtime on the same machine, in the same run:
# timm's DeiT-Tiny architecture (224x224, 197 tokens, random weights) from ../shared/perf,
# factorvit dense f32 and f16 vs onnxruntime on its ONNX export, 1 and 2 threads.
#
#   ./scripts/bench-vs-onnxruntime.sh [PERF_DIR]     (needs: pip install onnxruntime numpy safetensors)
#
# The measurements alternate between the two runtimes (ROUNDS rounds) so that background load
# affects both alike; the table reports the median over rounds of each round's median latency.
set -euo pipefail
cd "$(dirname "$0")/.."
perf_dir=${1:-../shared/perf/deit_tiny_patch16_224}
rounds=${ROUNDS:-3}
runs=${RUNS:-40}
cargo build --release -q -p factorvit-compress
fv=${CARGO_TARGET_DIR:-target}/release/factorvit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$fv" -q convert --model "$perf_dir" -o "$work/f32.fvit"
"$fv" -q convert --model "$perf_dir" -o "$work/f16.fvit" --dtype f16
python3 -c "import onnxruntime" 2>/dev/null || python3 -m pip install -q onnxruntime

# Correctness first: both runtimes agree with timm's logits.
"$fv" -q infer --model "$work/f32.fvit" --input "$perf_dir/input.safetensors" --output "$work/out.safetensors" --threads 1
python3 - "$work/out.safetensors" "$perf_dir" <<'PY'
import sys, numpy as np, onnxruntime as ort
from safetensors.numpy import load_file
ours = load_file(sys.argv[1])["logits"]; ref = load_file(sys.argv[2] + "/expected.safetensors")["logits"]
x = load_file(sys.argv[2] + "/input.safetensors")["pixel_values"]
s = ort.InferenceSession(sys.argv[2] + "/model.onnx", providers=["CPUExecutionProvider"])
o = s.run(None, {s.get_inputs()[0].name: x})[0]
print(f"max |logits - timm|: factorvit {np.abs(ours - ref).max():.2e}, onnxruntime {np.abs(o - ref).max():.2e}")
PY

results="$work/results.jsonl"
for round in $(seq "$rounds"); do
  for t in 1 2; do
    for dtype in f32 f16; do
      "$fv" -q bench --model "$work/$dtype.fvit" --threads "$t" --runs "$runs" --min-time 2 --json \
        | python3 -c "import sys,json; r=json.load(sys.stdin)['models'][0][0]; print(json.dumps({'rt':'factorvit $dtype','t':$t,'ms':r['median_ms'],'round':$round}))" >> "$results"
    done
    python3 scripts/ort_bench.py "$perf_dir/model.onnx" --threads "$t" --runs "$runs" --json \
      | python3 -c "import sys,json; r=json.load(sys.stdin); print(json.dumps({'rt':'onnxruntime','t':$t,'ms':r['median_ms'],'round':$round}))" >> "$results"
  done
done
python3 - "$results" <<'PY'
import sys, json, statistics, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(rt, t): return statistics.median(r["ms"] for r in rows if r["rt"] == rt and r["t"] == t)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"\nDeiT-Tiny 224x224, batch 1, {cpu}, {os.cpu_count()} cores; median of {max(r['round'] for r in rows)} rounds")
print("| runtime | 1 thread (ms) | 2 threads (ms) | speed-up vs ORT (1 / 2 threads) |")
print("|---|---|---|---|")
for rt in ["onnxruntime", "factorvit f32", "factorvit f16"]:
    a, b = med(rt, 1), med(rt, 2)
    print(f"| {rt} | {a:.2f} | {b:.2f} | {med('onnxruntime', 1) / a:.2f}x / {med('onnxruntime', 2) / b:.2f}x |")
PY
