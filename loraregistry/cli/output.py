"""One output sink: data to stdout (text or JSON), status to stderr; colour only on a terminal.

Terminal safety: strings from a file (metadata values, key names, paths) can hold ANSI escapes, carriage
returns, bidi overrides or rich markup. Every such string reaches the terminal through ``safe_line`` (control
characters shown as ``\\x1b``-style escapes) and, in rich tables, through ``cell`` (a ``Text``, which rich never
reads as markup). JSON output is left exact: ``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

# C0 and C1 controls and DEL, bidi embeddings/overrides/isolates and marks, line/paragraph separators.
_UNSAFE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
           *range(0x2066, 0x206A), 0x2028, 0x2029]
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def safe_line(text: object) -> str:
    """``text`` with every control or bidi character made visible (``\\x1b``, ``\\u202e``): safe to print."""
    return str(text).translate(_ESCAPES)


def cell(text: object):
    """A rich table cell showing ``text`` literally: control characters escaped, no markup interpreted."""
    from rich.text import Text

    return Text(safe_line(text))


def markup_safe(text: object) -> str:
    """``text`` for a rich string that also carries markup of ours: controls escaped, brackets escaped."""
    from rich.markup import escape

    return escape(safe_line(text))


def use_color() -> bool:
    return "NO_COLOR" not in os.environ and sys.stdout.isatty()


def console():
    from rich.console import Console

    return Console(no_color=not use_color(), highlight=False, soft_wrap=True,
                   force_terminal=use_color() or None, width=None if sys.stdout.isatty() else 120)


# json.dumps escapes C0 controls itself; C1 controls and bidi characters it leaves raw with ensure_ascii=False.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x7F}


def emit_json(data: Any) -> None:
    """``data`` as JSON on stdout: exact (valid JSON escapes), and safe to show on a terminal."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str).translate(_JSON_ESCAPES))


def status(message: str) -> None:
    """A status line on stderr, control characters escaped (messages quote file names and keys)."""
    click.echo(safe_line(message), err=True)
