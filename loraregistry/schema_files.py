"""JSON Schemas of lorareg's records, written with deterministic bytes so a stale copy shows in a diff.

It gathers records from several layers (the metadata schema, verify's output), so it sits above them, outside
the core ``schema`` package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .schema.metadata import AdapterMetadata

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schemas() -> dict[str, dict[str, Any]]:
    """{file name: JSON Schema} of every record lorareg stores or prints as ``--json``."""
    from .verify.outputs import VerifyRunModel  # pydantic only, no torch

    return {
        "adapter-metadata.v1.schema.json": {"$schema": JSON_SCHEMA_DIALECT, **AdapterMetadata.model_json_schema()},
        "verify-output.v1.schema.json": {"$schema": JSON_SCHEMA_DIALECT, **VerifyRunModel.model_json_schema()},
    }


def render(schema: dict[str, Any]) -> str:
    """Sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_json_schemas(directory: str | Path) -> list[Path]:
    """Write every schema into ``directory`` (created if missing); return the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8", newline="\n")
        written.append(path)
    return written
