"""Base architectures: ids, aliases and module fingerprints."""

# fingerprints reads its data lazily with the standard library only: importing it is cheap, no torch.
from .fingerprints import (
    Fingerprint,
    ModuleSpec,
    fingerprint,
    fingerprint_names,
    flat_name_index,
    kohya_default_targets,
)
from .ids import ARCHITECTURES, Architecture, get, resolve

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Fingerprint",
    "ModuleSpec",
    "fingerprint",
    "fingerprint_names",
    "flat_name_index",
    "get",
    "kohya_default_targets",
    "resolve",
]
