"""Bad files and bad arrays raise typed factorvit errors (never crash the interpreter)."""

import numpy as np
import pytest

import factorvit
from conftest import BUNDLED_MODEL, TINY_FVIT, tiny_input


@pytest.fixture()
def session(tiny):
    return tiny.session(threads=1, batch=2)


def test_wrong_dtype(tiny, session):
    x = tiny_input(tiny, 1).astype(np.float64)
    with pytest.raises(factorvit.DtypeError, match="float32"):
        session.run(x)
    with pytest.raises(TypeError):  # also a TypeError
        session.run(x.astype(np.float16))
    with pytest.raises(factorvit.DtypeError):
        session.run([[1.0, 2.0]])
    with pytest.raises(factorvit.DtypeError):
        session.run(tiny_input(tiny, 1).astype(">f4"))


def test_wrong_shape(tiny, session):
    x = tiny_input(tiny, 1)
    for bad in (x[0], x[:, :2], x[:, :, :4], np.zeros((0, 3, 8, 8), np.float32), x.reshape(1, 3, 64)):
        with pytest.raises(factorvit.ShapeError):
            session.run(bad)
    with pytest.raises(ValueError):  # also a ValueError
        session.run(x[0])


def test_non_contiguous(tiny, session):
    x = np.asfortranarray(tiny_input(tiny, 2))
    assert not x.flags.c_contiguous
    with pytest.raises(factorvit.LayoutError, match="contiguous"):
        session.run(x)
    with pytest.raises(factorvit.LayoutError):
        session.run(tiny_input(tiny, 4)[::2])
    # The contiguous copy runs.
    session.run(np.ascontiguousarray(x))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite(tiny, session, value):
    x = tiny_input(tiny, 2)
    x[1, 0, 3, 3] = value
    with pytest.raises(factorvit.NonFiniteError, match="image 1"):
        session.run(x)


def test_truncated_and_garbage_files(tmp_path):
    data = TINY_FVIT.read_bytes()
    for cut in (0, 7, 8, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.fvit"
        path.write_bytes(data[:cut])
        with pytest.raises(factorvit.FormatError):
            factorvit.Model.open(path)
        with pytest.raises(factorvit.FormatError):
            factorvit.Model.from_bytes(data[:cut])
    with pytest.raises(factorvit.FormatError):
        factorvit.Model.from_bytes(b"\xff" * 64)


def test_corrupt_byte_is_a_checksum_or_format_error(tmp_path):
    data = bytearray(TINY_FVIT.read_bytes())
    data[-5] ^= 0x40  # inside the last tensor's bytes
    with pytest.raises(factorvit.FormatError):
        factorvit.Model.from_bytes(bytes(data))


def test_missing_file(tmp_path):
    with pytest.raises(factorvit.IoError):
        factorvit.Model.open(tmp_path / "absent.fvit")
    with pytest.raises(OSError):
        factorvit.Model.open(tmp_path / "absent.fvit")


def test_bad_session_options(tiny):
    with pytest.raises(factorvit.InputError):
        tiny.session(batch=0)
    with pytest.raises(factorvit.InputError):
        tiny.session(image_size=(9, 8))
    with pytest.raises(factorvit.InputError):
        tiny.session(threads=1000)
    with pytest.raises(factorvit.MemoryLimitError):
        tiny.session(threads=1, batch=64, image_size=(8192, 8192))


def test_bad_compress_arguments(tmp_path):
    from conftest import CALIB

    with pytest.raises(factorvit.BudgetError):
        factorvit.compress(BUNDLED_MODEL, CALIB, output=tmp_path / "a.fvit")
    with pytest.raises(factorvit.BudgetError):
        factorvit.compress(BUNDLED_MODEL, CALIB, keep=0.4, max_params=10, output=tmp_path / "a.fvit")
    with pytest.raises(factorvit.BudgetError):
        factorvit.compress(BUNDLED_MODEL, CALIB, keep=1.5, output=tmp_path / "a.fvit")
    with pytest.raises(factorvit.InputError):
        factorvit.compress(BUNDLED_MODEL, CALIB, keep=0.4, dtype="int4", output=tmp_path / "a.fvit")
    with pytest.raises(factorvit.DataError):
        factorvit.compress(BUNDLED_MODEL, tmp_path / "no-such-calib", keep=0.4, output=tmp_path / "a.fvit")
    bad = np.zeros((4, 1, 28, 28), np.float32)
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(factorvit.NonFiniteError):
        factorvit.compress(BUNDLED_MODEL, bad, keep=0.4, output=tmp_path / "a.fvit")
    assert not (tmp_path / "a.fvit").exists()


def test_bad_evaluation_data(bundled_model, tmp_path):
    x = np.zeros((3, 1, 28, 28), np.float32)
    with pytest.raises(factorvit.DataError, match="not a class"):
        factorvit.evaluate(bundled_model, x, labels=np.array([0, 1, 10]))
    with pytest.raises(factorvit.ShapeError):
        factorvit.evaluate(bundled_model, x, labels=np.array([0, 1]))
    with pytest.raises(factorvit.DataError):
        factorvit.evaluate(bundled_model, tmp_path / "absent")
    with pytest.raises(factorvit.DataError):
        factorvit.preprocess([tmp_path / "absent.png"], bundled_model)
    with pytest.raises(factorvit.DtypeError):
        factorvit.preprocess([np.zeros((28, 28), np.float32)], bundled_model)
