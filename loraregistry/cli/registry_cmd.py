"""``lorareg registry add | list | show | rm | export | check | rebuild``: the embedded local registry."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .output import console, emit_json, status

_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group()
def registry() -> None:
    """The local registry of adapters (under $LORAREG_HOME, else the user data folder)."""


@registry.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--verify/--no-verify", "run_verify", default=True, show_default=True,
              help="Verify each file and record the verdict (a failing file is still added).")
@_json
def add(files: tuple[Path, ...], run_verify: bool, as_json: bool) -> int:
    """Add adapter files (stored by content; adding the same bytes twice records the new origin only)."""
    from ..registry import Registry

    entries = []
    with Registry.open() as reg:
        for path in files:
            report = None
            if run_verify:
                from ..verify import verify

                report = verify(path)
            entries.append(reg.add(path, report=report))
    if as_json:
        emit_json([e.to_dict() for e in entries])
    else:
        for e in entries:
            click.echo(f"{e.id}  {e.title}  ({e.architecture or 'unknown base'}, {_verdict(e)})")
    return 0


@registry.command(name="list")
@click.argument("query", required=False)
@click.option("--base", "architecture", help="Architecture id or alias.")
@click.option("--trigger", help="Trigger word or phrase.")
@click.option("--tag", help="Tag (exact, case-insensitive).")
@click.option("--rating", type=click.Choice(["general", "mature", "adult"]), help="Content rating.")
@click.option("--limit", type=click.IntRange(1), help="At most this many entries.")
@_json
def list_entries(query: str | None, architecture: str | None, trigger: str | None, tag: str | None,
                 rating: str | None, limit: int | None, as_json: bool) -> int:
    """List entries, newest first; QUERY searches names, descriptions, trigger words and tags."""
    from ..registry import Registry

    with Registry.open() as reg:
        entries = reg.search(query, architecture=architecture, trigger=trigger, tag=tag, rating=rating, limit=limit)
    if as_json:
        emit_json([e.to_dict() for e in entries])
        return 0
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "base", "trigger words", "tags", "rating", "verify"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.id, e.title, e.architecture or "", ", ".join(e.trigger_words), ", ".join(e.tags),
                      e.content_rating, _verdict(e))
    console().print(table)
    if not entries:
        status("no entries")
    damaged = [e for e in entries if e.blob != "ok"]
    if damaged:
        status(f"{len(damaged)} stored file(s) missing or changed: run `lorareg registry check`")
    return 0


@registry.command()
@click.argument("ref", metavar="ID")
@_json
def show(ref: str, as_json: bool) -> int:
    """Show one entry: ID is an id, a sha256 prefix (4+ hex digits) or a name."""
    from ..registry import Registry

    with Registry.open() as reg:
        entry = reg.show(ref)
    data = entry.to_dict()
    if as_json:
        emit_json(data)
        return 0
    for key in ("id", "sha256", "name", "file_name", "size", "architecture", "format", "network_type", "rank",
                "content_rating", "trigger_words", "tags", "path", "added_at"):
        value = data[key]
        click.echo(f"{key:15} {', '.join(value) if isinstance(value, list) else value}")
    click.echo(f"{'verify':15} {_verdict(entry)}")
    click.echo(f"{'stored file':15} {_blob_line(entry)}")
    for origin in entry.origins:
        click.echo(f"{'origin':15} {origin.describe()}")
    return 0


@registry.command(name="rm")
@click.argument("ref", metavar="ID")
@_json
def remove(ref: str, as_json: bool) -> int:
    """Remove an entry and its stored file."""
    from ..registry import Registry

    with Registry.open() as reg:
        entry = reg.remove(ref)
    if as_json:
        emit_json(entry.to_dict())
    else:
        click.echo(f"removed {entry.id}  {entry.title}")
    return 0


@registry.command()
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write here (default: stdout).")
def export(output: Path | None) -> int:
    """Every entry as JSON lines (metadata, hashes, origins, verdicts)."""
    from ..registry import Registry

    with Registry.open() as reg:
        if output is None:
            count = reg.export_jsonl(sys.stdout)
        else:
            import io

            from ..safetensors_io import atomic_write

            buffer = io.StringIO()
            count = reg.export_jsonl(buffer)
            with atomic_write(output) as f:
                f.write(buffer.getvalue().encode("utf-8"))
    status(f"exported {count} entries")
    return 0


@registry.command()
@_json
def check(as_json: bool) -> int:
    """Re-hash every stored file against its entry. Exit 1 when one is missing, changed or unreadable."""
    from ..registry import Registry

    with Registry.open() as reg:
        found = reg.check()
    problems = [c for c in found if not c.ok]
    if as_json:
        emit_json([c.to_dict() for c in found])
    else:
        for c in found:
            if c.status != "ok":
                click.echo(f"{c.sha256[:12]}  {c.title}: {c.status}: {c.detail} ({c.path})")
        checked = sum(1 for c in found if c.status != "unindexed")
        status(f"checked {checked} stored file(s): {len(problems)} problem(s)")
    return 1 if problems else 0


@registry.command()
@_json
def rebuild(as_json: bool) -> int:
    """Re-index the store from the files themselves (after `the registry database is corrupt`)."""
    from ..registry import rebuild as rebuild_index

    result = rebuild_index()
    if as_json:
        emit_json(result.to_dict())
    else:
        if result.moved_aside:
            status(f"old database kept as {result.moved_aside}")
        click.echo(f"indexed {result.indexed} adapters")
        for path, reason in result.skipped:
            status(f"skipped {path}: {reason}")
        for sha, title, reason in result.dropped:
            status(f"dropped {sha[:12]} {title}: {reason}")
    return 0 if result.ok else 1


def _blob_line(entry) -> str:
    if entry.blob == "ok":
        return "ok (size and mtime as stored; `lorareg registry check` re-hashes)"
    if entry.blob == "missing":
        return "MISSING: the stored file is gone (run `lorareg registry check`)"
    return "CHANGED: size or mtime differ from when it was stored (run `lorareg registry check`)"


def _verdict(entry) -> str:
    if entry.blob != "ok":  # a verdict about bytes the registry no longer holds means nothing
        return f"STORED FILE {entry.blob.upper()}"
    if entry.verdict is None:
        return "not verified"
    return "ok" if entry.verdict.ok else "errors: " + ", ".join(entry.verdict.error_codes)
