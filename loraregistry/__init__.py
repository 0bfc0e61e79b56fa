"""loraregistry: verifiable, shareable Stable Diffusion LoRA adapters.

The package imports lazily: ``import loraregistry`` loads neither numpy nor torch; names below are
resolved on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "AdapterFile": "loraregistry.adapter",
    "LoraregError": "loraregistry.errors",
    "AdapterMetadata": "loraregistry.schema",
    "Report": "loraregistry.verify",
    "verify": "loraregistry.verify",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .adapter import AdapterFile
    from .errors import LoraregError
    from .schema import AdapterMetadata
    from .verify import Report, verify


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loraregistry' has no attribute {name!r}")
