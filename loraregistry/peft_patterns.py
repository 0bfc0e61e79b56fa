"""peft's ``rank_pattern`` / ``alpha_pattern`` key matching, for keys read from untrusted files.

peft matches a pattern key against a module name as ``re.match(rf"(.*\\.)?({key})$", name)``.
"""

from __future__ import annotations

import re


def peft_pattern_matches(key: str, name: str) -> bool:
    """Whether peft would apply pattern ``key`` to module ``name``."""
    try:
        return re.match(rf"(.*\.)?({key})$", name) is not None
    except re.error:
        return name == key or name.endswith("." + key)
