"""``lorareg push | pull | search``: share adapters through a Hub endpoint. Thin: parse, call, render.

``hub.env.prepare`` runs before anything imports huggingface_hub (it reads its settings at import time).
Tokens come from ``--token`` or huggingface_hub's usual sources and are never printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from .output import console, emit_json, status

_endpoint = click.option("--endpoint", envvar="HF_ENDPOINT", metavar="URL",
                         help="Hub-compatible endpoint (default: $HF_ENDPOINT, else https://huggingface.co).")
_token = click.option("--token", metavar="TOKEN", help="Access token (default: HF_TOKEN or `hf auth login`).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.command()
@click.argument("adapter", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--repo", "repo_id", required=True, metavar="USER/NAME", help="Repo to push to (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--revision", metavar="BRANCH", help="Branch to commit to (default: main).")
@click.option("--sample", "samples", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Sample image to upload (repeatable); a same-name .txt next to it holds its prompt.")
@click.option("--message", "commit_message", help="Commit message.")
@click.option("--base", help="Verify against this base (architecture id or model path) before pushing.")
@_endpoint
@_token
@_json
def push(adapter: Path, repo_id: str, private: bool, revision: str | None, samples: tuple[Path, ...],
         commit_message: str | None, base: str | None, endpoint: str | None, token: str | None,
         as_json: bool) -> int:
    """Verify ADAPTER, then upload it with lorareg.json, samples and a model card in one commit."""
    from ..hub import env

    endpoint = env.prepare(endpoint)
    from ..hub import push as push_adapter

    result = push_adapter(adapter, repo_id, private=private, endpoint=endpoint, token=token, revision=revision,
                          samples=samples, commit_message=commit_message, base=base)
    if as_json:
        emit_json(result.to_dict())
    else:
        warnings = sum(1 for f in result.report.findings if f.severity == "warning")
        if warnings:
            status(f"verify: {warnings} warning(s); see `lorareg verify {adapter}`")
        click.echo(f"pushed {adapter.name} to {repo_id} at {result.commit[:12]} ({', '.join(result.files)})")
        click.echo(result.commit_url)
    return 0


@click.command()
@click.argument("spec", metavar="REPO[/FILE]")
@click.option("--revision", metavar="REV", help="Branch, tag or commit (default: main); recorded as its commit sha.")
@click.option("--dest", type=click.Path(path_type=Path, file_okay=False),
              help="Also copy the file into this folder.")
@click.option("--base", help="Verify against this base (architecture id or model path).")
@_endpoint
@_token
@_json
def pull(spec: str, revision: str | None, dest: Path | None, base: str | None, endpoint: str | None,
         token: str | None, as_json: bool) -> int:
    """Download an adapter at a pinned commit, check its hash, verify it, add it to the local registry.

    Exit 1 when verify finds errors (the adapter is registered with that verdict)."""
    from ..hub import env

    endpoint = env.prepare(endpoint)
    from ..hub import pull as pull_adapter

    result = pull_adapter(spec, revision=revision, endpoint=endpoint, token=token, dest=dest, base=base)
    if as_json:
        emit_json(result.to_dict())
    else:
        errors = result.report.summary["error"]
        verdict = "verify ok" if result.report.ok else f"verify found {errors} error(s)"
        click.echo(f"pulled {result.repo_id}/{result.filename} at {result.commit[:12]} -> registry "
                   f"{result.entry.id} ({verdict})")
        click.echo(result.path)
    return result.report.exit_code()


@click.command()
@click.argument("query", required=False)
@click.option("--base", help="Architecture id or alias (sd1, sdxl, flux1-dev, ...).")
@click.option("--trigger", help="Trigger word.")
@click.option("--tag", help="Tag.")
@click.option("--hub/--no-hub", "hub", default=None, help="Search the Hub (default: both).")
@click.option("--local/--no-local", "local", default=None, help="Search the local registry (default: both).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_endpoint
@_token
@_json
def search(query: str | None, base: str | None, trigger: str | None, tag: str | None, hub: bool | None,
           local: bool | None, limit: int, endpoint: str | None, token: str | None, as_json: bool) -> int:
    """Find adapters in the local registry and on the Hub. `--hub` or `--local` alone searches only there."""
    from ..hub import env

    search_hub, search_local = _sources(hub, local)
    endpoint = env.prepare(endpoint)
    from ..hub import search as find

    hits = find(query, base=base, trigger=trigger, tag=tag, hub=search_hub, local=search_local,
                endpoint=endpoint, token=token, limit=limit)
    if as_json:
        emit_json([h.to_dict() for h in hits])
        return 0
    from rich.table import Table

    from .output import markup_safe as escape  # controls made visible too

    table = Table(box=None, pad_edge=False)
    for column in ("source", "id", "name", "base", "trigger words", "rating"):
        table.add_column(column)
    for h in hits:  # servers and files chose these strings: shown as text, never as rich markup
        cells = (h.source, h.id, h.name or "", h.architecture or h.base_model or "", ", ".join(h.trigger_words),
                 h.content_rating or "")
        table.add_row(*(escape(cell) for cell in cells))
    console().print(table)
    if not hits:
        status("no adapters found")
    return 0


def _sources(hub: bool | None, local: bool | None) -> tuple[bool, bool]:
    """``--hub`` alone means only the Hub, ``--local`` alone only the registry; nothing means both."""
    if hub is None and local is None:
        return True, True
    if hub is None:
        return not local, bool(local)
    if local is None:
        return bool(hub), not hub
    return hub, local
