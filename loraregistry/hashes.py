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

import hashlib
import os
import struct
import zlib
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


def hash_file(path: str | os.PathLike[str], *, data_offset: int | None = None) -> FileHashes:
    """Compute every hash in one sequential pass over the file.

    ``data_offset`` is where the tensor data starts (``8 + N``); when omitted it is read from the first
    8 bytes, as for any safetensors file. Pass -1 for files that are not safetensors (no AutoV3).
    """
    p = Path(path)
    whole = hashlib.sha256()
    data = hashlib.sha256()
    legacy = hashlib.sha256()
    b3 = _blake3()
    crc = 0
    pos = 0
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                if data_offset is None:
                    data_offset = 8 + struct.unpack("<Q", chunk[:8])[0] if len(chunk) >= 8 else -1
                end = pos + len(chunk)
                whole.update(chunk)
                crc = zlib.crc32(chunk, crc)
                if b3 is not None:
                    b3.update(chunk)
                if data_offset >= 0 and end > data_offset:
                    data.update(chunk[max(0, data_offset - pos):])
                lo, hi = max(pos, AUTOV1_OFFSET), min(end, AUTOV1_OFFSET + AUTOV1_LENGTH)
                if lo < hi:
                    legacy.update(chunk[lo - pos : hi - pos])
                pos = end
    except FileNotFoundError:
        raise FileAccessError("no such file", path=p, hint="check the path") from None
    except IsADirectoryError:
        raise FileAccessError("is a folder, expected a file", path=p) from None
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=p) from None
    sha = whole.hexdigest()
    has_data = data_offset is not None and 0 <= data_offset <= size
    return FileHashes(
        sha256=sha,
        # A1111 hashes whatever lies in the window; a file that does not reach it has no AutoV1.
        autov1=legacy.hexdigest()[:8] if size >= AUTOV1_OFFSET + AUTOV1_LENGTH else None,
        autov2=sha[:10],
        autov3=data.hexdigest() if has_data else None,
        crc32=civitai_crc32(crc),
        blake3=b3.hexdigest() if b3 is not None else None,
    )


def tensor_sha256(path: str | os.PathLike[str], data_offset: int) -> str:
    """AutoV3 alone: sha256 of the bytes from ``data_offset`` to the end."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        f.seek(data_offset)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the whole file (any file, not only safetensors)."""
    return tensor_sha256(path, 0)
