"""``lorareg civitai lookup``: what Civitai knows about a file, by its AutoV2 hash."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, status


@click.group()
def civitai() -> None:
    """Civitai's public API (CIVITAI_ENDPOINT, default https://civitai.com; token from CIVITAI_TOKEN)."""


@civitai.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--registry", "whole_registry", is_flag=True,
              help="Look up the registry's entries (those not looked up before) instead of FILES.")
@click.option("--refresh", is_flag=True, help="With --registry: look up every entry again.")
@click.option("--endpoint", metavar="URL", help="Civitai endpoint (default: $CIVITAI_ENDPOINT, else civitai.com).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def lookup(files: tuple[Path, ...], whole_registry: bool, refresh: bool, endpoint: str | None, as_json: bool) -> int:
    """Look FILES (or --registry) up by AutoV2; trigger words, base model, model/version ids and preview URLs
    go into the registry record (source civitai-api) of the entry with the same bytes."""
    from ..civitai import CivitaiClient, lookup_files, lookup_registry
    from ..errors import UsageError
    from ..registry import Registry

    if bool(files) == whole_registry:
        raise UsageError("give FILES or --registry (one of them)", hint="lorareg civitai lookup --help")
    if refresh and not whole_registry:
        raise UsageError("--refresh goes with --registry")
    client = CivitaiClient.from_env(endpoint)
    with Registry.open() as reg:
        if whole_registry:
            results = lookup_registry(reg, client=client, refresh=refresh)
        else:
            results = lookup_files(list(files), client=client, registry=reg)
    if as_json:
        emit_json([r.to_dict() for r in results])
        return 0
    for r in results:
        if not r.found:
            click.echo(f"{r.autov2}  {r.name}: not on Civitai")
            continue
        words = ", ".join(r.value("trigger_words") or []) or "no trigger words"
        click.echo(f"{r.autov2}  {r.name}: {r.value('name') or '?'} (model {r.value('civitai_model_id')}, version "
                   f"{r.value('civitai_version_id')}, {r.value('base_model') or 'base not given'}): {words}")
        for problem in r.problems:
            status(f"{r.name}: Civitai's answer: {problem}")
    recorded = sum(1 for r in results if r.recorded)
    status(f"{len(results)} looked up, {sum(r.found for r in results)} found, {recorded} recorded in the registry")
    return 0
