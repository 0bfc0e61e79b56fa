"""An operation's output written once: tensors laid out, room kept for the header, the data written behind it
while a second thread hashes the same buffers (AutoV3), the header (which records that hash) put into its room,
then the whole-file sha256 on a thread beside the fsync (and the caller's verify).

Why this order: the record an output carries holds its own tensor-data sha256, and the header comes before the
data. So the header is final only once the data is hashed, but its length is known before (a hash is 64 hex
digits whatever its value): the data goes to its place first, hashed as it goes out, and the header follows into
the room kept for it. The whole-file sha256 starts with the header, so it is a second pass over the buffers in
memory (no file is read back), on a thread while the file is synced and verified. The layout is
``safetensors_io.write_safetensors``'s (the safetensors library's): larger dtypes first, then by name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..safetensors_io import SafetensorsHeader, encode_header, parse_header, safetensors_dtype
from .background import Background


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

    def header(self, metadata: Mapping[str, str] | None, *,
               path: str | os.PathLike[str]) -> tuple[bytes, SafetensorsHeader]:
        """(encoded header, parsed and validated header) of the file with ``metadata``."""
        encoded = self.encoded_header(metadata)
        return encoded, parse_header(encoded, path=os.fspath(path), file_size=len(encoded) + self.data_size)

    def encoded_header(self, metadata: Mapping[str, str] | None) -> bytes:
        """The encoded header alone (``header`` without parsing it back)."""
        return encode_header(self.entries, metadata)


class OutputFile:
    """The file ``layout`` becomes, written once: ``OutputFile(layout)`` starts hashing the data (AutoV3) on a
    thread at once; ``write_data(path, header_size)`` creates ``path`` (it must not exist) and writes the data
    after the header's room meanwhile; ``data_sha256()``; ``finish(header)``; ``sha256()``; ``close()`` always
    (it waits for the threads, then closes the file).

    The mode is what a plain ``open`` gives a new file (the umask applies); a failure leaves the partial file for
    the caller to remove (it writes to a temporary name)."""

    def __init__(self, layout: Layout) -> None:
        self.views = list(layout.buffers())  # taken once: both hashes and the write read the same memory
        self.fd: int | None = None
        self.header_size = 0
        self._threads: list[Background] = []
        self._data = self._start(_sha256, b"", self.views)

    def write_data(self, path: str | os.PathLike[str], header_size: int) -> None:
        """Create ``path`` and write the data section after ``header_size`` bytes kept for the header."""
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self.header_size = header_size
        with open(self.fd, "wb", closefd=False) as f:  # buffered: a thousand 4-byte alphas in few writes
            f.seek(header_size)
            for view in self.views:
                f.write(view)  # releases the GIL, as hashlib does: the AutoV3 thread runs meanwhile

    def data_sha256(self) -> str:
        """sha256 of the data section (AutoV3), hashed from memory."""
        return self._data.result()

    def finish(self, encoded_header: bytes) -> None:
        """Put the header in its room; then the whole-file sha256 (header + buffers) and the fsync start on two
        threads: the caller verifies the file meanwhile and collects both with ``sha256()``."""
        if len(encoded_header) != self.header_size:  # a bug, never the input's fault: no file is half-written
            raise RuntimeError(f"header of {len(encoded_header)} bytes for a room of {self.header_size}")
        done = 0
        while done < len(encoded_header):
            done += os.pwrite(self.fd, memoryview(encoded_header)[done:], done)
        self._whole = self._start(_sha256, encoded_header, self.views)
        self._synced = self._start(lambda: os.fsync(self.fd))  # os.fsync looked up now: a test may replace it

    def sha256(self) -> str:
        """The whole file's sha256, once the file is on disk (its fsync done)."""
        self._synced.result()
        return self._whole.result()

    def close(self) -> None:
        for thread in self._threads:
            thread.join()  # none touches the descriptor after this
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _start(self, function, *args) -> Background:
        thread = Background(function, args)
        self._threads.append(thread)
        return thread


def _sha256(first: bytes, views: list[memoryview]) -> str:
    digest = hashlib.sha256(first)
    for view in views:
        digest.update(view)  # releases the GIL on all but tiny buffers
    return digest.hexdigest()
