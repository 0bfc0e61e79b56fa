"""``lorareg schema export``: write the JSON Schemas of lorareg's records."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def schema() -> None:
    """JSON Schemas of lorareg's metadata record and reports."""


@schema.command("export")
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("schemas"),
              show_default=True, help="Folder to write the *.schema.json files into.")
def export(directory: Path) -> None:
    """Write every JSON Schema to a folder (deterministic bytes, so a stale copy shows in a diff)."""
    from ..schema_files import export_json_schemas
    from .output import status

    directory.mkdir(parents=True, exist_ok=True)
    for path in export_json_schemas(directory):
        status(f"wrote {path}")
