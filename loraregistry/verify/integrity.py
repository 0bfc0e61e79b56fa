"""Container errors from ``safetensors_io`` as integrity findings, one code per kind of defect."""

from __future__ import annotations

from ..errors import (
    CompressedFileError,
    GitLfsPointerError,
    HeaderTooLarge,
    HtmlPageError,
    InvalidSafetensorsError,
    JsonDocumentError,
    LoneSurrogateError,
    NumberOutOfRangeError,
    PickleCheckpointError,
    TextFileError,
    TooManyTensorsError,
    TooManyValuesError,
    TruncatedFileError,
)
from ..lazy_re import lazy
from ..safetensors_io import SafetensorsHeader
from .findings import Finding, finding

# (code name, error class, phrase of its message), first match wins; phrases are the reader's own wording.
_RULES: tuple[tuple[str, type, str], ...] = (
    ("pickle-checkpoint", PickleCheckpointError, ""),
    ("git-lfs-pointer", GitLfsPointerError, ""),
    ("html-page", HtmlPageError, ""),
    ("json-document", JsonDocumentError, ""),
    ("compressed-file", CompressedFileError, ""),
    ("text-file", TextFileError, ""),
    ("too-many-tensors", TooManyTensorsError, ""),
    ("too-many-values", TooManyValuesError, ""),
    ("number-out-of-range", NumberOutOfRangeError, ""),
    ("lone-surrogate", LoneSurrogateError, ""),
    ("header-over-cap", HeaderTooLarge, ""),
    ("empty-file", InvalidSafetensorsError, "empty file"),
    ("header-length-past-eof", TruncatedFileError, "past the end of the"),
    ("truncated-file", TruncatedFileError, ""),
    ("duplicate-key", InvalidSafetensorsError, "more than once"),
    ("metadata-not-strings", InvalidSafetensorsError, "metadata"),
    ("unknown-dtype", InvalidSafetensorsError, "unknown dtype"),
    ("shape-span-mismatch", InvalidSafetensorsError, "but data_offsets"),
    ("overlapping-offsets", InvalidSafetensorsError, "overlapping offsets"),
    ("gap-in-data", InvalidSafetensorsError, "a gap of"),
    ("trailing-bytes", InvalidSafetensorsError, "trailing bytes"),
    ("malformed-tensor-entry", InvalidSafetensorsError, "tensor '"),
    ("header-not-json", InvalidSafetensorsError, "json"),
    ("header-not-json", InvalidSafetensorsError, "utf-8"),
    ("header-not-json", InvalidSafetensorsError, "header length"),
)
_TENSOR_NAME = lazy(r"tensor '((?:[^'\\]|\\.)*)'")


def classify(error: InvalidSafetensorsError) -> str:
    """The code name for a container error (``invalid-container`` when no rule knows it)."""
    message = error.message.lower()
    for name, cls, phrase in _RULES:
        if isinstance(error, cls) and phrase in message:
            return name
    return "invalid-container"


def container_finding(error: InvalidSafetensorsError) -> Finding:
    match = _TENSOR_NAME.search(error.message)
    return finding(classify(error), error.message, key=match[1] if match else None,
                   hint=error.hint or "the file is corrupt or not safetensors; fetch or export it again")


def size_finding(header: SafetensorsHeader, file_size: int, source: str) -> Finding:
    """A known file size that differs from what a header (read alone) describes, in the reader's words."""
    total = header.total_size
    if file_size < total:
        error: InvalidSafetensorsError = TruncatedFileError(
            f"file is {file_size} bytes but its header describes {total} (missing {total - file_size} bytes of "
            "tensor data)", path=source)
    else:
        error = InvalidSafetensorsError(f"file is {file_size} bytes but its header describes {total} "
                                        f"({file_size - total} trailing bytes no tensor accounts for)", path=source)
    return container_finding(error)
