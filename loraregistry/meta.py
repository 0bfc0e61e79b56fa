"""Read and edit an adapter's canonical metadata in place, keeping every tensor byte identical."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from .adapter import AdapterFile
from .errors import LoraregError, MetadataError, UsageError
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
    except (ValueError, RecursionError):  # ValueError: also integers past Python's 4,300 digits
        value = raw
    return field.strip(), value


def write_metadata(path: str | os.PathLike[str], *, updates: dict[str, Any] | None = None,
                   out: str | os.PathLike[str] | None = None, break_hardlinks: bool = False,
                   drop_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply ``updates`` (dotted field -> value; None removes) to the file's canonical record, record the
    tensor hash, and rewrite the header: the record under ``lorareg`` plus its projections onto
    ``modelspec.*`` and ``ss_*``; other foreign keys are kept, except ``drop_keys`` (header keys the file must
    have; MetadataError otherwise). Validation happens before anything is
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
        _require_keys(source, adapter.header.metadata, drop_keys)
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
        for key in drop_keys:  # after the projection: a key it writes from a record field goes too, this time
            new_header.pop(key, None)
        # the copied tensor bytes are checked against autov3 before the rename, so a failure changes nothing
        rewrite_metadata(source, new_header, out=target, expect=seen, tensor_sha256=autov3,
                         break_hardlinks=break_hardlinks)
    return show_metadata(target)


def _require_keys(source: Path, header: dict[str, str], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in header]
    if missing:
        raise MetadataError(f"no record field or header key {missing[0]!r}", path=source,
                            hint=f"`lorareg meta show {shlex.quote(str(source))} --json` lists the record's fields and, under raw, "
                                 "the header keys")


def unset_metadata(path: str | os.PathLike[str], names: list[str] | tuple[str, ...], *,
                   out: str | os.PathLike[str] | None = None, break_hardlinks: bool = False) -> dict[str, Any]:
    """Remove record fields (dotted paths such as ``license`` or ``network.conv_rank``: back to their default) and
    header keys (``ss_tag_frequency``, a tool's own key) in one edit; tensor bytes stay identical.

    ``lorareg`` names the record itself and must come alone: it is removed without being read, which is the way
    out of a record that no longer validates (``lorareg meta import`` then builds a new one). Returns what
    ``show_metadata`` returns."""
    from .schema import HEADER_KEY
    from .schema.metadata import field_paths

    names = tuple(dict.fromkeys(names))
    if not names:
        raise UsageError("nothing to unset", hint="name record fields (e.g. license) or header keys")
    if HEADER_KEY in names:
        if len(names) > 1:
            raise UsageError(f"unset {HEADER_KEY!r} alone: it removes the whole record",
                             hint="run `lorareg meta unset FILE lorareg` first, then the other names")
        return _drop_record(Path(path), out=out, break_hardlinks=break_hardlinks)
    fields = {name: None for name in names if name in field_paths()}
    keys = tuple(name for name in names if name not in fields)
    return write_metadata(path, updates=fields, out=out, break_hardlinks=break_hardlinks, drop_keys=keys)


def _drop_record(source: Path, *, out: str | os.PathLike[str] | None, break_hardlinks: bool) -> dict[str, Any]:
    from .safetensors_io import read_header
    from .schema import HEADER_KEY

    target = Path(out) if out is not None else source
    with edit_lock(source) as seen:
        header = read_header(source)
        _require_keys(source, header.metadata, (HEADER_KEY,))
        kept = {key: value for key, value in header.metadata.items() if key != HEADER_KEY}
        rewrite_metadata(source, kept, out=target, expect=seen,
                         tensor_sha256=tensor_sha256(source, header.data_offset), break_hardlinks=break_hardlinks)
    return show_metadata(target)
