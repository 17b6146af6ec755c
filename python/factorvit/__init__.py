"""factorvit: run and compress Vision Transformers.

A zero-copy runtime for compact ``.fvit`` files (dense, low-rank and low-rank + sparse linear
layers) and the activation-aware low-rank compressor, from Python. numpy only.

>>> import factorvit, numpy as np
>>> model = factorvit.Model.open("models/fmnist-deit-tiny")        # .fvit file or checkpoint dir
>>> session = model.session(threads=0, batch=8)
>>> x = factorvit.preprocess(["examples/images/fmnist-test-0000-ankle-boot.png"], model)
>>> session.run(x)["logits"].argmax(1)                             # doctest: +SKIP
array([9])
>>> result = factorvit.compress("models/fmnist-deit-tiny", "data/fmnist-calib.safetensors",
...                             keep=0.4, output="k40.fvit")        # doctest: +SKIP
>>> factorvit.evaluate(result.model(), "data/fmnist-test.safetensors",
...                    reference=model)                             # doctest: +SKIP
{'n': 512, 'top1': ..., 'agreement': ..., 'kl': ...}

Errors raise :class:`FactorvitError` subclasses (see :mod:`factorvit._errors`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._errors import (
    BudgetError,
    ChecksumError,
    CompressError,
    DataError,
    DtypeError,
    FactorvitError,
    FormatError,
    InputError,
    IoError,
    LayoutError,
    MemoryLimitError,
    NonFiniteError,
    ShapeError,
)
from ._native import Model, Session

__version__ = _native.__version__

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[PathLike, np.ndarray]
ProgressCallback = Callable[[str, int, int], Any]

__all__ = [
    "Model",
    "Session",
    "CompressResult",
    "preprocess",
    "compress",
    "evaluate",
    "load_safetensors",
    "save_pixel_values",
    "FactorvitError",
    "FormatError",
    "ChecksumError",
    "IoError",
    "InputError",
    "ShapeError",
    "DtypeError",
    "LayoutError",
    "NonFiniteError",
    "MemoryLimitError",
    "DataError",
    "CompressError",
    "BudgetError",
]


def _as_model(model: Union[Model, PathLike]) -> Model:
    """``model`` itself, or the model opened from a path."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return Model.open(model)
    raise InputError(f"expected a factorvit.Model or a path, got {type(model).__name__}")


def preprocess(images: Union[ImageLike, Sequence[ImageLike]], model: Union[Model, PathLike]) -> np.ndarray:
    """Applies the model's own eval transform to images: channel conversion, resize (the
    model's interpolation), center crop (its ``crop_pct``) and normalisation (its mean and
    std), exactly as the compressor's data loader (and timm's eval transform) does.

    ``images``: one image or a sequence of them; an image is a path to a PNG or JPEG file, or a
    uint8 array ``(H, W)`` (grey) or ``(H, W, C)`` with C in 1..4; a uint8 array
    ``(N, H, W, C)`` is N images. ``model``: a :class:`Model` or a path to open.

    Returns a C-contiguous float32 array ``(N, C, H, W)`` ready for :meth:`Session.run`.
    Raises :class:`DataError` for an unreadable image, :class:`DtypeError` /
    :class:`ShapeError` for arrays that are not uint8 images.
    """
    if isinstance(images, (str, os.PathLike)):
        items: List[Any] = [images]
    elif isinstance(images, np.ndarray):
        items = list(images) if images.ndim == 4 else [images]
    else:
        items = list(images)
    return _native._preprocess(items, _as_model(model))


def load_safetensors(path: PathLike) -> Dict[str, np.ndarray]:
    """Reads every tensor of a safetensors file: F64 as float64 arrays, the other floats (F32, F16, BF16) as float32 arrays,
    integers and booleans as int64 arrays. Raises :class:`FormatError` for a malformed file."""
    return _native.load_safetensors(path)


def save_pixel_values(path: PathLike, pixel_values: np.ndarray) -> None:
    """Writes a float32 array ``(N, C, H, W)`` (finite, C-contiguous) as a safetensors file
    holding ``pixel_values``: a calibration or evaluation file for the CLI."""
    _native._save_pixel_values(path, pixel_values)


