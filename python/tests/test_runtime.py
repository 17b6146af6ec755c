"""Opening and running models: the fixtures' PyTorch references within 1e-4."""

import numpy as np
import pytest

import factorvit
from conftest import FIXTURES, MODEL_FIXTURES, TINY_FVIT, TOLERANCE, tiny_input


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_fixture_matches_its_reference(name):
    model = factorvit.Model.open(FIXTURES / name)
    pixels = factorvit.load_safetensors(FIXTURES / name / "input.safetensors")["pixel_values"]
    expected = factorvit.load_safetensors(FIXTURES / name / "expected.safetensors")
    n, _, h, w = pixels.shape
    out = model.session(threads=1, batch=n, image_size=(h, w)).run(pixels)
    compared = 0
    for key in ("logits", "last_hidden_state", "pooler_output"):
        if key in expected:
            assert out[key].dtype == np.float32
            assert out[key].shape == expected[key].shape, key
            diff = float(np.max(np.abs(out[key] - expected[key])))
            assert diff <= TOLERANCE, f"{name}: {key} differs by {diff:e}"
            compared += 1
    assert compared > 0


def test_fvit_file_and_bytes_give_the_same_outputs(tiny):
    x = tiny_input(tiny, 3)
    a = tiny.session(threads=1, batch=3).run(x)
    b = factorvit.Model.from_bytes(TINY_FVIT.read_bytes()).session(threads=1, batch=3).run(x)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_batches_larger_than_the_session_are_split(tiny):
    x = tiny_input(tiny, 5, seed=3)
    whole = tiny.session(threads=1, batch=5).run(x)
    split = tiny.session(threads=1, batch=2).run(x)
    for key in whole:
        np.testing.assert_allclose(split[key], whole[key], atol=1e-5)
    one = tiny.session(threads=1).run(x[2:3])
    np.testing.assert_allclose(one["pooler_output"][0], whole["pooler_output"][2], atol=1e-5)


def test_config_layers_and_memory(bundled_model):
    cfg = bundled_model.config
    assert cfg["embed_dim"] == 192 and cfg["depth"] == 12 and cfg["num_classes"] == 10
    assert bundled_model.preprocess["input_size"] == [1, 28, 28]
    assert len(bundled_model.labels) == 10
    layers = bundled_model.layers
    assert layers[0]["name"] == "patch_embed"
    names = [layer["name"] for layer in layers]
    assert "blocks.0.attn.qkv" in names and "blocks.11.mlp.fc2" in names and "head" in names
    assert all(layer["kind"] == "dense" for layer in layers)
    qkv = next(layer for layer in layers if layer["name"] == "blocks.0.attn.qkv")
    assert (qkv["out_features"], qkv["in_features"]) == (576, 192)
    mem = bundled_model.memory(batch=4)
    assert mem["weight_bytes"] == bundled_model.weight_bytes == mem["bytes_read_per_inference"]
    assert mem["arena_bytes"] > bundled_model.memory(batch=1)["arena_bytes"] > 0
    session = bundled_model.session(threads=1, batch=4)
    assert session.memory()["arena_bytes"] > 0
    assert session.image_size == (28, 28) and session.batch == 4 and session.threads == 1
    assert session.model.config == cfg
    assert "Model(" in repr(bundled_model) and "Session(" in repr(session)


def test_bundled_model_reproduces_its_exact_logits(bundled_model):
    """The exact (float64) logits of the first 64 test images, from the raw uint8 images."""
    from conftest import TEST_DATA

    exact = factorvit.load_safetensors(FIXTURES / "fmnist-deit-tiny-f64" / "logits_first64.safetensors")["logits"]
    images = factorvit.load_safetensors(TEST_DATA)["images"].astype(np.uint8)[:64]
    x = factorvit.preprocess(images[..., None], bundled_model)
    assert x.shape == (64, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    out = bundled_model.session(threads=0, batch=32).run(x)["logits"]
    assert float(np.max(np.abs(out - exact))) <= TOLERANCE
