#!/usr/bin/env python3
"""Build the bundled Fashion-MNIST subsets under data/ from the idx files.

Usage (from the repository root):
    python3 scripts/make_fmnist_bundle.py [--src /usr/share/datasets/fashion-mnist] [--out data]

Source: the Debian package `dataset-fashion-mnist` (idx files, gzipped). Needs numpy and
safetensors. Output (uint8 `images` [N, 28, 28], uint8 `labels` [N], metadata with the class
names, the source files and the exact indices taken):
    data/fmnist-calib.safetensors  512 train images, a seeded sample (numpy default_rng(0),
                                   choice(60000, 512, replace=False), sorted)
    data/fmnist-test.safetensors   the first 1000 test (t10k) images
The output is deterministic: re-running it reproduces the files byte for byte.
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np
from safetensors.numpy import load_file

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CALIB_COUNT = 512
CALIB_SEED = 0
TEST_COUNT = 1000


def read_idx(path):
    """Reads an idx file (gzipped or not) into a numpy uint8 array, checking the header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, rank = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    dims = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch")
    return body.reshape(dims)


def find(src, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(src, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(os.path.join(src, stem + "[.gz]"))


def save_safetensors(path, tensors, metadata):
    """Writes a safetensors file with sorted header keys, so the bytes are reproducible (the
    safetensors package orders metadata by hash). Checked by reading it back."""
    header = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(tensors):
        array = tensors[name]
        assert array.dtype == np.uint8
        header[name] = {"dtype": "U8", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
    back = load_file(path)
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)


def save(path, images, labels, split, source_files, indices_desc, indices):
    metadata = {
        "dataset": "Fashion-MNIST",
        "license": "MIT (Copyright 2017 Zalando SE)",
        "split": split,
        "source": " ".join(source_files),
        "indices": indices_desc,
        "indices_json": json.dumps([int(i) for i in indices]),
        "class_names": json.dumps(CLASS_NAMES),
        "preprocess": "pixel / 255, mean 0.286, std 0.353, 28x28, no resize",
    }
    save_safetensors(path, {"images": images, "labels": labels}, metadata)
    print(f"{path}: {len(images)} images, {os.path.getsize(path)} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default="data")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    train_images_path = find(args.src, "train-images-idx3-ubyte")
    train_labels_path = find(args.src, "train-labels-idx1-ubyte")
    train_images = read_idx(train_images_path)
    train_labels = read_idx(train_labels_path)
    calib = np.sort(np.random.default_rng(CALIB_SEED).choice(len(train_images), CALIB_COUNT, replace=False))
    save(os.path.join(args.out, "fmnist-calib.safetensors"), train_images[calib], train_labels[calib], "train",
         [os.path.basename(train_images_path), os.path.basename(train_labels_path)],
         f"numpy default_rng({CALIB_SEED}).choice({len(train_images)}, {CALIB_COUNT}, replace=False), sorted",
         calib)

    test_images_path = find(args.src, "t10k-images-idx3-ubyte")
    test_labels_path = find(args.src, "t10k-labels-idx1-ubyte")
    test_images = read_idx(test_images_path)
    test_labels = read_idx(test_labels_path)
    first = np.arange(TEST_COUNT)
    save(os.path.join(args.out, "fmnist-test.safetensors"), test_images[:TEST_COUNT], test_labels[:TEST_COUNT],
         "test", [os.path.basename(test_images_path), os.path.basename(test_labels_path)],
         f"the first {TEST_COUNT} (0..{TEST_COUNT - 1})", first)


if __name__ == "__main__":
    main()
