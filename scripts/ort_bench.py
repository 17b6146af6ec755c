#!/usr/bin/env python3
"""Times ONNX Runtime (CPU) on an ONNX export, the speed peer of `factorvit bench`.

    python3 scripts/ort_bench.py MODEL.onnx --threads 1 --runs 50 [--min-time 2] [--input in.safetensors] [--json]

Sequential execution, all graph optimisations on, intra-op threads as given, inter-op 1.
Prints the median and p90 latency over at least --runs timed runs and --min-time seconds after
--warmup runs, and the process's peak RSS. The batch is the model's static input batch.
"""
import argparse, json, resource, statistics, sys, time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.0, help="seconds to keep measuring for at least")
    ap.add_argument("--input", help="safetensors with pixel_values (default: random)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if a.input:
        from safetensors.numpy import load_file
        x = load_file(a.input)["pixel_values"].astype(np.float32)
    else:
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    for _ in range(a.warmup):
        sess.run(None, feed)
    times = []
    start = time.perf_counter()
    while len(times) < a.runs or time.perf_counter() - start < a.min_time:
        t0 = time.perf_counter()
        out = sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    res = {
        "runtime": "onnxruntime " + ort.__version__,
        "threads": a.threads,
        "runs": len(times),
        "batch": int(x.shape[0]),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_ms": times[0],
        "output_shape": list(out[0].shape),
    }
    if a.json:
        print(json.dumps(res))
    else:
        print(f"onnxruntime {ort.__version__}: {a.threads} thread(s): median {res['median_ms']:.2f} ms, p90 {res['p90_ms']:.2f} ms over {len(times)} runs, peak RSS {res['peak_rss_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
