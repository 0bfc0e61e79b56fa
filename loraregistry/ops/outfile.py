"""An operation's output written once: tensors laid out, their bytes hashed from memory, header and data
written to a new file in one pass while the whole file is hashed, then fsync.

The record an output carries holds its own tensor-data sha256 (AutoV3), and the header comes before the data:
so the data is hashed first, from the arrays in memory (no file is read back), the header is built with that
hash, and the file is written once, its whole-file sha256 taken from the same buffers as they go out. The
layout is ``safetensors_io.write_safetensors``'s (the safetensors library's): larger dtypes first, then by name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..safetensors_io import SafetensorsHeader, encode_header, parse_header, safetensors_dtype


@dataclass(frozen=True)
class RowStack:
    """A tensor that is other arrays' rows stacked, ``np.concatenate(parts)`` without the copy: written and hashed
    part by part straight from the parts' memory (an exact merge's ``down`` factors, from the inputs' memory maps).
    ``np.asarray`` gives the stacked array."""

    parts: tuple[np.ndarray, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(p.shape[0] for p in self.parts), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __array__(self, dtype=None, copy=None):
        return np.concatenate(self.parts, axis=0).astype(dtype or self.dtype, copy=False)


def _bytes(a: np.ndarray) -> memoryview:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).data


@dataclass(frozen=True)
class Layout:
    """Tensors in file order with their header entries (data offsets relative to the data section)."""

    arrays: dict[str, np.ndarray | RowStack]  # file order; C-contiguous, little-endian
    entries: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, named: Mapping[str, np.ndarray]) -> Layout:
        arrays = {name: a if isinstance(a, RowStack) else np.asarray(a, order="C")  # keeps 0-d shapes
                  for name, a in named.items()}
        order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
        ordered: dict[str, np.ndarray | RowStack] = {}
        entries: dict[str, dict[str, Any]] = {}
        offset = 0
        for name in order:
            a = arrays[name]
            if a.dtype.byteorder == ">":
                a = np.asarray(a).astype(a.dtype.newbyteorder("<"))
            ordered[name] = a
            entries[name] = {"dtype": safetensors_dtype(a.dtype), "shape": list(a.shape),
                             "data_offsets": [offset, offset + a.nbytes]}
            offset += a.nbytes
        return cls(arrays=ordered, entries=entries)

    @property
    def data_size(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def buffers(self) -> Iterator[memoryview]:
        """The data section, tensor by tensor, as views of the arrays (no copies)."""
        for a in self.arrays.values():
            for part in a.parts if isinstance(a, RowStack) else (a,):
                if part.nbytes:
                    yield _bytes(part)

    def data_sha256(self) -> str:
        """AutoV3 of the file this layout becomes: sha256 of its data section, from memory."""
        digest = hashlib.sha256()
        for view in self.buffers():
            digest.update(view)
        return digest.hexdigest()

    def header(self, metadata: Mapping[str, str] | None, *,
               path: str | os.PathLike[str]) -> tuple[bytes, SafetensorsHeader]:
        """(encoded header, parsed and validated header) of the file with ``metadata``."""
        encoded = encode_header(self.entries, metadata)
        return encoded, parse_header(encoded, path=os.fspath(path), file_size=len(encoded) + self.data_size)

    def write(self, path: str | os.PathLike[str], encoded_header: bytes) -> str:
        """Create ``path`` (it must not exist), write the header and data, fsync; the whole file's sha256.

        The mode is what a plain ``open`` gives a new file (the umask applies); a failure leaves the partial file
        for the caller to remove (it writes to a temporary name)."""
        whole = hashlib.sha256(encoded_header)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with open(fd, "wb") as f:
            f.write(encoded_header)
            for view in self.buffers():
                whole.update(view)  # hashlib and the write both release the GIL: buffers in memory, no re-read
                f.write(view)
            f.flush()
            os.fsync(f.fileno())
        return whole.hexdigest()
