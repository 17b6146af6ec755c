#!/usr/bin/env python3
"""Compress the bundled Fashion-MNIST DeiT-tiny, compare it with the dense model, plot the ranks.

    pip install ./python                       # once, from the repository root (needs Rust)
    python examples/python/compress_and_compare.py [--keep 0.4] [--out k40.fvit] [--plot ranks.png]

Compresses `models/fmnist-deit-tiny` with the bundled calibration images
(`data/fmnist-calib.safetensors`) at the given budget, then evaluates both models on the bundled
test images (`data/fmnist-test.safetensors`): accuracy, agreement and KL against the dense model,
weight bytes and time per image. With matplotlib installed (optional), draws the rank chosen for
every layer across depth.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import factorvit

REPO = Path(__file__).resolve().parents[2]


def ms_per_image(model: factorvit.Model, x: np.ndarray, threads: int, repeats: int = 3) -> float:
    """Best wall time of `repeats` runs over `x`, per image, in milliseconds."""
    session = model.session(threads=threads, batch=min(len(x), 32))
    session.run(x[:1])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(x)
        best = min(best, time.perf_counter() - start)
    return best * 1e3 / len(x)


def plot_ranks(result: factorvit.CompressResult, path: Path) -> bool:
    """Rank per layer across depth (one line per layer type); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = {}
    for layer in result.layers:
        parts = layer["name"].split(".")  # blocks.3.mlp.fc1
        if parts[0] != "blocks":
            continue
        full = min(layer["out_features"], layer["in_features"])
        rank = layer["rank"] if layer["kind"] != "dense" else full
        series.setdefault(parts[-1], []).append((int(parts[1]), rank / full))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(series.items()):
        blocks, ranks = zip(*sorted(points))
        ax.plot(blocks, ranks, marker="o", label=name)
    ax.set_xlabel("block")
    ax.set_ylabel("rank / full rank (dense = 1)")
    ax.set_title(f"rank allocation, {result.params:,} parameters ({result.source_params:,} dense)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=float, default=0.4, help="fraction of block-linear weights kept")
    parser.add_argument("--out", type=Path, help="compressed model (default: a temporary file)")
    parser.add_argument("--plot", type=Path, default=Path("ranks.png"), help="rank chart (needs matplotlib)")
    parser.add_argument("--calib-count", type=int, default=256, help="calibration images used")
    parser.add_argument("--limit", type=int, default=1000, help="test images evaluated")
    parser.add_argument("--threads", type=int, default=0, help="threads (0 = all cores)")
    args = parser.parse_args()

    dense_dir = REPO / "models" / "fmnist-deit-tiny"
    calib = REPO / "data" / "fmnist-calib.safetensors"
    test = REPO / "data" / "fmnist-test.safetensors"
    out = args.out or Path(tempfile.mkdtemp(prefix="factorvit-example-")) / f"fmnist-deit-tiny-k{args.keep}.fvit"

    print(f"compressing {dense_dir.name} at keep {args.keep} ...")
    result = factorvit.compress(
        dense_dir, calib, keep=args.keep, calib_count=args.calib_count, threads=args.threads, output=out, progress=True
    )
    print(f"wrote {result.output} ({result.file_bytes / 2**20:.2f} MiB) in {result.seconds:.1f} s")

    dense = factorvit.Model.open(dense_dir)
    small = result.model()
    metrics = {
        "dense": factorvit.evaluate(dense, test, limit=args.limit, threads=args.threads),
        "compressed": factorvit.evaluate(small, test, limit=args.limit, reference=dense, threads=args.threads),
    }
    images = factorvit.load_safetensors(test)["images"].astype(np.uint8)[:256, ..., None]
    x = factorvit.preprocess(images, dense)
    print(f"\n{'model':<11} {'params':>10} {'weights':>10} {'top-1':>7} {'agreement':>9} {'KL':>9} {'ms/image':>9}")
    for name, model in (("dense", dense), ("compressed", small)):
        m = metrics[name]
        agreement = f"{100 * m['agreement']:.2f}%" if "agreement" in m else "-"
        kl = f"{m['kl']:.2e}" if "kl" in m else "-"
        print(
            f"{name:<11} {model.params:>10,} {model.weight_bytes / 2**20:>8.2f}Mi {100 * m['top1']:>6.2f}% "
            f"{agreement:>9} {kl:>9} {ms_per_image(model, x, args.threads):>9.3f}"
        )
    factored = sum(layer["kind"] != "dense" for layer in result.layers)
    print(f"\n{factored} of {len(result.layers)} block linears factored; report: {result.report_path}")
    if plot_ranks(result, args.plot):
        print(f"rank allocation: {args.plot}")
    else:
        print("(matplotlib is not installed: no rank chart)")


if __name__ == "__main__":
    main()
