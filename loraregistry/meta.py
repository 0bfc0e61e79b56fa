"""Read and edit an adapter's canonical metadata in place, keeping every tensor byte identical."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .adapter import AdapterFile
from .errors import LoraregError, MetadataError
from .hashes import tensor_sha256
from .atomic_write import edit_lock
from .safetensors_io import rewrite_metadata


def show_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The canonical record, where each part came from, what was inferred, and the raw header metadata."""
    adapter = AdapterFile.open(path)
    imported = adapter.imported
    return {
        "path": str(adapter.path),
        "metadata": imported.metadata.model_dump(mode="json", exclude_none=True),
        "sources": sorted(k for k, v in imported.sources.items() if v),
        "inferred": list(imported.inferred),
        "warnings": list(imported.warnings),
        "raw": dict(adapter.header.metadata),
    }


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise MetadataError(f"cannot set {dotted!r}: {part!r} is not a group of fields")
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def _still_inferred(inferred: list[str], data: dict[str, Any], updates: dict[str, Any]) -> list[str]:
    """The inferred field paths that still hold a value nobody declared: a field the user sets is declared."""
    def touched(path: str) -> bool:
        return any(path == f or path.startswith(f + ".") or f.startswith(path + ".") for f in updates)

    def has_value(path: str) -> bool:
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node not in (None, [], {})

    return [p for p in dict.fromkeys(inferred) if not touched(p) and has_value(p)]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``field.path=value``; the value is read as JSON when it parses, else taken as a string."""
    if "=" not in text:
        raise MetadataError(f"expected FIELD=VALUE, got {text!r}", hint="e.g. --set training.seed=42")
    field, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        value = raw
    return field.strip(), value


def write_metadata(path: str | os.PathLike[str], *, updates: dict[str, Any] | None = None,
                   out: str | os.PathLike[str] | None = None, break_hardlinks: bool = False) -> dict[str, Any]:
    """Apply ``updates`` (dotted field -> value; None removes) to the file's canonical record, record the
    tensor hash, and rewrite the header: the record under ``lorareg`` plus its projections onto
    ``modelspec.*`` and ``ss_*``; other foreign keys are kept. Validation happens before anything is
    written, so a failed edit leaves the file untouched. Returns what ``show_metadata`` returns.

    Concurrent edits never lose each other: the file is locked (``edit_lock``) and re-read under the lock,
    and the rename only happens while it is still the file that was read (compare-and-swap). A symlink is
    followed (the real file is edited); a file with other hard links is refused unless ``break_hardlinks``."""
    from .schema import AdapterMetadata, merge_projection
    from .schema.metadata import describe_validation_error

    source = Path(path)
    target = Path(out) if out is not None else source
    with edit_lock(source) as seen:  # every read below sees the file that the compare-and-swap expects
        adapter = AdapterFile.open(source)
        imported = adapter.imported
        data = imported.metadata.model_dump(mode="json", exclude_none=True)
        for field, value in (updates or {}).items():
            _set_dotted(data, field, value)
        autov3 = tensor_sha256(source, adapter.header.data_offset)
        # A hash we measure is no declaration: it backs modelspec.hash_sha256 / sshs_model_hash only if declared.
        declared_hash = imported.metadata.tensor_sha256 == autov3 and "tensor_sha256" not in imported.inferred
        data["tensor_sha256"] = autov3
        data["inferred"] = _still_inferred([*imported.inferred, *([] if declared_hash else ["tensor_sha256"])],
                                           data, updates or {})
        try:
            meta = AdapterMetadata.model_validate(data)
        except LoraregError:
            raise
        except Exception as exc:  # pydantic.ValidationError: name the field and the problem, one line
            raise MetadataError(f"invalid metadata: {describe_validation_error(exc)}", path=source,
                                hint="see `lorareg schema export` for the allowed fields and values") from None
        new_header = merge_projection(dict(adapter.header.metadata), meta)
        # the copied tensor bytes are checked against autov3 before the rename, so a failure changes nothing
        rewrite_metadata(source, new_header, out=target, expect=seen, tensor_sha256=autov3,
                         break_hardlinks=break_hardlinks)
    return show_metadata(target)
