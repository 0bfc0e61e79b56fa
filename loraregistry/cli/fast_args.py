"""``lorareg verify``'s command line read without click, for the plain forms it takes nearly always.

``parse_verify`` reads a line the way click's parser reads it for the ``verify`` command (options anywhere,
``--opt=value``, ``--`` ending the options, the last of a repeated option winning) and returns exactly the
parameters click would pass the command. Whatever it does not take exactly as click would (help, an unknown or
malformed option, a bundle of short flags, a missing value, a choice or a ``--junit`` path click refuses, no
path at all) gives None, and click reads the line instead, with its own messages. ``OPTIONS`` mirrors the click
command's options; tests/test_cli_fast_path.py holds the two side by side.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NamedTuple


class Option(NamedTuple):  # not a dataclass: that module imports `inspect`, which this path otherwise skips
    """One option of ``lorareg verify``: ``dest`` is the command's parameter name, ``names`` its spellings."""

    dest: str
    names: tuple[str, ...]
    is_flag: bool = False
    default: Any = None
    choices: tuple[str, ...] | None = None


OPTIONS = (
    Option("base", ("--base",)),
    Option("strict", ("--strict",), is_flag=True, default=False),
    Option("no_tensors", ("--no-tensors",), is_flag=True, default=False),
    Option("as_json", ("--json",), is_flag=True, default=False),
    Option("fmt", ("--format",), default="text", choices=("text", "json", "github")),
    Option("junit", ("--junit",)),
    Option("quiet", ("-q", "--quiet"), is_flag=True, default=False),
    Option("targets", ("--target",)),
)
_BY_NAME = {name: option for option in OPTIONS for name in option.names}


def parse_verify(argv: list[str]) -> dict[str, Any] | None:
    """The ``verify`` command's parameters for ``argv`` (``["verify", ...]``, as given to ``lorareg``), or None
    for click to decide. A bad ``--target`` raises the same error as the click option's callback."""
    if not argv or argv[0] != "verify" or not all(isinstance(arg, str) for arg in argv):
        return None
    given: dict[str, Any] = {}
    paths: list[str] = []
    rest = argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if arg == "--":
            paths.extend(rest[i:])
            break
        if arg[:1] != "-" or arg == "-":  # click: "-" alone is a value, not an option
            paths.append(arg)
            continue
        name, has_value, value = arg.partition("=")
        option = _BY_NAME.get(name)
        if option is None or (has_value and (option.is_flag or not name.startswith("--"))):
            return None  # unknown, a short-flag bundle, help, or a value given to a flag
        if option.is_flag:
            given[option.dest] = True
            continue
        if not has_value:
            if i == len(rest):
                return None  # the value is missing
            value = rest[i]  # whatever it looks like, as click takes it
            i += 1
        given[option.dest] = value
    if not paths:
        return None
    params = {option.dest: given.get(option.dest, option.default) for option in OPTIONS}
    if params["fmt"] not in _BY_NAME["--format"].choices:
        return None
    if params["junit"] is not None:
        params["junit"] = _junit_path(params["junit"])
        if params["junit"] is None:
            return None
    params["paths"] = tuple(paths)
    params["targets"] = _targets(params["targets"])  # last: its error is the only one left to raise
    return params


def _junit_path(value: str) -> Path | None:
    """``--junit``'s value as click's ``Path(dir_okay=False, path_type=Path)`` gives it; None where click would
    refuse it (a folder, an unreadable file) or treat it specially (a NUL byte)."""
    if "\0" in value:
        return None
    try:
        st = os.stat(value)
    except OSError:
        return Path(value)  # not there yet: written later
    if stat.S_ISDIR(st.st_mode) or not os.access(value, os.R_OK):
        return None
    return Path(value)


def _targets(value: str | None) -> tuple[str, ...]:
    from ..verify.consumers import option_targets

    return option_targets(value)