def _print_progress() -> ProgressCallback:
    """A progress callback that draws one line per phase on stderr."""

    def show(phase: str, done: int, total: int) -> None:
        sys.stderr.write(f"\r{phase}: {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


@dataclass
class CompressResult:
    """What :func:`compress` wrote.

    Attributes: ``output`` (the compressed ``.fvit`` file), ``report_path`` (its JSON report,
    ``OUTPUT.report.json``), ``report_files`` (HTML / SVG pictures when ``report=`` was given),
    ``report`` (the JSON report as a dict), ``layers`` (the report's per-layer rows: name,
    kind, rank, nnz, params before / after, errors, ...), ``table`` (the report as the CLI
    prints it), ``budget_params`` (the budget in block-linear parameters), ``dtype`` (storage
    dtype), ``source_params`` / ``params`` (parameters before / after), ``weight_bytes`` (of the
    output, read once per inference), ``file_bytes`` and ``seconds`` (wall time).
    """

    output: Path
    report_path: Path
    report_files: List[Path]
    report: Dict[str, Any]
    table: str
    budget_params: int
    dtype: str
    source_params: int
    params: int
    weight_bytes: int
    file_bytes: int
    seconds: float
    layers: List[Dict[str, Any]] = field(default_factory=list)

    def model(self) -> Model:
        """Opens the compressed model."""
        return Model.open(self.output)

    @property
    def ranks(self) -> Dict[str, int]:
        """The rank of every layer by name (0 for layers kept dense)."""
        return {layer["name"]: layer["rank"] for layer in self.layers}


def compress(
    model_dir: PathLike,
    calib: Union[PathLike, np.ndarray],
    *,
    keep: Optional[float] = None,
    max_params: Optional[int] = None,
    max_bytes: Optional[int] = None,
    dtype: Optional[str] = None,
    progress: Union[None, bool, ProgressCallback] = None,
    output: Optional[PathLike] = None,
    calib_count: int = 256,
    crops_per_image: int = 0,
    image_size: Optional[int] = None,
    seed: int = 0,
    threads: int = 0,
    report: Optional[PathLike] = None,
) -> CompressResult:
    """Compresses a model, as ``factorvit compress`` does (same method and defaults).

    ``model_dir``: a timm / Hugging Face checkpoint directory or a ``.fvit`` file.
    ``calib``: calibration images: an image folder, a safetensors file with ``pixel_values``,
    a Fashion-MNIST idx folder, or a float32 array ``(N, C, H, W)`` already preprocessed (see
    :func:`preprocess`). Exactly one budget: ``keep`` (fraction of the block-linear weights,
    in (0, 1]), ``max_params`` (total parameters of the output) or ``max_bytes`` (bytes of its
    weight tensors). ``dtype``: storage dtype ``"f32"``, ``"f16"`` or ``"bf16"`` (default: that
    of the source's weights). ``progress``: ``True`` draws progress on stderr; a callable is
    called as ``progress(phase, done, total)`` (from the compressing thread; if it raises, it
    is not called again and its exception is raised when the job ends). ``output``: the
    ``.fvit`` file to write (default: ``compressed.fvit`` in a new temporary directory);
    its JSON report goes to ``OUTPUT.report.json``. ``calib_count``: calibration images used (a
    seeded random subset); ``crops_per_image``: random crops per photo (0 = the eval
    transform); ``image_size``: input side to compress for; ``seed``; ``threads`` (0 = all
    cores; sets the process's thread pool once); ``report``: ``FILE.html`` or ``FILE.svg``
    pictures of the run.

    The GIL is released while the job runs. Raises :class:`BudgetError`, :class:`DataError`,
    :class:`FormatError`, :class:`IoError` or :class:`CompressError`.
    """
    if output is None:
        output = Path(tempfile.mkdtemp(prefix="factorvit-")) / "compressed.fvit"
    callback: Optional[ProgressCallback]
    if progress is True:
        callback = _print_progress()
    elif progress is None or progress is False:
        callback = None
    elif callable(progress):
        callback = progress
    else:
        raise InputError("progress must be None, True or a callable(phase, done, total)")
    with tempfile.TemporaryDirectory(prefix="factorvit-calib-") as tmp:
        if isinstance(calib, np.ndarray):
            calib_path: PathLike = Path(tmp) / "calib.safetensors"
            _native._save_pixel_values(calib_path, calib)
        else:
            calib_path = calib
        out = _native._compress(
            model_dir,
            calib_path,
            output,
            keep=keep,
            max_params=max_params,
            max_bytes=max_bytes,
            dtype=dtype,
            progress=callback,
            calib_count=calib_count,
            crops_per_image=crops_per_image,
            image_size=image_size,
            seed=seed,
            threads=threads,
            report=report,
        )
    report_dict = json.loads(out["report_json"])
    return CompressResult(
        output=Path(out["output"]),
        report_path=Path(out["report_path"]),
        report_files=[Path(p) for p in out["report_files"]],
        report=report_dict,
        table=out["table"],
        budget_params=out["budget_params"],
        dtype=out["dtype"],
        source_params=out["source_params"],
        params=out["params"],
        weight_bytes=out["weight_bytes"],
        file_bytes=out["file_bytes"],
        seconds=out["seconds"],
        layers=list(report_dict.get("layers", [])),
    )


def evaluate(
    model: Union[Model, PathLike],
    data: Union[PathLike, np.ndarray],
    *,
    reference: Union[None, Model, PathLike] = None,
    labels: Optional[np.ndarray] = None,
    limit: Optional[int] = None,
    split: str = "test",
    batch: int = 32,
    threads: int = 0,
) -> Dict[str, Any]:
    """Evaluates a model, as ``factorvit eval --json`` does: returns a dict with ``n`` and,
    where they apply, ``top1`` / ``top5`` (with labels), ``agreement`` and ``kl`` (classifiers
    against ``reference``), ``token_cosine`` and ``pooled_cosine`` (backbones against
    ``reference``), and for backbones on at least 3 images nearest-neighbour retrieval
    agreement: ``knn_top1_agreement``, ``knn_top5_overlap`` (at least 7 images) and, with
    ``labels`` grouping the images, ``knn_top1_agreement_other_labels`` /
    ``knn_top5_overlap_other_labels`` (neighbours among images of another label) and
    ``knn_top1_label_agreement_other_labels`` (the label of that neighbour).

    ``model`` / ``reference``: a :class:`Model` or a path. ``data``: an image folder (one
    subfolder per class), a safetensors file with ``pixel_values`` (+ ``labels``), a
    Fashion-MNIST idx folder (``split``), or a float32 array ``(N, C, H, W)`` (with optional
    integer ``labels``). ``limit``: the first N images. The GIL is released while it runs.
    Raises :class:`DataError` (unloadable data, labels that are not class indices),
    :class:`InputError` (a reference with other outputs) and the input errors of
    :meth:`Session.run`.
    """
    m = _as_model(model)
    r = None if reference is None else _as_model(reference)
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    text = _native._evaluate(m, data, labels=labels, reference=r, limit=limit, split=split, batch=batch, threads=threads)
    return json.loads(text)
