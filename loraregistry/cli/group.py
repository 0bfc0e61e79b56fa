"""The click group behind ``lorareg``: global options, and each subcommand imported when it is run or listed."""

from __future__ import annotations

import click

from .. import __version__
from . import COMMANDS
from .lazy import LazyGroup


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lorareg")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for torch and BLAS (default: OMP_NUM_THREADS, else the cores idle right now).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, threads: int | None) -> None:
    """Verify, inspect, convert and share Stable Diffusion LoRA adapters."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
