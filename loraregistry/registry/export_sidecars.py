"""``export_sidecars``: write A1111/Forge ``name.json`` sidecars from the registry's records.

Only declared facts go out (DESIGN: foreign keys are written from declared facts only): the record's
description, trigger words (``activation text``), recommended weight (``preferred weight``) and declared
architecture (``sd version``). Fields lorareg does not manage (``notes``, ``negative text``, a tool's own keys)
are kept as they are.

A field is the user's when the sidecar holds a non-empty value that differs from what lorareg last wrote there
(remembered per path in ``sidecar_exports``); such a field is kept unless ``force``. Each file is replaced
atomically, and only if it did not change between the read and the rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LoraregError
from .db import sqlite_errors, transaction
from .sidecars import A1111_SUFFIX, MAX_SIDECAR_BYTES

_SD_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


@dataclass
class SidecarExport:
    """One sidecar: ``action`` is written, unchanged or refused; ``kept`` the user's fields left alone."""

    path: str
    action: str
    kept: list[str] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "action": self.action, "kept": self.kept, "detail": self.detail}


def sidecar_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    """The A1111 sidecar fields a record declares (empty ones left out)."""
    from ..architectures import ids

    out: dict[str, Any] = {}
    if metadata.get("description"):
        out["description"] = metadata["description"]
    if metadata.get("trigger_words"):
        out["activation text"] = ", ".join(metadata["trigger_words"])
    if metadata.get("recommended_weight") is not None:
        out["preferred weight"] = metadata["recommended_weight"]
    arch = ids.resolve((metadata.get("base") or {}).get("architecture"))
    if arch is not None and arch.family in _SD_VERSION:
        out["sd version"] = _SD_VERSION[arch.family]
    return out


def export_sidecars(registry: Any, *, roots: list[str] | None = None, force: bool = False) -> list[SidecarExport]:
    """Write the sidecar of every present in-place location (under ``roots`` when given)."""
    conn = registry._conn
    with sqlite_errors(registry.db_path):
        rows = conn.execute("SELECT l.path AS path, e.metadata AS metadata, x.fields AS exported FROM locations l "
                            "JOIN entries e ON e.sha256 = l.sha256 "
                            "LEFT JOIN sidecar_exports x ON x.path = l.path "
                            "WHERE l.state = 'present' ORDER BY l.path").fetchall()
    wanted = [Path(r).resolve() for r in roots] if roots else None
    results = []
    for row in rows:
        adapter = Path(row["path"])
        if wanted is not None and not any(adapter.is_relative_to(root) for root in wanted):
            continue
        ours = sidecar_fields(json.loads(row["metadata"]))
        last = json.loads(row["exported"]) if row["exported"] else {}
        result = _export_one(adapter.with_name(adapter.name.rsplit(".", 1)[0] + A1111_SUFFIX), ours, last, force)
        results.append(result)
        if result.action == "written":
            with sqlite_errors(registry.db_path), transaction(conn):
                conn.execute("INSERT INTO sidecar_exports (path, fields) VALUES (?, ?) ON CONFLICT (path) "
                             "DO UPDATE SET fields = excluded.fields", (str(adapter), json.dumps(ours, sort_keys=True)))
    return results


def _export_one(path: Path, ours: dict[str, Any], last: dict[str, Any], force: bool) -> SidecarExport:
    from ..atomic_write import atomic_write

    current, before = _read(path)
    if current is None and before is not None and not force:
        return SidecarExport(str(path), "refused", detail="not a JSON object; fix it, or pass --force to replace it")
    current = current or {}
    merged = dict(current)
    kept = []
    for key, value in ours.items():
        theirs = current.get(key)
        edited = theirs not in (None, "", 0) and theirs != value and theirs != last.get(key)
        if edited and not force:
            kept.append(key)
            continue
        merged[key] = value
    if merged == current and before is not None:
        return SidecarExport(str(path), "unchanged", kept)

    def unchanged_since_read() -> None:
        if _stamp(path) != before:
            raise LoraregError("changed while lorareg was writing it", path=path, hint="run the export again")

    try:
        with atomic_write(path, precondition=unchanged_since_read) as f:
            f.write((json.dumps(merged, indent=4, ensure_ascii=False) + "\n").encode("utf-8"))
    except LoraregError as exc:
        return SidecarExport(str(path), "refused", kept, exc.one_line())
    return SidecarExport(str(path), "written", kept)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _read(path: Path) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
    """(the sidecar as a dict, or None when absent or unusable; its (size, mtime) stamp, None when absent)."""
    stamp = _stamp(path)
    if stamp is None:
        return None, None
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        data = json.loads(raw.decode("utf-8-sig")) if len(raw) <= MAX_SIDECAR_BYTES else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None, stamp
    return (data if isinstance(data, dict) else None), stamp
