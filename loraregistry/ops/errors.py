"""Errors of the adapter operations; all are ``LoraregError`` (exit 2) except a failing output (exit 1)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from ..errors import FileAccessError, IncompatibleArchitecture, LoraregError, UsageError


class OutputIsInput(UsageError):
    """The output path names one of the inputs; writing it would destroy the input."""


class RankTooHigh(UsageError):
    """A requested rank above what the adapter (or the merge) holds."""


class BadMergeWeight(UsageError):
    """An ``ADAPTER:WEIGHT`` argument whose weight is not a finite number."""


class MixedArchitectures(IncompatibleArchitecture):
    """Adapters for different base architectures cannot be merged."""


class DoraNeedsBase(UsageError):
    """DoRA's delta depends on the base weight, which this operation does not have."""


class UnsupportedModule(UsageError):
    """A module whose algorithm or shape this operation cannot handle."""


class TooLossy(LoraregError):
    """A lossy step (an SVD to a lower rank) would change some module by more than ``--max-error``; nothing was
    written (``--force`` writes it anyway). A check that failed: exit 1."""

    exit_code = 1


class OutputFailsVerify(LoraregError):
    """The written output has verify errors; it was not put in place (``--force`` to keep it anyway)."""

    exit_code = 1


class MalformedModule(LoraregError):
    """A module whose tensors no algorithm can read: shapes that do not compose, a non-float or empty factor,
    NaN/Inf values, a bad alpha, or a size no real base model has (``ops.validate``)."""


class InputTooLarge(LoraregError):
    """Processing the input needs more memory (or nesting) than there is; the file is absurd or damaged."""


# --- OS errors as one line naming the file -----------------------------------------------------------------

_OS_REASONS = {
    errno.ENOSPC: ("no space left on device", "free some space and run it again; no file was changed"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and run it again; no file was changed"),
    errno.ELOOP: ("too many levels of symbolic links (a symlink loop)", "point it at the real file"),
    errno.EACCES: ("permission denied", "check the file's and its folder's permissions"),
    errno.EPERM: ("operation not permitted", "check the file's and its folder's permissions"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "name a .safetensors file"),
    errno.ENOTDIR: ("a part of the path is not a folder", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.EROFS: ("read-only file system", "write the output somewhere writable"),
    errno.EIO: ("input/output error reading or writing the file", "check the disk"),
    errno.EFBIG: ("file too large for this file system", "write the output somewhere else"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}


def os_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> LoraregError:
    """``exc`` as a ``FileAccessError`` with a plain-words reason, naming ``exc.filename`` (else ``path``)."""
    if isinstance(exc, LoraregError):
        return exc
    reason, hint = _OS_REASONS.get(exc.errno, (exc.strerror or type(exc).__name__.lower(), None))
    named = exc.filename if exc.filename not in (None, "") else path
    return FileAccessError(reason, path=os.fsdecode(named) if named is not None else None, hint=hint)


@contextlib.contextmanager
def about(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Every error raised inside names ``path`` when it names no file yet: a LoraregError without a path
    gets it; an OSError, MemoryError or RecursionError becomes a one-line LoraregError about it."""
    try:
        yield
    except LoraregError as exc:
        if exc.path is None and path is not None:
            exc.path = os.fsdecode(path)
            exc.args = (exc.one_line(),)
        raise
    except OSError as exc:
        raise os_error(exc, path) from exc
    except MemoryError as exc:
        raise InputTooLarge("not enough memory to process this file (its tensors or header are too large "
                            "or damaged)", path=path, hint="`lorareg verify` tells what is wrong with it") from exc
    except RecursionError as exc:
        raise InputTooLarge("the file's metadata is nested too deeply to process", path=path,
                            hint="`lorareg verify` tells what is wrong with it") from exc
