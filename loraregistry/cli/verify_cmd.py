"""``lorareg verify PATH...``: prove adapters load into their base; exit codes and outputs for CI gates.

The click command, for the command lines that fast_args.py leaves to click (help, errors, unusual spellings);
both ways run ``verify_run.run_verify``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..verify.consumers import target_option
from .verify_run import run_verify


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--base", help="Architecture id/alias (sd1, sdxl-base, ...) or a diffusers model folder / single-file "
                             "checkpoint to check every module against (headers only).")
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@click.option("--no-tensors", is_flag=True, help="Header-level checks only: skip the tensor scan (NaN/Inf, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (schemas/verify-output.v1.schema.json).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="github: workflow annotations (::error file=...) for GitHub Actions.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write JUnit XML here.")
@click.option("-q", "--quiet", is_flag=True, help="Text output: only failing files and the summary.")
@target_option
def verify(paths, base, strict, no_tensors, as_json, fmt, junit, quiet, targets) -> int:
    """Verify adapters: container, key format, architecture, every module against the base, tensor health.

    PATHS are files, folders (searched for *.safetensors) or glob patterns. Exit 0 when every file passes,
    1 when one has errors (or warnings with --strict), 2 for usage or input errors.
    """
    return run_verify(paths, base, strict, no_tensors, as_json, fmt, junit, quiet, targets)
