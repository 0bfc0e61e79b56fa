"""The demo's last step: index its own output folder in place and say how to browse it.

``run_demo`` calls ``scan_step(folder, say)`` after sharing; kept here so that the step lives with the scan it
shows (the demo's registry is ``LORAREG_HOME``, which ``run_demo`` points into ``folder/.work``).
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .core import Registry
from .paths import default_root


def scan_step(folder: Path, say: Callable[[str], None], *, step: int = 8) -> dict[str, Any]:
    """Scan ``folder`` into the registry, print what it found and the ``lorareg serve`` command."""
    with Registry.open() as registry:
        result = registry.scan([folder])
        entries = [e for e in registry.list() if e.in_place]
    say(f"{step}. Indexing {folder}/ in place (no copy): {result.files} files, {result.hashed} read and verified, "
        f"{len(result.duplicates)} group(s) of duplicate weights, {result.seconds:.1f} s")
    loads = Counter(name for e in entries for name, outcome in e.loaders.items() if outcome == "loads")
    say("   loads fully in: " + ", ".join(f"{name} {loads[name]}/{len(entries)}" for name in sorted(loads)))
    command = f"LORAREG_HOME={shlex.quote(str(default_root()))} lorareg serve"
    say(f"   browse them: {command}   (then open http://127.0.0.1:8765/)")
    return {"scan": result.to_dict(), "serve_command": command, "indexed": len(entries)}
