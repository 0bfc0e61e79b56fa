"""The embedded local registry: SQLite (WAL) index + content-addressed store, zero setup.

    from loraregistry.registry import Registry
    with Registry.open() as reg:          # LORAREG_HOME, else the user data dir
        entry = reg.add("style.safetensors")
        reg.search("pixel", architecture="sdxl", trigger="pxl", tag="style", rating="general")

``rebuild()`` re-indexes the store when the database is corrupt (``RegistryCorrupt`` says so);
``reg.check()`` re-hashes every stored file.
"""

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

__all__ = [
    "ENV_HOME",
    "RATINGS",
    "AmbiguousEntry",
    "BlobCheck",
    "BlobIntegrityError",
    "Entry",
    "EntryNotFound",
    "Origin",
    "RebuildResult",
    "Registry",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryNotWritable",
    "Verdict",
    "default_root",
    "rebuild",
]
