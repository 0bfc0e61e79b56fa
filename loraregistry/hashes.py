"""File hashes that model sites and tools print, all from one chunked read pass.

Definitions (FORMATS.md section 5):

* ``sha256``: the whole file.
* ``autov1``: A1111's legacy hash: sha256 of the 0x10000 bytes at offset 0x100000, first 8 hex digits.
* ``autov2``: first 10 hex digits of the whole-file sha256.
* ``autov3`` (= kohya ``sshs_model_hash`` = modelspec ``hash_sha256`` without ``0x``): sha256 of the tensor
  data only, i.e. the bytes after ``8 + N``. It survives metadata edits, so it can live inside the file.
* ``crc32``: as Civitai prints it, the CRC's bytes little-endian in upper-case hex ("hello world" -> 85114A0D).
* ``blake3``: the whole file, when the optional ``blake3`` package is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from .errors import FileAccessError

AUTOV1_OFFSET = 0x100000
AUTOV1_LENGTH = 0x10000
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    autov1: str | None
    autov2: str
    autov3: str | None
    crc32: str
    blake3: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"sha256": self.sha256, "autov1": self.autov1, "autov2": self.autov2, "autov3": self.autov3,
                "crc32": self.crc32, "blake3": self.blake3}


def civitai_crc32(crc: int) -> str:
    """Civitai's CRC32 text: the 32-bit value's bytes in little-endian order, upper-case hex."""
    return struct.pack("<I", crc & 0xFFFFFFFF).hex().upper()


def _blake3():
    try:
        from blake3 import blake3  # optional: cheap when the wheel is there
    except ImportError:
        return None
    return blake3()


class StreamHasher:
    """Every hash of a file fed to it in order, chunk by chunk: for reading a file (``hash_file``) and for
    writing one (bake hashes its output as it streams it out).

    ``data_offset`` is where the tensor data starts (``8 + N``); None reads it from the first 8 bytes, as for any
    safetensors file; -1 means not safetensors (no AutoV3).
    """

    def __init__(self, data_offset: int | None = None) -> None:
        self.data_offset = data_offset
        self.whole, self.data, self.legacy = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        self.b3 = _blake3()
        self.crc = 0
        self.pos = 0

    def update(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        if self.data_offset is None:
            self.data_offset = 8 + struct.unpack("<Q", view[:8])[0] if len(view) >= 8 else -1
        pos, end = self.pos, self.pos + len(view)
        self.whole.update(view)
        self.crc = zlib.crc32(view, self.crc)
        if self.b3 is not None:
            self.b3.update(view)
        if self.data_offset >= 0 and end > self.data_offset:
            self.data.update(view[max(0, self.data_offset - pos):])
        lo, hi = max(pos, AUTOV1_OFFSET), min(end, AUTOV1_OFFSET + AUTOV1_LENGTH)
        if lo < hi:
            self.legacy.update(view[lo - pos : hi - pos])
        self.pos = end

    def result(self) -> FileHashes:
        sha = self.whole.hexdigest()
        size = self.pos
        has_data = self.data_offset is not None and 0 <= self.data_offset <= size
        return FileHashes(
            sha256=sha,
            # A1111 hashes whatever lies in the window; a file that does not reach it has no AutoV1.
            autov1=self.legacy.hexdigest()[:8] if size >= AUTOV1_OFFSET + AUTOV1_LENGTH else None,
            autov2=sha[:10],
            autov3=self.data.hexdigest() if has_data else None,
            crc32=civitai_crc32(self.crc),
            blake3=self.b3.hexdigest() if self.b3 is not None else None,
        )


def hash_file(path: str | os.PathLike[str], *, data_offset: int | None = None) -> FileHashes:
    """Compute every hash in one sequential pass over the file (``data_offset``: see ``StreamHasher``)."""
    p = Path(path)
    hasher = StreamHasher(data_offset)
    try:
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
    except FileNotFoundError:
        raise FileAccessError("no such file", path=p, hint="check the path") from None
    except IsADirectoryError:
        raise FileAccessError("is a folder, expected a file", path=p) from None
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=p) from None
    return hasher.result()


def content_hashes(path: str | os.PathLike[str], data_offset: int) -> tuple[str, str]:
    """(sha256, AutoV3) of a safetensors file in one read pass: what a provenance parent records, without the
    CRC32, BLAKE3 and AutoV1 that ``hash_file`` adds (a third of its time on a large file)."""
    whole, data = hashlib.sha256(), hashlib.sha256()
    pos = 0
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(_CHUNK):
                whole.update(chunk)
                end = pos + len(chunk)
                if end > data_offset:
                    data.update(memoryview(chunk)[max(0, data_offset - pos):])
                pos = end
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=Path(path)) from None
    return whole.hexdigest(), data.hexdigest()


# (device, inode, size, mtime_ns, data_offset) of a file just written -> the AutoV3 hashed while writing it
_KNOWN_TENSOR_SHA256: ContextVar[tuple[tuple[int, int, int, int, int], str] | None] = ContextVar(
    "known_tensor_sha256", default=None)


def _identity(st: os.stat_result, data_offset: int) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, data_offset)


@contextlib.contextmanager
def known_tensor_sha256(path: str | os.PathLike[str], data_offset: int, digest: str) -> Iterator[None]:
    """Within the block, ``tensor_sha256(path, data_offset)`` answers ``digest`` without reading the file, as long
    as the path still names the very file it named on entry (same device, inode, size and mtime).

    For the verify that follows a write which hashed the bytes as it wrote them (``ops.outfile``): the data is
    not read a second time to learn what the writer already knows. Scoped to the block and the calling context
    (thread), so nothing else ever sees it."""
    token = _KNOWN_TENSOR_SHA256.set((_identity(os.stat(path), data_offset), digest))
    try:
        yield
    finally:
        _KNOWN_TENSOR_SHA256.reset(token)


def tensor_sha256(path: str | os.PathLike[str], data_offset: int) -> str:
    """AutoV3 alone: sha256 of the bytes from ``data_offset`` to the end (``known_tensor_sha256`` may know it)."""
    known = _KNOWN_TENSOR_SHA256.get()
    if known is not None:
        with contextlib.suppress(OSError):
            if _identity(os.stat(path), data_offset) == known[0]:
                return known[1]
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        f.seek(data_offset)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the whole file (any file, not only safetensors)."""
    return tensor_sha256(path, 0)
