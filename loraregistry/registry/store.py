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
import functools
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..atomic_write import sweep_stale_temps, temp_path
from .errors import RegistryError

if TYPE_CHECKING:
    from ..safetensors_io import SafetensorsHeader

_CHUNK = 1 << 20
# The copy's reads: each one and each hash update hands the GIL over and back, and a copy on a thread beside a
# parsing thread waits for the GIL each time; few large reads keep a typical adapter to one round.
_COPY_CHUNK = 16 << 20
BLOB_SUFFIX = ".safetensors"
JOURNAL_SUFFIX = ".jsonl"
BLOB_MODE = 0o444  # the store's copies are not for editing
_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs)

# What the cheap check and ``check`` say about a blob.
BLOB_OK, BLOB_MISSING, BLOB_CHANGED = "ok", "missing", "changed"


class StagedCopy(NamedTuple):
    """A copy of ``source`` written and fsynced under the temp name ``tmp``, not yet a blob (``Store.stage``)."""

    source: Path
    tmp: Path
    hashes: Any  # hashes.FileHashes of the copy's bytes
    cloned: bool  # a reflink: shares the source's blocks
    copied_from: os.stat_result  # the source's stat after the copy
    synced: bool  # its data fsynced already (else ``place`` does it before the rename)

    def discard(self) -> None:
        """Remove the temp file (gone already once placed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


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

    def prepare(self) -> None:
        """Create the store's root and sweep it of the temp files of killed runs (once per batch of adds)."""
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.root)

    def stage(self, source: Path, *, sync: bool = True) -> StagedCopy:
        """Step 1 of storing a file (thread-safe: hashlib, zlib, blake3 and fsync release the GIL, so a thread runs
        it while the caller parses the header): the store's own copy of ``source`` under a temp name in the store's
        root (same filesystem as every blob: renames are atomic), every byte hashed on the way (one read gives the
        copy and every hash), its data fsynced unless ``sync`` is false (a worker process leaves the wait to the
        process that places it, idle meanwhile). The caller must ``discard`` it once placed or refused."""
        from ..hashes import StreamHasher

        source = source.resolve()  # copy the file itself, not a symlink to it (huggingface_hub's cache)
        tmp = temp_path(self.root / f"incoming{BLOB_SUFFIX}")
        hasher = StreamHasher()  # reads the data offset from the copy's first bytes, as hash_file does
        try:
            cloned, copied_from = _clone_or_copy(source, tmp, hasher.update, sync=sync)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return StagedCopy(source, tmp, hasher.result(), cloned, copied_from, sync)

    def check_copy(self, staged: StagedCopy, header: SafetensorsHeader, read_at: os.stat_result,
                   read_until: os.stat_result | None) -> None:
        """Step 2: refuse a copy that may not be of the file the caller read. ``header`` was read between the
        stats ``read_at`` and ``read_until``; when the file stayed the same from before the header was read
        until after it was copied, the copy is of that file; otherwise (or for a clone) compare the header the
        store now holds."""
        unchanged = (not staged.cloned and read_until is not None and _same_file(staged.copied_from, read_at)
                     and _same_file(read_until, read_at))
        if not unchanged and not _same_header(staged.tmp, header):
            raise RegistryError("the file changed while it was being added (its header is not the one read)",
                                path=staged.source, hint="add it again once nothing writes to it")

    def place(self, staged: StagedCopy) -> Path:
        """Step 3: rename the staged copy to its blob path (read-only), unless an intact private blob of these
        bytes is there already; a damaged one, or one still hard-linked to a user's file (stores of older lorareg
        versions linked), is replaced. The rename is durable once the caller fsyncs the blob's folder."""
        dest = self.blob_path(staged.hashes.sha256)
        if dest.exists() and self._intact_and_private(dest, staged.hashes.sha256):
            return dest
        if not staged.synced:  # the bytes durable before the name appears: fsync covers the file, any descriptor
            fd = os.open(staged.tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(staged.tmp, BLOB_MODE)
        try:
            os.replace(staged.tmp, dest)
        except FileNotFoundError:  # the blob's folder is not there yet (the temp is: it was just written)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.tmp, dest)
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
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # no folder yet (the blob's folder holds its journal: there is one after add)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o644)
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


def _clone_or_copy(source: Path, tmp: Path, update: Callable[[bytes], Any], *,
                   sync: bool = True) -> tuple[bool, os.stat_result]:
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
            if sync:
                os.fsync(dst.fileno())
            with tmp.open("rb") as clone:  # the clone shares blocks: hash what the store now holds
                while chunk := clone.read(_CHUNK):
                    update(chunk)
            return True, os.fstat(src.fileno())
        while chunk := src.read(_COPY_CHUNK):
            update(chunk)
            dst.write(chunk)
        dst.flush()
        if sync:
            os.fsync(dst.fileno())
        else:
            _start_writeback(dst.fileno())
        return False, os.fstat(src.fileno())


_SYNC_FILE_RANGE_WRITE = 2  # Linux: start writing the dirty pages out, do not wait


@functools.cache
def _sync_file_range() -> Callable[..., int] | None:
    """libc's ``sync_file_range`` (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


def _start_writeback(fd: int) -> None:
    """Start writing a copy's bytes to disk without waiting (Linux): the fsync that must come before its rename
    then finds them written or on their way, instead of starting the whole write then. Best effort: the fsync is
    what makes them durable."""
    call = _sync_file_range()
    if call is not None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
