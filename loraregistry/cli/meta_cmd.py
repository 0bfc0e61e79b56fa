"""``lorareg meta show|set|import|unset``: the canonical metadata record of an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .output import console, emit_json, status

_path = click.Path(path_type=Path)
_break_hardlinks = click.option(
    "--break-hardlinks", is_flag=True,
    help="Edit a file that has other hard links: this path gets its own new file, the other links keep the old one.")


@click.group()
def meta() -> None:
    """Show and edit an adapter's metadata (tensor bytes are never touched)."""


def _render(info: dict[str, Any]) -> None:
    import json

    out = console()
    out.print(f"[bold]{info['path']}[/bold]  (metadata from: {', '.join(info['sources']) or 'nothing'})")
    out.print(json.dumps(info["metadata"], indent=2, sort_keys=True), markup=False)
    if info["inferred"]:
        out.print(f"inferred from the weights: {', '.join(info['inferred'])}")
    for warning in info["warnings"]:
        out.print(f"warning: {warning}", markup=False)


@meta.command("show")
@click.argument("file", type=_path)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: metadata, sources, inferred, warnings, raw.")
@click.option("--raw", is_flag=True, help="Print the header's raw str->str metadata instead.")
def show(file: Path, as_json: bool, raw: bool) -> None:
    """Print the normalized metadata record (inferred fields marked)."""
    from ..meta import show_metadata

    info = show_metadata(file)
    if raw:
        emit_json(info["raw"])
    elif as_json:
        emit_json(info)
    else:
        _render(info)


@meta.command("set")
@click.argument("file", type=_path)
@click.option("-o", "--output", type=_path, help="Write a copy here instead of editing FILE in place.")
@click.option("--name")
@click.option("--description")
@click.option("--author")
@click.option("--license", "license_")
@click.option("--content-rating", type=click.Choice(["general", "mature", "adult"]))
@click.option("--trigger-words", help="Comma-separated trigger words (replaces the list).")
@click.option("--tags", help="Comma-separated tags (replaces the list).")
@click.option("--base", help="Base architecture id or alias (e.g. sd1, sdxl-base); an unknown one is refused with "
              "the list of ids.")
@click.option("--recommended-weight", type=float)
@click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
              help="Any field by dotted path; VALUE is JSON or a string (repeatable), e.g. training.seed=42.")
@click.option("--json", "as_json", is_flag=True)
@_break_hardlinks
def set_(file: Path, output: Path | None, name, description, author, license_, content_rating, trigger_words, tags,
         base, recommended_weight, assignments, as_json, break_hardlinks) -> None:
    """Edit fields in place; tensor bytes and the AutoV3 hash stay identical. A failed edit changes nothing.

    A symlink is followed (the real file is edited). Concurrent edits of one file take turns (a lock), so
    none is lost."""
    from ..architectures import get
    from ..meta import parse_assignment, write_metadata

    updates: dict[str, Any] = {}
    simple = {"name": name, "description": description, "author": author, "license": license_,
              "content_rating": content_rating, "recommended_weight": recommended_weight}
    updates.update({k: v for k, v in simple.items() if v is not None})
    if trigger_words is not None:
        updates["trigger_words"] = [w.strip() for w in trigger_words.split(",") if w.strip()]
    if tags is not None:
        updates["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
    if base is not None:
        updates["base.architecture"] = get(base).id
    for text in assignments:
        field, value = parse_assignment(text)
        updates[field] = value
    if not updates:
        raise click.UsageError("nothing to set: give at least one option (see --help)")
    info = write_metadata(file, updates=updates, out=output, break_hardlinks=break_hardlinks)
    if as_json:
        emit_json(info)
    else:
        status(f"updated {info['path']}: {', '.join(sorted(updates))}")


@meta.command("import")
@click.argument("file", type=_path)
@click.option("-o", "--output", type=_path, help="Write a copy here instead of editing FILE in place.")
@click.option("--json", "as_json", is_flag=True)
@_break_hardlinks
def import_(file: Path, output: Path | None, as_json: bool, break_hardlinks: bool) -> None:
    """Write the canonical record built from the file's kohya / modelspec / diffusers metadata and its weights."""
    from ..meta import write_metadata

    info = write_metadata(file, out=output, break_hardlinks=break_hardlinks)
    if as_json:
        emit_json(info)
    else:
        _render(info)
        status(f"wrote the lorareg record into {info['path']}")


@meta.command("unset")
@click.argument("file", type=_path)
@click.argument("names", nargs=-1, required=True, metavar="FIELD|HEADER_KEY...")
@click.option("-o", "--output", type=_path, help="Write a copy here instead of editing FILE in place.")
@click.option("--json", "as_json", is_flag=True)
@_break_hardlinks
def unset(file: Path, names: tuple[str, ...], output: Path | None, as_json: bool, break_hardlinks: bool) -> None:
    """Remove record fields (e.g. license, network.conv_rank) or header keys (e.g. ss_tag_frequency).

    `lorareg` alone removes the whole record without reading it (for a record that no longer validates;
    `lorareg meta import FILE` builds a new one). Tensor bytes stay identical."""
    from ..meta import unset_metadata

    info = unset_metadata(file, names, out=output, break_hardlinks=break_hardlinks)
    if as_json:
        emit_json(info)
    else:
        status(f"updated {info['path']}: removed {', '.join(names)}")
