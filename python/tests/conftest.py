"""Shared paths and helpers of the factorvit Python tests (run from anywhere)."""

from pathlib import Path

import numpy as np
import pytest

import factorvit

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
BUNDLED_MODEL = REPO / "models" / "fmnist-deit-tiny"
CALIB = REPO / "data" / "fmnist-calib.safetensors"
TEST_DATA = REPO / "data" / "fmnist-test.safetensors"
TINY_FVIT = REPO / "runtime" / "tests" / "data" / "tiny.fvit"

# Checkpoint fixtures with reference inputs and outputs (timm and transformers layouts).
MODEL_FIXTURES = [
    "timm-vit-micro",
    "timm-deit-distilled-micro",
    "timm-vit-avgpool-layerscale-micro",
    "hf-vit-micro",
    "hf-deit-distilled-micro",
    "hf-dinov2-micro",
]

# The project's contract against the PyTorch references (max-abs).
TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def bundled_model() -> factorvit.Model:
    """The bundled Fashion-MNIST DeiT-tiny (checkpoint directory, converted in memory)."""
    return factorvit.Model.open(BUNDLED_MODEL)


@pytest.fixture(scope="session")
def tiny() -> factorvit.Model:
    """The runtime's tiny test model (a .fvit file, memory-mapped)."""
    return factorvit.Model.open(TINY_FVIT)


def tiny_input(model: factorvit.Model, n: int, seed: int = 0) -> np.ndarray:
    """`n` random normalised images for `model`."""
    c, h, w = model.preprocess["input_size"]
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
