"""The exceptions of factorvit.

Every failure of the package raises a subclass of :class:`FactorvitError` carrying the
runtime's or the compressor's message. The subclasses also derive from the matching built-in
exception (``ValueError``, ``TypeError``, ``OSError``, ``MemoryError``), so generic handlers
keep working.
"""


class FactorvitError(Exception):
    """Base class of every factorvit error (also raised for internal errors)."""


class FormatError(FactorvitError, ValueError):
    """The file or checkpoint is not a valid model (malformed container, bad config, missing or
    misshapen tensors, truncated file...)."""


class ChecksumError(FormatError):
    """A tensor's bytes do not match the checksum stored in the file: the file is corrupt."""


class IoError(FactorvitError, OSError):
    """A file cannot be read or written."""


class InputError(FactorvitError, ValueError):
    """A bad argument or input (base class of the input errors below)."""


class ShapeError(InputError):
    """An array does not have the expected shape (e.g. not ``(N, C, H, W)`` of the session's
    size)."""


class DtypeError(InputError, TypeError):
    """An array has the wrong dtype (e.g. float64 instead of float32), or is not an array."""


class LayoutError(InputError):
    """An array is not C-contiguous (or not aligned): use ``numpy.ascontiguousarray``."""


class NonFiniteError(InputError):
    """An input holds NaN or infinity."""


class MemoryLimitError(FactorvitError, MemoryError):
    """A session would allocate more than its memory limit."""


class DataError(FactorvitError, ValueError):
    """Images or a dataset cannot be loaded (missing files, bad labels, undecodable images)."""


class CompressError(FactorvitError):
    """The compression failed."""


class BudgetError(CompressError, ValueError):
    """A compression budget that is missing, ambiguous or cannot be met."""


__all__ = [
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
