"""The canonical metadata record (``AdapterMetadata``) and import/export of foreign conventions.

Pure pydantic: no torch, no numpy. ``import_metadata`` reads any header (``lorareg``, ``modelspec.*``,
kohya ``ss_*``, diffusers ``lora_adapter_metadata``, or nothing plus the weights' facts);
``project_metadata`` / ``merge_projection`` give the header keys to write for a record.

The names below load on first use: building the pydantic models takes longer than a header-level verify of a
clean file does in all, and that needs only ``HEADER_KEY`` and ``import_light`` (see ``light``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .keys import HEADER_KEY, SCHEMA_VERSION

if TYPE_CHECKING:
    from .metadata import (
        AdapterMetadata,
        BaseInfo,
        NetworkInfo,
        Parent,
        Provenance,
        TrainingInfo,
        from_header_value,
        read_header_value,
        to_header_value,
    )
    from .resolve import (
        ImportedMetadata,
        LightImport,
        import_light,
        import_metadata,
        merge_projection,
        owned_keys,
        project_metadata,
        split_sources,
    )

_LAZY = {
    **dict.fromkeys(("AdapterMetadata", "BaseInfo", "NetworkInfo", "Parent", "Provenance", "TrainingInfo",
                     "from_header_value", "read_header_value", "to_header_value"), ".metadata"),
    **dict.fromkeys(("ImportedMetadata", "LightImport", "import_light", "import_metadata", "merge_projection",
                     "owned_keys", "project_metadata", "split_sources"), ".resolve"),
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


__all__ = [
    "HEADER_KEY",
    "SCHEMA_VERSION",
    "AdapterMetadata",
    "BaseInfo",
    "ImportedMetadata",
    "LightImport",
    "NetworkInfo",
    "Parent",
    "Provenance",
    "TrainingInfo",
    "from_header_value",
    "import_light",
    "import_metadata",
    "merge_projection",
    "owned_keys",
    "project_metadata",
    "read_header_value",
    "split_sources",
    "to_header_value",
]
