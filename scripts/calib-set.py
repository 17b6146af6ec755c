#!/usr/bin/env python3
"""Builds a small calibration set for DINOv2 (or any 224×224 ImageNet-normalised ViT) as one
safetensors file with `pixel_values` [N, 3, S, S] float32 (and, with --photo-index, `image_index`
[N] int64: the photo each crop was cut from).

Each photo is resized (shorter side S·256/224, bicubic), then `--crops-per-photo` random S×S
crops with random horizontal flips are taken, and normalised with the ImageNet mean/std (the
eval transform of the model's preprocessing). Grayscale photos are repeated over the three
channels. Seeded: the same arguments give the same file.

Sources:
  --source skimage15    the 15 photos scikit-image bundles besides the three evaluation photos
                        (chelsea, coffee, astronaut are never used): the small set of issue 16
  --source DIR          every image file in DIR (e.g. the 58 photos of scripts/dinov2-calib-photos.sh)
  --subset K/N          only the photos whose index in the sorted list is K mod N: N disjoint
                        calibration sets of the same size
  --max-photos M        at most M photos (after --subset), the first M in a seeded shuffle

    python3 scripts/calib-set.py --source skimage15 --crops-per-photo 4 -o calib60.safetensors
"""
import argparse
import os
import sys

import numpy as np

SKIMAGE15 = [
    "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
    "camera.png", "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png", "page.png",
    "text.png", "horse.png", "cell.png",
]
EVALUATION = ("chelsea", "coffee", "astronaut")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def photo_paths(source):
    if source == "skimage15":
        import skimage

        data = os.path.join(os.path.dirname(skimage.__file__), "data")
        return [os.path.join(data, f) for f in SKIMAGE15]
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
    return sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(exts))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="skimage15")
    p.add_argument("--crops-per-photo", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--subset", default=None, help="K/N: photos with index = K mod N")
    p.add_argument("--max-photos", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photo-index", action="store_true",
                   help="also write `image_index` (the photo of each crop): factorvit then validates on "
                        "held-out photos; measured worse than crop-level validation on 60 crops of 15 photos "
                        "(docs/RESULTS.md), hence off by default")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()

    from PIL import Image
    from safetensors.numpy import save_file

    paths = photo_paths(a.source)
    if any(e in os.path.basename(x).lower() for x in paths for e in EVALUATION):
        sys.exit("an evaluation photo (chelsea, coffee, astronaut) is among the calibration photos")
    if a.subset:
        k, n = (int(v) for v in a.subset.split("/"))
        paths = [x for i, x in enumerate(paths) if i % n == k]
    rng = np.random.default_rng(a.seed)
    if a.max_photos is not None and a.max_photos < len(paths):
        paths = [paths[i] for i in sorted(rng.permutation(len(paths))[: a.max_photos])]
    if not paths:
        sys.exit("no photos")

    resize = round(a.size * 256 / 224)
    crops, photo = [], []
    for index, path in enumerate(paths):
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
            photo.append(index)
    pixels = np.ascontiguousarray(np.stack(crops), dtype=np.float32)
    tensors = {"pixel_values": pixels}
    if a.photo_index:
        # The photo each crop comes from: factorvit keeps a photo's crops on one side of its
        # validation split (held-out photos, not held-out crops of photos it fits on).
        tensors["image_index"] = np.asarray(photo, dtype=np.int64)
    save_file(tensors, a.output)
    print(f"{a.output}: {len(paths)} photos × {a.crops_per_photo} crops = {len(crops)} samples of 3×{a.size}×{a.size}")


if __name__ == "__main__":
    main()
