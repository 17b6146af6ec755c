#!/usr/bin/env python3
"""Linear-probe agreement of a compressed backbone (issue 16): what a user who trains a linear
classifier on the backbone's features loses when the backbone is compressed.

Takes a labelled image set (default: the bundled data/fmnist-test.safetensors, 1,000 Fashion-MNIST
test images, `images` uint8 [N, 28, 28] + `labels`), upscales every image to S×S (bicubic), repeats
it over 3 channels and normalises it with the ImageNet mean/std (the DINOv2 eval transform on a
28-pixel image); splits it into --train / --test images (a seeded permutation); extracts the
pooled features (`pooler_output`) of the dense model and of every --model with
`factorvit infer`; fits a multinomial logistic regression (numpy, full-batch Adam, --steps
steps, L2 --l2, features standardised with the training features' mean/std, seeded) and
reports

  dense_acc            probe fitted on dense train features, tested on dense test features
  compressed_acc       the same probe on the compressed model's test features
  agreement            fraction of test images where the two predictions are the same
  retrained_acc        a probe fitted on the compressed model's train features, tested on its
                       test features (what a user who re-fits the probe on the compressed model gets)
  recentred_acc        the dense probe's weights on the compressed test features standardised
                       with the compressed *train* features' mean/std (what re-estimating only
                       the feature statistics, without labels, recovers)

as one JSON object per model (--json) or a markdown table. Features are cached in --cache
(keyed by the model file's size/mtime and the set's arguments), so the dense model runs once.

    python3 scripts/linear-probe.py --dense ../shared/models/dinov2-small-imgfocus --model k05.fvit
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_images(path, size):
    from PIL import Image
    from safetensors.numpy import load_file

    t = load_file(path)
    if "images" not in t or "labels" not in t:
        sys.exit(f"{path}: expected `images` uint8 [N, H, W] and `labels` [N]")
    images, labels = t["images"], t["labels"].astype(np.int64)
    if images.ndim != 3 or images.dtype != np.uint8 or len(labels) != len(images):
        sys.exit(f"{path}: `images` must be uint8 [N, H, W] with one label each")
    return images, labels


def pixel_values(images, size):
    from PIL import Image

    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        up = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        out[i] = ((up[None, :, :] - MEAN[:, None, None]) / STD[:, None, None])
    return out


def features(binary, model, images, size, threads, chunk, cache, key):
    """`pooler_output` [N, D] of `model` on `images`, computed in chunks with `factorvit infer`."""
    from safetensors.numpy import load_file, save_file

    st = os.stat(model if os.path.isfile(model) else os.path.join(model, "model.safetensors"))
    tag = hashlib.sha256(f"{os.path.abspath(model)}|{st.st_size}|{st.st_mtime_ns}|{key}".encode()).hexdigest()[:16]
    cached = os.path.join(cache, f"features-{tag}.npy")
    if os.path.exists(cached):
        return np.load(cached)
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(images), chunk):
            x, y = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "y.safetensors")
            save_file({"pixel_values": pixel_values(images[start : start + chunk], size)}, x)
            cmd = [binary, "--quiet", "infer", "--model", model, "--input", x, "--output", y,
                   "--threads", str(threads), "--batch-size", "8"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
            out = load_file(y)
            if "pooler_output" not in out:
                sys.exit(f"{model} is not a backbone (no pooler_output)")
            parts.append(out["pooler_output"].astype(np.float64))
            print(f"{model}: {start + len(parts[-1])}/{len(images)} images", file=sys.stderr)
    f = np.concatenate(parts)
    os.makedirs(cache, exist_ok=True)
    np.save(cached, f)
    return f


class Probe:
    """Multinomial logistic regression on standardised features."""

    def __init__(self, x, y, classes, steps, lr, l2, seed):
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.std
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, 0.01, (z.shape[1], classes))
        b = np.zeros(classes)
        onehot = np.eye(classes)[y]
        m = [np.zeros_like(w), np.zeros_like(b)]
        v = [np.zeros_like(w), np.zeros_like(b)]
        for t in range(1, steps + 1):
            logits = z @ w + b
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            g = (p - onehot) / len(z)
            grads = [z.T @ g + l2 * w, g.sum(0)]
            for i, (param, grad) in enumerate(zip((w, b), grads)):
                m[i] = 0.9 * m[i] + 0.1 * grad
                v[i] = 0.999 * v[i] + 0.001 * grad * grad
                param -= lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
        self.w, self.b = w, b

    def predict(self, x, mean=None, std=None):
        mean = self.mean if mean is None else mean
        std = self.std if std is None else std
        return np.argmax(((x - mean) / std) @ self.w + self.b, axis=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", required=True, help="the dense backbone (checkpoint directory or .fvit)")
    p.add_argument("--model", action="append", required=True, help="a compressed backbone (repeatable)")
    p.add_argument("--data", default="data/fmnist-test.safetensors")
    p.add_argument("--train", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--chunk", type=int, default=100, help="images per factorvit infer call")
    p.add_argument("--bin", default=os.environ.get("FACTORVIT", "target/release/factorvit"))
    p.add_argument("--cache", default="target/probe-cache")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.train < 1 or a.test < 1 or a.size < 1 or a.steps < 1 or a.chunk < 1:
        sys.exit("--train, --test, --size, --steps and --chunk must be positive")

    images, labels = load_images(a.data, a.size)
    if a.train + a.test > len(images):
        sys.exit(f"{a.data} has {len(images)} images, fewer than --train + --test = {a.train + a.test}")
    order = np.random.default_rng(a.seed).permutation(len(images))[: a.train + a.test]
    images, labels = images[order], labels[order]
    tr, te = slice(0, a.train), slice(a.train, a.train + a.test)
    classes = int(labels.max()) + 1
    key = f"{os.path.abspath(a.data)}|{a.size}|{a.seed}|{a.train}|{a.test}"
    feats = lambda m: features(a.bin, m, images, a.size, a.threads, a.chunk, a.cache, key)
    fit = lambda x: Probe(x[tr], labels[tr], classes, a.steps, a.lr, a.l2, a.seed)

    dense = feats(a.dense)
    probe = fit(dense)
    dense_pred = probe.predict(dense[te])
    dense_acc = float((dense_pred == labels[te]).mean())
    if not a.json:
        print(f"Linear probe on {os.path.basename(a.data)}: {a.train} train / {a.test} test images at {a.size}x{a.size}, "
              f"{a.steps} Adam steps; dense test accuracy {100 * dense_acc:.2f}%\n")
        print("| model | dense probe on dense % | dense probe on compressed % | agreement % | "
              "re-fitted probe on compressed % | dense probe, re-centred compressed % |")
        print("|---|---|---|---|---|---|")
    for m in a.model:
        comp = feats(m)
        comp_pred = probe.predict(comp[te])
        refit_pred = fit(comp).predict(comp[te])
        recentred_pred = probe.predict(comp[te], comp[tr].mean(0), comp[tr].std(0) + 1e-6)
        r = {
            "model": m,
            "train": a.train,
            "test": a.test,
            "dense_acc": dense_acc,
            "compressed_acc": float((comp_pred == labels[te]).mean()),
            "agreement": float((comp_pred == dense_pred).mean()),
            "retrained_acc": float((refit_pred == labels[te]).mean()),
            "recentred_acc": float((recentred_pred == labels[te]).mean()),
        }
        if a.json:
            print(json.dumps(r))
        else:
            print(f"| {os.path.basename(m)} | {100 * r['dense_acc']:.2f} | {100 * r['compressed_acc']:.2f} | "
                  f"{100 * r['agreement']:.2f} | {100 * r['retrained_acc']:.2f} | {100 * r['recentred_acc']:.2f} |")


if __name__ == "__main__":
    main()
