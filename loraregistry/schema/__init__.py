"""The canonical metadata record (``AdapterMetadata``) and import/export of foreign conventions.

Pure pydantic: no torch, no numpy. ``import_metadata`` reads any header (``lorareg``, ``modelspec.*``,
kohya ``ss_*``, diffusers ``lora_adapter_metadata``, or nothing plus the weights' facts);
``project_metadata`` / ``merge_projection`` give the header keys to write for a record.
"""

from .metadata import (
    HEADER_KEY,
    SCHEMA_VERSION,
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
from .resolve import ImportedMetadata, import_metadata, merge_projection, owned_keys, project_metadata, split_sources

__all__ = [
    "HEADER_KEY",
    "SCHEMA_VERSION",
    "AdapterMetadata",
    "BaseInfo",
    "ImportedMetadata",
    "NetworkInfo",
    "Parent",
    "Provenance",
    "TrainingInfo",
    "from_header_value",
    "import_metadata",
    "merge_projection",
    "owned_keys",
    "project_metadata",
    "read_header_value",
    "split_sources",
    "to_header_value",
]
