"""Preprocessing, compression of the bundled model and evaluation."""

import json

import numpy as np
import pytest

import factorvit
from conftest import BUNDLED_MODEL, CALIB, REPO, TEST_DATA, TOLERANCE


def test_preprocess_paths_and_arrays_agree(bundled_model):
    png = REPO / "examples" / "images" / "fmnist-test-0000-ankle-boot.png"
    images = factorvit.load_safetensors(TEST_DATA)["images"].astype(np.uint8)
    from_path = factorvit.preprocess(png, bundled_model)
    from_array = factorvit.preprocess(images[0], bundled_model)
    np.testing.assert_array_equal(from_path, from_array)
    # The model's transform of 28x28 grey images is ToTensor + Normalize(0.286, 0.353).
    want = ((images[:3].astype(np.float32) / 255 - np.float32(0.286)) / np.float32(0.353))[:, None]
    got = factorvit.preprocess(list(images[:3]), bundled_model)
    assert got.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Colour and differently sized images are converted and resized.
    rgb = np.repeat(images[1][..., None], 3, axis=2)
    np.testing.assert_allclose(factorvit.preprocess(rgb, bundled_model), got[1:2], atol=1e-6)
    assert factorvit.preprocess(np.zeros((56, 40), np.uint8), bundled_model).shape == (1, 1, 28, 28)
    assert factorvit.preprocess([png, str(png)], BUNDLED_MODEL).shape == (2, 1, 28, 28)


def test_evaluate_matches_the_cli_fields(bundled_model):
    m = factorvit.evaluate(bundled_model, TEST_DATA, limit=200, reference=bundled_model)
    assert m["n"] == 200
    assert set(m) == {"n", "top1", "top5", "agreement", "kl"}
    assert m["agreement"] == 1.0 and m["kl"] < 1e-9 and m["top1"] > 0.8
    # In-memory pixels and labels give the same numbers.
    data = factorvit.load_safetensors(TEST_DATA)
    x = factorvit.preprocess(data["images"].astype(np.uint8)[:200, ..., None], bundled_model)
    same = factorvit.evaluate(bundled_model, x, labels=data["labels"][:200])
    assert same["top1"] == m["top1"] and same["top5"] == m["top5"]


def test_compress_keep_04_agrees_with_dense(bundled_model, tmp_path):
    events = []
    result = factorvit.compress(
        BUNDLED_MODEL,
        CALIB,
        keep=0.4,
        calib_count=40,
        output=tmp_path / "k40.fvit",
        progress=lambda phase, done, total: events.append((phase, done, total)),
    )
    assert result.output == tmp_path / "k40.fvit" and result.output.exists()
    assert result.report_path.exists()
    assert json.loads(result.report_path.read_text())["budget_params"] == result.budget_params
    assert result.params < result.source_params
    assert result.file_bytes == result.output.stat().st_size
    assert len(result.layers) == 48 and any(layer["rank"] > 0 for layer in result.layers)
    assert "blocks.0.attn.qkv" in result.ranks and "kind" in result.table
    phases = {e[0] for e in events}
    assert phases and all(done <= total for _, done, total in events)

    compressed = result.model()
    assert compressed.params == result.params
    kinds = {layer["kind"] for layer in compressed.layers}
    assert "low_rank" in kinds or "low_rank_sparse" in kinds
    m = factorvit.evaluate(compressed, TEST_DATA, limit=300, reference=bundled_model)
    assert m["agreement"] >= 0.98, m
    # Runs like the dense model on the same inputs.
    x = factorvit.preprocess(factorvit.load_safetensors(TEST_DATA)["images"].astype(np.uint8)[:8, ..., None], compressed)
    dense = bundled_model.session(threads=1, batch=8).run(x)["logits"]
    small = compressed.session(threads=1, batch=8).run(x)["logits"]
    assert small.shape == dense.shape and np.all(np.isfinite(small))


def test_compress_from_an_array_with_a_byte_budget(bundled_model, tmp_path):
    data = factorvit.load_safetensors(CALIB)
    x = factorvit.preprocess(data["images"].astype(np.uint8)[:24, ..., None], bundled_model)
    budget = bundled_model.weight_bytes // 2
    result = factorvit.compress(
        BUNDLED_MODEL, x, max_bytes=budget, dtype="f16", calib_count=24, output=tmp_path / "half.fvit"
    )
    assert result.dtype == "F16" and result.weight_bytes <= budget
    assert factorvit.Model.open(result.output).weight_bytes == result.weight_bytes


def test_save_and_load_pixel_values(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    factorvit.save_pixel_values(tmp_path / "x.safetensors", x)
    back = factorvit.load_safetensors(tmp_path / "x.safetensors")["pixel_values"]
    np.testing.assert_array_equal(back, x)
    assert TOLERANCE > 0


def test_a_raising_progress_callback_is_raised_after_the_job(tmp_path):
    calls = []

    def progress(phase, done, total):
        calls.append(phase)
        raise KeyError("stop drawing")

    with pytest.raises(KeyError, match="stop drawing"):
        factorvit.compress(BUNDLED_MODEL, CALIB, keep=0.9, calib_count=8, output=tmp_path / "p.fvit", progress=progress)
    assert len(calls) == 1  # not called again after it raised
