"""Where the registry lives: ``LORAREG_HOME``, else the platform's user data folder."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "LORAREG_HOME"
DB_NAME = "registry.db"  # the index, in the registry root


def default_root() -> Path:
    """``$LORAREG_HOME`` when set, else e.g. ``~/.local/share/lorareg`` (platformdirs user data dir)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("lorareg", appauthor=False))
