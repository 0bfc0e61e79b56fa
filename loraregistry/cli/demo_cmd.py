"""``lorareg demo [FOLDER]``: the end-to-end demo on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"))
@click.option("--no-train", is_flag=True, help="Skip the training step (the rest takes seconds).")
def demo(folder: Path, no_train: bool) -> None:
    """Build adapters in every format, inspect, verify, train, merge, resize, annotate, register, push, pull.

    Offline: the base models are tiny or fingerprints, the Hub is a local server, the registry lives in FOLDER.
    """
    from ..demo import run_demo

    run_demo(folder, say=click.echo, train=not no_train)
