"""Verify an operation's output from what its writer holds, not by opening the file again.

``verify(path)`` opens a file: it reads and parses the header (thousands of entries), maps the keys to modules and
reads every scalar alpha with a read of its own. The writer (``io.write_op_output``) has all of that in memory: the
header it encoded (parsed and validated once, with a stand-in for the data's hash, the only bytes that change),
the module view of those tensors (``io._in_memory_adapter``, alphas read from the arrays it wrote). So the output's
verify starts from that adapter and runs exactly the checks ``verify`` runs; the tensor scan still reads the
values from the written file, and the file's size is the one on disk.

Anything ``verify`` would report before its checks run (a container it cannot parse, keys in no known format) is
left to ``verify`` itself: those outputs go the old way, so their report is the one a from-disk verify gives.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..adapter import AdapterFile
from ..safetensors_io import SafetensorsHeader


def final_header(parsed: SafetensorsHeader, metadata: dict[str, str] | None) -> SafetensorsHeader:
    """``parsed`` (the header parsed with a stand-in hash) with the metadata the file holds: ``encode_header``
    writes ``metadata`` sorted by key, and a JSON string reads back as the string it was."""
    return parsed.replace(metadata=dict(sorted(metadata.items())) if metadata else {})


def verify_written(path: Path, header: SafetensorsHeader, draft: AdapterFile, *, base: str | None):
    """``verify(path, base=base)``'s report for the file just written at ``path`` with ``header``, whose modules
    ``draft`` already describes (``io._in_memory_adapter`` of a header with the same tensors)."""
    from ..verify import Report, _run_checks, load_base

    target = load_base(base) if base is not None else None
    report = Report(path=str(path), requested_base=target.label if target else None)
    # A fresh AdapterFile: nothing the draft worked out from its stand-in header (facts, import) is carried over.
    adapter = AdapterFile(path=Path(path), header=header, mapping=draft.mapping, modules=dict(draft.modules),
                          file_size=os.stat(path).st_size)
    return _run_checks(report, adapter, target, tensors=True)
