"""Replace files so that no edit is lost and no reader ever sees half a file.

* ``atomic_write``: write a temp file beside the target, fsync, check a precondition, rename over the target.
  A symlink target is followed (the real file is replaced, the link stays a link). Edits pass
  ``break_hardlinks=False`` to refuse a target with other hard links: a rename would give this path a new
  file and leave the other links holding the old content, silently (a new output may replace such a file).
* Temp names are ``.<name>.lorareg-tmp-<pid>-<random>``: hidden, never ending in ``.safetensors`` (no tool
  takes one for an adapter), and carrying the writer's pid, so every write sweeps its folder of the leftovers
  of killed runs (owner gone, or older than ``STALE_AFTER_S``).
* ``edit_lock``: an advisory lock (``flock`` on the file itself) and a ``FileSnapshot`` taken under it, so a
  read-modify-write can re-read under the lock and compare-and-swap at the rename (``check_unchanged``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

from .errors import FileAccessError, LoraregError

TEMP_MARK = ".lorareg-tmp-"
# A temp file this old is removed even when its pid is alive again (pids are reused).
STALE_AFTER_S = 6 * 3600
LOCK_TIMEOUT_S = 60.0
_MAX_NAME_IN_TEMP = 180  # keep temp names under the usual 255-byte limit
_SNAPSHOT_HEAD_CAP = 100_000_000  # the header cap of safetensors_io
_TEMP_NAME = re.compile(r"\..+\.lorareg-tmp-([0-9]{1,10})-[0-9a-f]{8}", re.DOTALL)
# Temp names of earlier lorareg versions (no pid in them: removed by age only).
_LEGACY_TEMP_NAME = re.compile(
    r"\..+\.(?:[0-9a-f]{8}\.lorareg-(?:tmp|fix)|[0-9a-f]{12}\.tmp)\.safetensors"
    r"|\..+\.safetensors\.[a-z0-9_]{8}\.tmp", re.DOTALL)


class ConcurrentEditError(LoraregError):
    """The file changed (or stayed locked) while lorareg was editing it; nothing was written."""


class HardLinkedFile(FileAccessError):
    """Replacing the file would silently detach it from its other hard links."""


# --- temp files ----------------------------------------------------------------------------------


def temp_path(target: str | os.PathLike[str]) -> Path:
    """A fresh temp name beside ``target`` that sweeps and ``is_temp_name`` recognise."""
    t = Path(target)
    return t.with_name(f".{t.name[:_MAX_NAME_IN_TEMP]}{TEMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")


def new_temp_path(target: str | os.PathLike[str]) -> Path:
    """``temp_path`` for a writer that renames by itself, after sweeping the folder of stale temps."""
    t = Path(target)
    sweep_stale_temps(t.parent if str(t.parent) else ".")
    return temp_path(t)


def is_temp_name(name: str) -> bool:
    """True for names of lorareg's temp files, current and legacy (folder scans must skip them)."""
    return bool(name.startswith(".") and (_TEMP_NAME.fullmatch(name) or _LEGACY_TEMP_NAME.fullmatch(name)))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can ask about: leave it to the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike[str], *, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove lorareg temp files in ``folder`` left by dead processes or older than ``max_age_s``.

    Returns what was removed. Never raises: a sweep must not stop the write that triggered it."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or (TEMP_MARK not in name and ".safetensors" not in name):
            continue  # the cheap filter: most names are neither
        current = _TEMP_NAME.fullmatch(name)
        if current is None and not _LEGACY_TEMP_NAME.fullmatch(name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            old = now - st.st_mtime > max_age_s
            dead = current is not None and int(current[1]) != os.getpid() and not _pid_alive(int(current[1]))
            if old or dead:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


# --- snapshots and locks -------------------------------------------------------------------------


class FileSnapshot(NamedTuple):
    """Which file a path named, and in what state: identity, size, mtime and a hash of its header bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    head_sha256: str


def _head_length(fd: int, size: int) -> int:
    """8 + N for a plausible safetensors header, else the first 64 KiB: the bytes an edit rewrites."""
    prefix = os.pread(fd, 8, 0)
    if len(prefix) == 8:
        (n,) = struct.unpack("<Q", prefix)
        if n <= _SNAPSHOT_HEAD_CAP and 8 + n <= size:
            return 8 + n
    return min(size, 1 << 16)


def snapshot_fd(fd: int) -> FileSnapshot:
    import hashlib  # loaded by edits only: a header-level read never needs it

    st = os.fstat(fd)
    length, digest, pos = _head_length(fd, st.st_size), hashlib.sha256(), 0
    while pos < length:
        chunk = os.pread(fd, min(1 << 20, length - pos), pos)
        if not chunk:
            break
        digest.update(chunk)
        pos += len(chunk)
    return FileSnapshot(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest.hexdigest())


def snapshot(path: str | os.PathLike[str]) -> FileSnapshot | None:
    """The state of the file at ``path`` now; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        return snapshot_fd(fd)
    finally:
        os.close(fd)


def check_unchanged(path: str | os.PathLike[str], expected: FileSnapshot) -> None:
    """Raise ConcurrentEditError unless ``path`` still holds exactly the file ``expected`` describes."""
    now = snapshot(path)
    if now == expected:
        return
    if now is None:
        what = "deleted"
    elif (now.dev, now.ino) != (expected.dev, expected.ino):
        what = "replaced"
    else:
        what = "modified"
    raise ConcurrentEditError(f"another program {what} the file while lorareg was editing it; nothing was written",
                              path=path, hint="run the command again")


def _flock_before(fd: int, deadline: float, path: Path) -> None:
    import fcntl

    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ConcurrentEditError(f"another process kept the file locked for {LOCK_TIMEOUT_S:g} s; "
                                          "nothing was written", path=path,
                                          hint="run the command again when the other edit is done") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return  # a filesystem without locks: the compare-and-swap still guards the edit
            raise


@contextlib.contextmanager
def edit_lock(path: str | os.PathLike[str], *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[FileSnapshot]:
    """Hold an exclusive advisory lock on the real file behind ``path`` and yield its snapshot under the lock.

    The lock is a ``flock`` on the file itself. Edits replace the file by rename, so a waiter may end up
    holding the lock of a file that is no longer at the path: it then locks the new one (the loop)."""
    real = resolve_target(path)
    try:
        import fcntl  # noqa: F401  (POSIX only; elsewhere the compare-and-swap alone guards edits)
    except ImportError:
        found = snapshot(real)
        if found is None:
            raise FileAccessError("no such file", path=path, hint="check the path")
        yield found
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):  # before open: opening a FIFO would block
                raise FileAccessError("is not a regular file (a folder or device?)", path=path,
                                      hint="name a .safetensors file")
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise FileAccessError("no such file", path=path, hint="check the path") from None
        except OSError as exc:
            if isinstance(exc, LoraregError):
                raise
            raise FileAccessError(f"cannot read: {exc.strerror}", path=path) from None
        try:
            _flock_before(fd, deadline, real)
            held = snapshot_fd(fd)
            try:
                still_there = os.stat(real)
            except FileNotFoundError:
                still_there = None
            if still_there is not None and (still_there.st_dev, still_there.st_ino) == (held.dev, held.ino):
                yield held
                return
        finally:
            os.close(fd)  # releases the lock


# --- writing -----------------------------------------------------------------------------------


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` must replace: the path itself, or the real file when it is a symlink."""
    p = Path(path)
    if not p.is_symlink():
        return p
    try:
        return p.resolve(strict=True)
    except FileNotFoundError:
        return Path(os.path.realpath(p))  # a dangling link: create the file it points to
    except (OSError, RuntimeError):
        raise FileAccessError("is a symlink loop", path=p, hint="point the link at a real file") from None


def _refuse_hard_links(target: Path, st: os.stat_result) -> None:
    raise HardLinkedFile(
        f"has {st.st_nlink} hard links; replacing it would leave the other links with the old content",
        path=target,
        hint="pass --break-hardlinks to give this path its own new file, or write a copy with -o")


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable where the platform allows."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, precondition: Callable[[], None] | None = None,
                 break_hardlinks: bool = True) -> Iterator[IO[bytes]]:
    """Write to a temp file beside the target, fsync, run ``precondition``, then rename over the target.

    The target is untouched unless the block and the precondition complete (an exception in either
    removes the temp file). An existing target keeps its mode; a new file gets the mode a plain ``open``
    would give it. Stale lorareg temp files in the folder are swept first. ``break_hardlinks=False``:
    HardLinkedFile when the target has other hard links (for edits of a file, where detaching loses them).
    """
    target = resolve_target(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileAccessError("folder does not exist", path=folder, hint="create it first")
    try:
        st = target.stat()
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    except OSError as exc:
        raise FileAccessError(f"cannot write: {exc.strerror}", path=target) from None
    else:
        if stat.S_ISDIR(st.st_mode):
            raise FileAccessError("is a folder, expected a file", path=target)
        if st.st_nlink > 1 and not break_hardlinks:
            _refuse_hard_links(target, st)
        mode = stat.S_IMODE(st.st_mode)
    sweep_stale_temps(folder)
    tmp = temp_path(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise FileAccessError(f"cannot write here: {exc.strerror}", path=folder) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if precondition is not None:
            precondition()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_folder(folder)
