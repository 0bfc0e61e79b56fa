"""lorareg's own download folder: each pull streams into a private folder in it, removed when the pull ends.

Nothing in here is named by a server: the private folder comes from ``tempfile.mkdtemp`` and the file in
it takes the (already checked) base name of the repo file, so no ETag, oid or commit sha a server sends
can steer a write or a delete. A pull killed midway leaves its folder; the next pull removes such
leftovers, recognised by a lock no living process holds (POSIX ``flock``; elsewhere they stay).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PREFIX = ".lorareg-pull-"  # no .safetensors in the name: `lorareg verify FOLDER` never picks these up
_LOCK = "lock"
_STARTING_S = 60  # a folder without its lock file this young may belong to a pull that is starting

try:
    import fcntl
except ImportError:  # Windows: no stale-folder detection, folders of killed pulls stay
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def staging_folder(root: Path) -> Iterator[Path]:
    """A fresh private folder under ``root``; it and everything in it is gone when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    lock = _hold(folder)
    try:
        yield folder
    finally:
        if lock is not None:
            lock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _hold(folder: Path):
    if fcntl is None:
        return None
    handle = open(folder / _LOCK, "wb")  # noqa: SIM115 - held open for the whole pull
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle


def _remove_stale(root: Path) -> None:
    """Folders of pulls that were killed: their lock file is free (or missing, if killed before taking it)."""
    if fcntl is None:
        return
    for folder in root.glob(f"{PREFIX}*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            with open(folder / _LOCK, "rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a running pull
        except OSError:  # no lock file: killed before it existed, or a pull that is just starting
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime < _STARTING_S:
                    continue
        shutil.rmtree(folder, ignore_errors=True)


def fresh_file(folder: Path, name: str) -> Path:
    """``folder/data/name`` created exclusively (no following a link that something else put there); the
    ``data`` level keeps any name clear of the lock file."""
    (folder / "data").mkdir(exist_ok=True)
    path = folder / "data" / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    os.close(fd)
    return path
