"""Regular expressions compiled on first use.

Compiling a pattern costs 0.1-2 ms; a module-level ``re.compile`` is paid by every process that imports the module,
and ``lorareg verify`` of one kohya file imports every key format while using one of them. ``lazy(pattern)`` stands
in for ``re.compile(pattern)``: the first use compiles it and puts the compiled pattern's methods on the object, so
later calls cost what calls on the compiled pattern cost.
"""

from __future__ import annotations

import re
from typing import Any


class LazyPattern:
    """``re.compile(pattern, flags)``, deferred to the first attribute used (``fullmatch``, ``groupindex``, ...)."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._source = (pattern, flags)

    def __getattr__(self, name: str) -> Any:  # only reached before the first compile, or for unknown names
        compiled = re.compile(*self.__dict__["_source"])
        for attribute in dir(compiled):
            if not attribute.startswith("__"):
                setattr(self, attribute, getattr(compiled, attribute))
        return getattr(compiled, name)

    def __repr__(self) -> str:
        return f"lazy({self._source[0]!r})"


def lazy(pattern: str, flags: int = 0) -> LazyPattern:
    return LazyPattern(pattern, flags)
