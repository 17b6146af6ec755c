"""Type stub of the factorvit package (the runtime and the compressor, from Python)."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._errors import (
    BudgetError as BudgetError,
    ChecksumError as ChecksumError,
    CompressError as CompressError,
    DataError as DataError,
    DtypeError as DtypeError,
    FactorvitError as FactorvitError,
    FormatError as FormatError,
    InputError as InputError,
    IoError as IoError,
    LayoutError as LayoutError,
    MemoryLimitError as MemoryLimitError,
    NonFiniteError as NonFiniteError,
    ShapeError as ShapeError,
)

__version__: str

PathLike = Union[str, os.PathLike[str]]
ImageLike = Union[PathLike, np.ndarray]
ProgressCallback = Callable[[str, int, int], Any]
ImageSize = Union[None, int, Tuple[int, int]]

class Model:
    """A model: architecture, preprocessing, labels and weights, shared by its sessions."""

    @staticmethod
    def open(path: PathLike) -> Model:
        """Opens a ``.fvit`` file (memory-mapped) or a timm / Hugging Face checkpoint directory
        (converted in memory). Raises ``IoError`` or ``FormatError``."""
    @staticmethod
    def from_bytes(data: Union[bytes, bytearray, memoryview]) -> Model:
        """Loads a model from the bytes of a ``.fvit`` file (copied). Raises ``FormatError``."""
    @property
    def config(self) -> Dict[str, Any]:
        """The architecture (``architecture``, ``image_size``, ``patch_size``, ``in_chans``,
        ``embed_dim``, ``depth``, ``num_heads``, ``mlp_hidden``, ``num_classes``, ...)."""
    @property
    def preprocess(self) -> Dict[str, Any]:
        """The eval preprocessing: ``input_size`` ``[C, H, W]``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``."""
    @property
    def labels(self) -> List[str]:
        """Class names (empty for backbones or files without labels)."""
    @property
    def params(self) -> int:
        """Total parameters."""
    @property
    def weight_bytes(self) -> int:
        """Bytes of weights held (read once per inference)."""
    @property
    def source(self) -> str:
        """The path the model came from, or ``<N bytes>``."""
    @property
    def layers(self) -> List[Dict[str, Any]]:
        """One dict per linear layer (patch embedding, block linears, heads): ``name``,
        ``kind`` (``dense`` / ``low_rank`` / ``low_rank_sparse``), ``out_features``,
        ``in_features``, ``rank``, ``nnz``, ``params``, ``dense_params``, ``weight_bytes``,
        ``macs_per_row``, ``dtype``."""
    def metadata(self, key: str) -> Optional[str]:
        """A metadata entry of the file (e.g. ``compression``), or ``None``."""
    def memory(self, threads: int = 1, batch: int = 1, image_size: ImageSize = None) -> Dict[str, int]:
        """``weight_bytes``, ``copied_weight_bytes``, ``arena_bytes`` (of a session with these
        options) and ``bytes_read_per_inference``."""
    def session(self, threads: int = 0, batch: int = 1, image_size: ImageSize = None) -> Session:
        """A session with every buffer preallocated (``threads``: 0 = one per core)."""

class Session:
    """A reusable inference context for one input size, batch limit and thread count."""

    def run(self, pixel_values: npt.NDArray[np.float32]) -> Dict[str, npt.NDArray[np.float32]]:
        """Runs a C-contiguous float32 ``(N, C, H, W)`` array (read in place, GIL released).
        Returns ``logits`` (classifiers), ``last_hidden_state`` and ``pooler_output``. Raises
        ``DtypeError``, ``ShapeError``, ``LayoutError``, ``NonFiniteError``."""
    def memory(self) -> Dict[str, int]:
        """``weight_bytes``, ``copied_weight_bytes``, ``arena_bytes``,
        ``bytes_read_per_inference``."""
    @property
    def model(self) -> Model:
        """The model this session runs."""
    @property
    def batch(self) -> int:
        """Largest number of images per forward pass."""
    @property
    def threads(self) -> int:
        """Worker threads."""
    @property
    def image_size(self) -> Tuple[int, int]:
        """Input ``(height, width)``."""

@dataclass
class CompressResult:
    """What :func:`compress` wrote."""

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
    layers: List[Dict[str, Any]] = ...
    def model(self) -> Model:
        """Opens the compressed model."""
    @property
    def ranks(self) -> Dict[str, int]:
        """Rank of every layer by name (0 = dense)."""

def preprocess(
    images: Union[ImageLike, Sequence[ImageLike]], model: Union[Model, PathLike]
) -> npt.NDArray[np.float32]:
    """The model's eval transform of image files or uint8 arrays: ``(N, C, H, W)`` float32."""

def compress(
    model_dir: PathLike,
    calib: Union[PathLike, npt.NDArray[np.float32]],
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
    """Compresses a model under one budget (exactly one of keep / max_params / max_bytes)."""

def evaluate(
    model: Union[Model, PathLike],
    data: Union[PathLike, npt.NDArray[np.float32]],
    *,
    reference: Union[None, Model, PathLike] = None,
    labels: Optional[npt.ArrayLike] = None,
    limit: Optional[int] = None,
    split: str = "test",
    batch: int = 32,
    threads: int = 0,
) -> Dict[str, Any]:
    """The fields of ``factorvit eval --json``: n, top1, top5, agreement, kl, token_cosine,
    pooled_cosine, knn_top1_agreement, knn_top5_overlap, knn_top1_agreement_other_labels,
    knn_top5_overlap_other_labels, knn_top1_label_agreement_other_labels (those that apply)."""

def load_safetensors(path: PathLike) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file (F64 as float64, other floats as float32, integers as int64)."""

def save_pixel_values(path: PathLike, pixel_values: npt.NDArray[np.float32]) -> None:
    """Writes ``pixel_values`` ``(N, C, H, W)`` as a safetensors file."""
