#!/usr/bin/env python3
"""Builds the held-out crop set of the kNN retrieval evaluation (`factorvit eval` reports
knn_top1_agreement / knn_top5_overlap on it) as one safetensors file with `pixel_values`
[N, 3, S, S] float32 and `labels` [N] int64 = the index of the crop's photo (sorted file
names), so that `eval` also reports the neighbours among crops of *other* photos
(knn_*_other_labels).

The crops are made as scripts/calib-set.py makes calibration crops (shorter side S·256/224
bicubic, random S×S crops with random horizontal flips, ImageNet mean/std), with another seed by
default. Seeded: the same arguments give the same file.

Photos never mix with calibration: the script refuses a photo that is one of calib-set.py's
skimage15 calibration photos (by name), or whose file bytes equal those of any image in an
--exclude folder (repeatable; e.g. the folder of scripts/dinov2-calib-photos.sh).

    bash scripts/retrieval-photos.sh target/retrieval-photos
    python3 scripts/retrieval-set.py --source target/retrieval-photos --crops-per-photo 16 \\
        --exclude target/dinov2-calib -o retrieval96.safetensors
"""
import argparse
import hashlib
import os
import sys

import numpy as np

# calib-set.py's skimage15 photos (kept in step with its SKIMAGE15).
CALIBRATION_NAMES = {
    "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
    "camera.png", "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png", "page.png",
    "text.png", "horse.png", "cell.png",
}
EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def images_in(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(EXTS))


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="folder of held-out photos")
    p.add_argument("--crops-per-photo", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--exclude", action="append", default=[], help="calibration folder (repeatable)")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    if a.crops_per_photo < 1 or a.size < 1:
        sys.exit("--crops-per-photo and --size must be positive")

    from PIL import Image
    from safetensors.numpy import save_file

    paths = images_in(a.source)
    if not paths:
        sys.exit(f"no photos in {a.source}")
    for path in paths:
        name = os.path.basename(path)
        if any(name == c or name.endswith("-" + c) for c in CALIBRATION_NAMES):
            sys.exit(f"{path} is a calibration photo of scripts/calib-set.py")
    excluded = {}
    for folder in a.exclude:
        if not os.path.isdir(folder):
            sys.exit(f"--exclude {folder}: not a folder")
        for path in images_in(folder):
            excluded[digest(path)] = path
    for path in paths:
        if digest(path) in excluded:
            sys.exit(f"{path} is the calibration photo {excluded[digest(path)]}")

    rng = np.random.default_rng(a.seed)
    resize = round(a.size * 256 / 224)
    crops, labels = [], []
    for label, path in enumerate(paths):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(a.size, round(w * scale)), max(a.size, round(h * scale))), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        for _ in range(a.crops_per_photo):
            y = rng.integers(0, arr.shape[0] - a.size + 1)
            x = rng.integers(0, arr.shape[1] - a.size + 1)
            crop = arr[y : y + a.size, x : x + a.size]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(((crop - MEAN) / STD).transpose(2, 0, 1))
            labels.append(label)
    pixels = np.ascontiguousarray(np.stack(crops), dtype=np.float32)
    save_file({"pixel_values": pixels, "labels": np.array(labels, dtype=np.int64)}, a.output)
    names = ", ".join(os.path.basename(x) for x in paths)
    print(f"{a.output}: {len(paths)} photos ({names}) × {a.crops_per_photo} crops = {len(crops)} samples")


if __name__ == "__main__":
    main()
