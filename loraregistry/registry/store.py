"""The content-addressed store: ``store/sha256/ab/cdef....safetensors``, one file per distinct content.

A file enters the store under a temporary name and is renamed into place, so a reader never sees a
partial blob and two processes storing the same bytes both succeed. A hard link is used when the source
lives on the same filesystem (no copy); otherwise the bytes are copied and hashed again on the way.

Next to each blob, ``<sha256>.jsonl`` is an append-only journal of how it was added (origin, verify
verdict, time): the database is an index that ``rebuild`` can recreate from the blobs and journals alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RegistryError

_CHUNK = 1 << 20
BLOB_SUFFIX = ".safetensors"
JOURNAL_SUFFIX = ".jsonl"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root / "sha256"

    def blob_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{BLOB_SUFFIX}"

    def journal_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{JOURNAL_SUFFIX}"

    def put(self, source: Path, sha256: str, *, source_stat: os.stat_result) -> Path:
        """Place ``source`` (whose sha256 is known) in the store; returns the blob path."""
        dest = self.blob_path(sha256)
        source = source.resolve()  # link the file itself, not a symlink to it (huggingface_hub's cache)
        if dest.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{sha256[2:]}.{uuid.uuid4().hex}.tmp"
        try:
            if not _try_link(source, tmp, source_stat):
                got = _copy_hashing(source, tmp)
                if got != sha256:
                    raise RegistryError(f"the file changed while it was being added (sha256 {got}, expected {sha256})",
                                        path=source, hint="add it again once nothing writes to it")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dest

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


def _try_link(source: Path, tmp: Path, source_stat: os.stat_result) -> bool:
    """Hard-link ``source`` to ``tmp``; False when linking is impossible or the source changed since hashing."""
    try:
        os.link(source, tmp)
    except OSError:
        return False
    now = tmp.stat()
    if (now.st_size, now.st_mtime_ns) != (source_stat.st_size, source_stat.st_mtime_ns):
        tmp.unlink()
        return False
    return True


def _copy_hashing(source: Path, tmp: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, tmp.open("xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copymode(source, tmp)
    return digest.hexdigest()
