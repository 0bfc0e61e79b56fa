"""``lorareg demo [FOLDER]``: the end-to-end demo on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"))
def demo(folder: Path) -> None:
    """Build adapters in every format, inspect them, write and read metadata (offline, seconds)."""
    from ..demo import run_demo

    run_demo(folder, say=click.echo)
