"""One output sink: data to stdout (text or JSON), status to stderr; colour only on a terminal."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click


def use_color() -> bool:
    return "NO_COLOR" not in os.environ and sys.stdout.isatty()


def console():
    from rich.console import Console

    return Console(no_color=not use_color(), highlight=False, soft_wrap=True,
                   force_terminal=use_color() or None, width=None if sys.stdout.isatty() else 120)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def status(message: str) -> None:
    click.echo(message, err=True)
