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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic_write import fsync_folder, sweep_stale_temps, temp_path
from .errors import RegistryError

if TYPE_CHECKING:
    from ..safetensors_io import SafetensorsHeader

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
        self._root_text = str(self.root)

    def blob_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{BLOB_SUFFIX}"

    def blob_location(self, sha256: str) -> str:
        """``str(blob_path(sha256))`` without pathlib (a search builds one per entry)."""
        return os.path.join(self._root_text, sha256[:2], f"{sha256[2:]}{BLOB_SUFFIX}")

    def journal_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{JOURNAL_SUFFIX}"

    def put(self, source: Path, header: SafetensorsHeader, read_at: os.stat_result) -> tuple[Path, Any]:
        """Place a copy of ``source`` in the store, hashing it on the way: one read of the file gives the store's
        copy and every hash (``hashes.FileHashes``). ``header`` is the file's header as the caller read it after
        ``read_at`` (its stat); a copy of a file that changed since, whose header is not that one, is refused.
        Returns the blob path and the hashes. An existing blob is kept when it still holds these bytes, and
        replaced by a fresh copy when it is damaged or still hard-linked to a user's file (stores of older
        lorareg versions linked)."""
        from ..hashes import StreamHasher

        source = source.resolve()  # copy the file itself, not a symlink to it (huggingface_hub's cache)
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.root)
        tmp = temp_path(self.root / f"incoming{BLOB_SUFFIX}")  # same filesystem as every blob: renames are atomic
        hasher = StreamHasher(header.data_offset)
        try:
            cloned, copied_from = _clone_or_copy(source, tmp, hasher.update)
            hashes = hasher.result()
            unchanged = not cloned and _same_file(copied_from, read_at)  # else compare what the store now holds
            if not unchanged and not _same_header(tmp, header):
                raise RegistryError("the file changed while it was being added (its header is not the one read)",
                                    path=source, hint="add it again once nothing writes to it")
            dest = self.blob_path(hashes.sha256)
            if dest.exists() and self._intact_and_private(dest, hashes.sha256):
                return dest, hashes
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, BLOB_MODE)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_folder(dest.parent)  # a crash may leave the temp name in the root too: sweep_stale_temps clears it
        return dest, hashes

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
            st = os.stat(self.blob_location(sha256))
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


def _same_header(path: Path, header: SafetensorsHeader) -> bool:
    """Whether the file at ``path`` has ``header`` (tensors, metadata, size): the copy is of the file that was read."""
    from ..errors import LoraregError
    from ..safetensors_io import read_header

    try:
        copied = read_header(path)
    except LoraregError:
        return False
    return (copied.header_size, copied.metadata, copied.tensors) == (header.header_size, header.metadata,
                                                                    header.tensors)


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


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _clone_or_copy(source: Path, tmp: Path, update: Callable[[bytes], Any]) -> tuple[bool, os.stat_result]:
    """Write the store's own copy of ``source`` to ``tmp``; ``update`` sees every byte of the copy in order, so one
    read serves the copy and the caller's hashes. Returns whether the copy is a clone (reflink) and the source's
    stat after the copy."""
    try:
        src = source.open("rb")
    except OSError as exc:
        raise RegistryError(f"cannot read: {exc.strerror}", path=source) from None
    with src, tmp.open("xb") as dst:
        if _reflink(src.fileno(), dst.fileno()):
            dst.flush()
            os.fsync(dst.fileno())
            with tmp.open("rb") as clone:  # the clone shares blocks: hash what the store now holds
                while chunk := clone.read(_CHUNK):
                    update(chunk)
            return True, os.fstat(src.fileno())
        while chunk := src.read(_CHUNK):
            update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
        return False, os.fstat(src.fileno())
