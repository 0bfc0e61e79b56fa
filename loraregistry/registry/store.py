"""The content-addressed store: ``store/sha256/ab/cdef....safetensors``, one file per distinct content.

A file enters the store as the store's own copy (a reflink where the filesystem can share blocks
copy-on-write, else a byte copy), written under a temporary name, hashed again, made read-only and
renamed into place: a reader never sees a partial blob, two processes storing the same bytes both
succeed, and editing the file the user added never changes the registry's copy (hard links would).

Next to each blob, ``<sha256>.jsonl`` is an append-only journal of how it was added (origin, verify
verdict, time): the database is an index that ``rebuild`` can recreate from the blobs and journals alone.
``blob_state`` is the cheap integrity check (size and mtime as recorded); ``check`` re-hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic_write import fsync_folder, sweep_stale_temps, temp_path
from .errors import RegistryError

_CHUNK = 1 << 20
BLOB_SUFFIX = ".safetensors"
JOURNAL_SUFFIX = ".jsonl"
BLOB_MODE = 0o444  # the store's copies are not for editing
_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)

# What the cheap check and ``check`` say about a blob.
BLOB_OK, BLOB_MISSING, BLOB_CHANGED = "ok", "missing", "changed"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root / "sha256"

    def blob_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{BLOB_SUFFIX}"

    def journal_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{JOURNAL_SUFFIX}"

    def put(self, source: Path, sha256: str) -> Path:
        """Place a copy of ``source`` (whose sha256 is known) in the store; returns the blob path.

        An existing blob is kept when it still holds these bytes, and replaced by a fresh copy when it is
        damaged or still hard-linked to a user's file (stores of older lorareg versions linked)."""
        dest = self.blob_path(sha256)
        source = source.resolve()  # copy the file itself, not a symlink to it (huggingface_hub's cache)
        if dest.exists() and self._intact_and_private(dest, sha256):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(dest.parent)
        tmp = temp_path(dest)
        try:
            got = _clone_or_copy(source, tmp)
            if got != sha256:
                raise RegistryError(f"the file changed while it was being added (sha256 {got}, expected {sha256})",
                                    path=source, hint="add it again once nothing writes to it")
            os.chmod(tmp, BLOB_MODE)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_folder(dest.parent)
        return dest

    @staticmethod
    def _intact_and_private(blob: Path, sha256: str) -> bool:
        try:
            if blob.stat().st_nlink > 1:
                return False
            return hash_blob(blob) == sha256
        except OSError:
            return False

    def blob_state(self, sha256: str, size: int, mtime_ns: int | None) -> str:
        """The cheap check: ``missing``, ``changed`` (size or mtime differ from the recorded ones) or ``ok``."""
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return BLOB_MISSING
        except OSError:
            return BLOB_CHANGED
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return BLOB_CHANGED
        if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
            return BLOB_CHANGED
        return BLOB_OK

    def blob_mtime_ns(self, sha256: str) -> int | None:
        try:
            return self.blob_path(sha256).stat().st_mtime_ns
        except OSError:
            return None

    def append_journal(self, sha256: str, record: dict[str, Any]) -> None:
        """One JSON line per event; O_APPEND keeps concurrent small writes whole."""
        path = self.journal_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_journal(self, sha256: str) -> list[dict[str, Any]]:
        try:
            lines = self.journal_path(sha256).read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line loses one event, not the file
                value = json.loads(line)
                if isinstance(value, dict):
                    records.append(value)
        return records

    def remove(self, sha256: str) -> None:
        for path in (self.blob_path(sha256), self.journal_path(sha256)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def blobs(self) -> Iterator[tuple[str, Path]]:
        """(sha256 the name claims, path) for every blob, sorted."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for blob in sorted(folder.glob(f"*{BLOB_SUFFIX}")):
                yield folder.name + blob.name[: -len(BLOB_SUFFIX)], blob


    def journals(self) -> Iterator[str]:
        """The sha256 of every journal, sorted (a journal without its blob is an entry whose file is gone)."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for journal in sorted(folder.glob(f"*{JOURNAL_SUFFIX}")):
                yield folder.name + journal.name[: -len(JOURNAL_SUFFIX)]


def hash_blob(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        import fcntl

        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except (ImportError, OSError):
        return False  # other filesystems (ext4, tmpfs), other platforms: copy the bytes
    return True


def _clone_or_copy(source: Path, tmp: Path) -> str:
    """Write the store's own copy of ``source`` to ``tmp``; returns the sha256 of what ``tmp`` holds."""
    try:
        src = source.open("rb")
    except OSError as exc:
        raise RegistryError(f"cannot read: {exc.strerror}", path=source) from None
    with src, tmp.open("xb") as dst:
        if _reflink(src.fileno(), dst.fileno()):
            dst.flush()
            os.fsync(dst.fileno())
            return hash_blob(tmp)  # the clone shares blocks: hash what the store now holds
        digest = hashlib.sha256()
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()
