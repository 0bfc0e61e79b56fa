"""The embedded local registry: SQLite (WAL) index + content-addressed store, zero setup.

    from loraregistry.registry import Registry
    with Registry.open() as reg:          # LORAREG_HOME, else the user data dir
        entry = reg.add("style.safetensors")
        reg.search("pixel", architecture="sdxl", trigger="pxl", tag="style", rating="general")

``rebuild()`` re-indexes the store when the database is corrupt (``RegistryCorrupt`` says so);
``reg.check()`` re-hashes every stored file.

The names below load on first use: every operation imports ``registry.hash_cache`` (a stat and, with a registry, one
sqlite query), and importing the package for it must not import the whole registry (``.core`` and what it pulls in).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the submodule defining it
_EXPORTS = {
    "RATINGS": "core", "BlobCheck": "core", "RebuildResult": "core", "Registry": "core", "rebuild": "core",
    "Entry": "entry", "Origin": "entry", "Verdict": "entry",
    "AmbiguousEntry": "errors", "BlobIntegrityError": "errors", "EntryNotFound": "errors",
    "RegistryCorrupt": "errors", "RegistryError": "errors", "RegistryNotWritable": "errors",
    "ENV_HOME": "paths", "default_root": "paths",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from .core import RATINGS, BlobCheck, RebuildResult, Registry, rebuild
    from .entry import Entry, Origin, Verdict
    from .errors import (
        AmbiguousEntry,
        BlobIntegrityError,
        EntryNotFound,
        RegistryCorrupt,
        RegistryError,
        RegistryNotWritable,
    )
    from .paths import ENV_HOME, default_root
