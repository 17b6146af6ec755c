#!/usr/bin/env bash
# End-to-end speed against ONNX Runtime on the same machine, in the same run: a timm DeiT
# checkpoint directory (224x224, 197 tokens; default ../shared/perf/deit_tiny_patch16_224, or one
# written by scripts/make_perf_checkpoint.py under target/perf/) converted to .fvit with f32 and
# f16 weights, against onnxruntime on its ONNX export (model.onnx; model_b8.onnx for BATCH=8),
# 1 and 2 threads.
#
#   ./scripts/bench-vs-onnxruntime.sh [MODEL_DIR]     (needs: pip install onnxruntime numpy safetensors)
#
# Environment: ROUNDS (3), RUNS (40 per measurement, and >= MIN_TIME seconds, default 2),
# THREADS ("1 2"), DTYPES ("f32 f16"), BATCH (1; N needs MODEL_DIR/model_bN.onnx),
# FV=path/to/factorvit (default: build and use target/release/factorvit), FV_B=another factorvit
# binary to measure alongside as "B" (A/B of two builds in the same alternation).
#
# The measurements alternate between the runtimes (ROUNDS rounds) so that background load affects
# all alike; the table reports the median over rounds of each round's median latency, the ratio
# factorvit time / ONNX Runtime time (below 1 = factorvit faster) and peak RSS of each process.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:-../shared/perf/deit_tiny_patch16_224}
rounds=${ROUNDS:-3}
runs=${RUNS:-40}
min_time=${MIN_TIME:-2}
threads=${THREADS:-1 2}
dtypes=${DTYPES:-f32 f16}
batch=${BATCH:-1}
if [ -z "${FV:-}" ]; then
  cargo build --release -q -p factorvit-compress
  FV=${CARGO_TARGET_DIR:-target}/release/factorvit
fi
onnx="$model_dir/model.onnx"
[ "$batch" = 1 ] || onnx="$model_dir/model_b$batch.onnx"
[ -f "$onnx" ] || { echo "no $onnx (scripts/make_perf_checkpoint.py --batch $batch writes it)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c "import onnxruntime" 2>/dev/null || python3 -m pip install -q onnxruntime
bins=("A=$FV")
[ -z "${FV_B:-}" ] || bins+=("B=$FV_B")
for dtype in f32 $dtypes; do
  [ -f "$work/$dtype.fvit" ] || "$FV" -q convert --model "$model_dir" -o "$work/$dtype.fvit" --dtype "$dtype"
done

# Correctness first: both runtimes agree with the reference logits.
"$FV" -q infer --model "$work/f32.fvit" --input "$model_dir/input.safetensors" --output "$work/out.safetensors" --threads 1
python3 - "$work/out.safetensors" "$model_dir" <<'PY'
import sys, numpy as np, onnxruntime as ort
from safetensors.numpy import load_file
ours = load_file(sys.argv[1])["logits"]; ref = load_file(sys.argv[2] + "/expected.safetensors")["logits"]
x = load_file(sys.argv[2] + "/input.safetensors")["pixel_values"]
s = ort.InferenceSession(sys.argv[2] + "/model.onnx", providers=["CPUExecutionProvider"])
o = s.run(None, {s.get_inputs()[0].name: x})[0]
print(f"max |logits - reference|: factorvit {np.abs(ours - ref).max():.2e}, onnxruntime {np.abs(o - ref).max():.2e}")
PY

results="$work/results.jsonl"
for round in $(seq "$rounds"); do
  for t in $threads; do
    for b in "${bins[@]}"; do
      label=${b%%=*} bin=${b#*=}
      for dtype in $dtypes; do
        "$bin" -q bench --model "$work/$dtype.fvit" --threads "$t" --batch "$batch" --runs "$runs" --min-time "$min_time" --json \
          | python3 -c "import sys,json; r=json.load(sys.stdin)['models'][0][0]; print(json.dumps({'rt':'factorvit $dtype' + ('' if '$label' == 'A' else ' ($label)'),'t':$t,'ms':r['median_ms'],'rss':r.get('peak_rss_bytes'),'backend':r['backend'],'round':$round}))" >> "$results"
      done
    done
    python3 scripts/ort_bench.py "$onnx" --threads "$t" --runs "$runs" --min-time "$min_time" --json \
      | python3 -c "import sys,json; r=json.load(sys.stdin); print(json.dumps({'rt':'onnxruntime','t':$t,'ms':r['median_ms'],'rss':r.get('peak_rss_bytes'),'round':$round}))" >> "$results"
  done
done
python3 - "$results" "$model_dir" "$batch" <<'PY'
import sys, json, statistics, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
model, batch = os.path.basename(os.path.normpath(sys.argv[2])), int(sys.argv[3])
ts = sorted({r["t"] for r in rows})
rts = ["onnxruntime"] + sorted({r["rt"] for r in rows} - {"onnxruntime"})
def med(rt, t, key="ms"):
    v = [r[key] for r in rows if r["rt"] == rt and r["t"] == t and r.get(key) is not None]
    return statistics.median(v) if v else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
backend = next((r["backend"] for r in rows if "backend" in r), "?")
print(f"\n{model} 224x224, batch {batch}, {cpu}, {os.cpu_count()} cores, factorvit backend {backend}; "
      f"median of {max(r['round'] for r in rows)} rounds; load average {os.getloadavg()[0]:.2f}")
print("| runtime | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} (ms)" for t in ts)
      + " | time vs ORT (" + " / ".join(f"{t}t" for t in ts) + ") | peak RSS (MiB, 1t) |")
print("|---|" + "---|" * len(ts) + "---|---|")
for rt in rts:
    ms = [med(rt, t) for t in ts]
    ratio = " / ".join(f"{m / med('onnxruntime', t):.2f}x" for m, t in zip(ms, ts))
    rss = med(rt, ts[0], "rss")
    rss = f"{rss / 2**20:.1f}" if rss else "-"
    print(f"| {rt} | " + " | ".join(f"{m:.2f}" for m in ms) + f" | {ratio} | {rss} |")
PY
