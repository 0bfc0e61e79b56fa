"""``lorareg registry add | scan | list | show | rm | export | export-sidecars | check | rebuild``: the embedded
local registry."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .output import cell, console, emit_json, safe_line, status

_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _say(text: str) -> None:
    """A line on stdout made of registry fields, which come from files and servers: controls made visible."""
    click.echo(safe_line(text))


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

    verify_with = None
    if run_verify:
        from ..verify import verify as verify_with
    with Registry.open() as reg:  # in order, each file verified just before it is added; the first failure stops
        entries = reg.add_many(list(files), verify_with=verify_with)
    if as_json:
        emit_json([e.to_dict() for e in entries])
    else:
        for e in entries:
            click.echo(safe_line(f"{e.id}  {e.title}  ({e.architecture or 'unknown base'}, {_verdict(e)})"))
    return 0


@registry.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--verify/--no-verify", "run_verify", default=True, show_default=True,
              help="Verify new files and record verify and per-loader verdicts.")
@click.option("--jobs", type=click.IntRange(1, 64), metavar="N",
              help="Processes for files that must be read (default: the cores idle now, at most 8).")
@_json
def scan(folders: tuple[Path, ...], run_verify: bool, jobs: int | None, as_json: bool) -> int:
    """Index LoRA folders in place (ComfyUI models/loras, A1111/Forge models/Lora): no copy.

    Records every hash (cached: unchanged files are not read again), verdicts, sidecars (name.json,
    name.civitai.info) and previews; reports new, changed, moved and removed files and duplicates."""
    from ..registry import Registry

    with Registry.open() as reg:
        result = reg.scan(list(folders), verify_files=run_verify, jobs=jobs)
    if as_json:
        emit_json(result.to_dict())
        return 0
    for path in result.new:
        _say(f"new      {path}")
    for path in result.changed:
        _say(f"changed  {path}")
    for old, new in result.moved:
        _say(f"moved    {old} -> {new}")
    for path in result.removed:
        _say(f"removed  {path}")
    for group in result.duplicates:
        _say(f"duplicate weights (tensor sha256 {group['tensor_sha256'][:12]}): " + ", ".join(group["paths"]))
    for path, reason in result.skipped:
        status(f"skipped {path}: {reason}")
    for path, problem in result.sidecar_problems:
        status(f"sidecar of {path}: {problem}")
    status(f"scanned {result.files} file(s) in {result.seconds:.2f} s: {result.hashed} read, "
           f"{result.cached} from the hash cache, {result.unchanged} unchanged")
    return 0


@registry.command(name="list")
@click.argument("query", required=False)
@click.option("--base", "architecture", help="Architecture id or alias, or a finer base (Pony, Illustrious, NoobAI).")
@click.option("--loads-in", "loader", help="Only entries this loader loads fully (comfyui, a1111, forge, ...).")
@click.option("--trigger", help="Trigger word or phrase.")
@click.option("--tag", help="Tag (exact, case-insensitive).")
@click.option("--rating", type=click.Choice(["general", "mature", "adult"]), help="Content rating.")
@click.option("--limit", type=click.IntRange(1), help="At most this many entries.")
@_json
def list_entries(query: str | None, architecture: str | None, loader: str | None, trigger: str | None,
                 tag: str | None, rating: str | None, limit: int | None, as_json: bool) -> int:
    """List entries, newest first; QUERY searches names, descriptions, trigger words and tags."""
    from ..registry import Registry

    with Registry.open() as reg:
        entries = reg.search(query, architecture=architecture, trigger=trigger, tag=tag, rating=rating,
                             loader=loader, limit=limit)
    if as_json:
        emit_json([e.to_dict() for e in entries])
        return 0
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "base", "trigger words", "tags", "rating", "verify"):
        table.add_column(column)
    for e in entries:
        base = e.architecture or ""
        if e.sub_base:
            base = f"{base} ({e.sub_base})" if base else e.sub_base
        table.add_row(*map(cell, (e.id, e.title, base, ", ".join(e.all_trigger_words), ", ".join(e.tags),
                                  e.content_rating, _verdict(e))))  # file-derived: literal, controls escaped
    console().print(table)
    if not entries:
        status("no entries")
    damaged = [e for e in entries if e.blob not in ("ok", "in_place", "gone")]
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
        _say(f"{key:15} {', '.join(value) if isinstance(value, list) else value}")
    _say(f"{'verify':15} {_verdict(entry)}")
    _say(f"{'stored file':15} {_blob_line(entry)}")
    for origin in entry.origins:
        _say(f"{'origin':15} {origin.describe()}")
    if entry.sub_base:
        _say(f"{'finer base':15} {entry.sub_base}")
    for name, outcome in sorted(entry.loaders.items()):
        _say(f"{'loader':15} {name}: {outcome}")
    for location in entry.locations:
        moved = f" -> {location['moved_to']}" if location.get("moved_to") else ""
        _say(f"{'location':15} {location['path']} ({location['state']}{moved})")
    for fact in entry.imported.get("facts", ()):
        _say(f"{'imported':15} {fact['field']} = {fact['value']} (from {fact['source']}: {fact['file']})")
    for conflict in entry.imported.get("conflicts", ()):
        _say(f"{'conflict':15} {conflict['field']}: the file declares {conflict['declared']!r}, "
                   f"{conflict['source']} says {conflict['imported']!r} (the file's value is kept)")
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
        _say(f"removed {entry.id}  {entry.title}")
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


@registry.command(name="export-sidecars")
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite fields a user edited (and sidecars that are not JSON).")
@_json
def export_sidecars(folders: tuple[Path, ...], force: bool, as_json: bool) -> int:
    """Write A1111/Forge name.json sidecars next to scanned files (under FOLDERS, default: all).

    Writes the record's declared description, trigger words, weight and SD version; keeps other fields and
    fields a user edited (unless --force). Exit 1 when a sidecar could not be written."""
    from ..registry import Registry

    with Registry.open() as reg:
        results = reg.export_sidecars(roots=[str(f) for f in folders] or None, force=force)
    if as_json:
        emit_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.action != "unchanged" or r.kept:
                kept = f" (kept your {', '.join(r.kept)})" if r.kept else ""
                _say(f"{r.action:9} {r.path}{kept}{': ' + r.detail if r.detail else ''}")
        written = sum(r.action == "written" for r in results)
        status(f"{written} sidecar(s) written, {len(results) - written} not")
    return 1 if any(r.action == "refused" for r in results) else 0


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
                _say(f"{c.sha256[:12]}  {c.title}: {c.status}: {c.detail} ({c.path})")
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
        _say(f"indexed {result.indexed} adapters")
        for path, reason in result.skipped:
            status(f"skipped {path}: {reason}")
        for sha, title, reason in result.dropped:
            status(f"dropped {sha[:12]} {title}: {reason}")
    return 0 if result.ok else 1


def _blob_line(entry) -> str:
    if entry.blob == "in_place":
        return "indexed in place (no stored copy; `lorareg registry scan` re-checks it)"
    if entry.blob == "gone":
        return "indexed in place, but no scanned location holds it any more"
    if entry.blob == "ok":
        return "ok (size and mtime as stored; `lorareg registry check` re-hashes)"
    if entry.blob == "missing":
        return "MISSING: the stored file is gone (run `lorareg registry check`)"
    return "CHANGED: size or mtime differ from when it was stored (run `lorareg registry check`)"


def _verdict(entry) -> str:
    if entry.blob == "gone":
        return "FILE GONE"
    if entry.blob not in ("ok", "in_place"):  # a verdict about bytes the registry no longer holds means nothing
        return f"STORED FILE {entry.blob.upper()}"
    if entry.verdict is None:
        return "not verified"
    return "ok" if entry.verdict.ok else "errors: " + ", ".join(entry.verdict.error_codes)
