"""Errors of the local registry, each saying what to run next."""

from __future__ import annotations

from ..errors import FileAccessError, LoraregError


class RegistryError(LoraregError):
    """Root of the registry's errors."""


class RegistryCorrupt(RegistryError):
    """The SQLite index cannot be read; the store itself is intact and can be re-indexed."""

    def __init__(self, db_path: str, detail: str) -> None:
        super().__init__(f"the registry database is corrupt ({detail})", path=db_path,
                         hint="run `lorareg registry rebuild`: it re-indexes the stored adapters, nothing is lost")


class RegistryNotWritable(RegistryError, FileAccessError):
    """The registry folder cannot be created or written."""

    def __init__(self, root: str, detail: str) -> None:
        super().__init__(f"the registry folder is not writable ({detail})", path=root,
                         hint="fix its permissions, or point LORAREG_HOME at a writable folder")


class EntryNotFound(RegistryError, KeyError):
    """No entry matches an id, sha256 prefix or name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.one_line()


class AmbiguousEntry(RegistryError, ValueError):
    """A sha256 prefix or name that matches several entries."""


class BlobIntegrityError(RegistryError):
    """A stored file is missing or no longer holds the bytes its entry was added with (a failed check)."""

    exit_code = 1
