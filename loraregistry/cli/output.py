"""One output sink: data to stdout (text or JSON), status to stderr; colour only on a terminal.

Terminal safety: strings from a file (metadata values, key names, paths) can hold ANSI escapes, carriage
returns, bidi overrides or rich markup. Every such string reaches the terminal through ``safe_line`` (control
characters shown as ``\\x1b``-style escapes) and, in rich tables, through ``cell`` (a ``Text``, which rich never
reads as markup). JSON output is left exact: ``json.dumps`` escapes control characters itself.

Nothing here imports click or rich at module level: ``lorareg verify --json`` prints without either.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import sys
from typing import Any

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


def print_line(text: str) -> None:
    """``console().print(text)``, without importing rich (~25 ms) where rich writes ``text`` as it is: printable
    ASCII with no markup (``[``) and no emoji code (``:name:``) has nothing for rich to style or replace, on a
    terminal or not. Elsewhere (and in a notebook, or on Windows' consoles) this is rich itself."""
    if (sys.platform == "win32" or "IPython" in sys.modules or not (text.isascii() and text.isprintable())
            or "[" in text or text.count(":") > 1):
        console().print(text)
        return
    stream = sys.stdout
    stream = getattr(stream, "rich_proxied_file", stream)
    if stream is None:  # rich writes to nothing then
        return
    try:
        stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:  # what rich does: stdout to the null device, exit 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1)


# json.dumps escapes C0 controls itself; C1 controls and bidi characters it leaves raw with ensure_ascii=False.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x7F}


def emit_json(data: Any) -> None:
    """``data`` as JSON on stdout: exact (valid JSON escapes), and safe to show on a terminal."""
    echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str).translate(_JSON_ESCAPES))


def status(message: str) -> None:
    """A status line on stderr, control characters escaped (messages quote file names and keys)."""
    echo(safe_line(message), err=True)


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    """``click.echo(text, err=err, nl=nl)`` without importing click (~20 ms) where it would write ``text`` as is.

    That is the common case: a text stream that click leaves alone and text without an escape character. Otherwise
    (click would strip ANSI codes off a pipe, re-wrap an ASCII stream as UTF-8, or find a console on Windows) this
    is click.echo itself."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no stream to write to (pythonw): click.echo writes nothing either
        return
    if "\x1b" in text or not _click_writes_as_is(stream):
        import click

        click.echo(text, err=err, nl=nl)
        return
    if nl:
        text += "\n"
    if text:
        stream.write(text)
    stream.flush()


def _click_writes_as_is(stream: object) -> bool:
    """Whether click.echo writes str to ``stream`` itself: a text stream (not a binary one) whose encoding is not
    ASCII, or one with no binary buffer to re-wrap (StringIO); never on Windows (console streams)."""
    if sys.platform == "win32" or not isinstance(stream, (io.TextIOWrapper, io.StringIO)):
        return False
    return not _is_ascii(getattr(stream, "encoding", None) or "ascii") or getattr(stream, "buffer", None) is None


def _is_ascii(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "ascii"
    except LookupError:
        return False


class _QuietFlush:
    """A stream whose flush ignores a broken pipe, as click leaves sys.stdout/sys.stderr after one (else the
    interpreter's flush at exit reports the pipe again)."""

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as exc:
            import errno

            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.wrapped, attr)


def quiet_broken_pipe() -> None:
    """After a broken pipe: what click's main does before it exits 1."""
    sys.stdout = _QuietFlush(sys.stdout)
    sys.stderr = _QuietFlush(sys.stderr)
