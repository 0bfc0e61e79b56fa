"""``inspect``: a header-level summary of an adapter, as plain data (the CLI renders it)."""

from __future__ import annotations

import operator
import os
from collections import Counter
from typing import Any

from .adapter import AdapterFile

INSPECT_SCHEMA_VERSION = 1
_DTYPE = operator.attrgetter("dtype")


def _counts(values) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0])))}


def _alpha_counts(modules) -> dict[str, int]:
    """``_counts`` of each stored alpha as ``f"{alpha:g}"``, formatting each distinct value once (hundreds of modules
    share a few alphas). A zero is formatted module by module: 0.0 and -0.0 count as one value but print apart."""
    by_value = Counter(m.alpha for m in modules if m.alpha is not None)
    if 0.0 in by_value:
        return _counts(f"{m.alpha:g}" for m in modules if m.alpha is not None)
    spelled: Counter[str] = Counter()
    for value, count in by_value.items():  # values that print alike (1e-7 apart, NaNs) add up as before
        spelled[f"{value:g}"] += count
    return {k: v for k, v in sorted(spelled.items(), key=lambda kv: (-kv[1], kv[0]))}


def inspect_adapter(path: str | os.PathLike[str], *, hashes: bool = True) -> dict[str, Any]:
    """Everything ``lorareg inspect`` reports for one file. Reads the header, alpha scalars and (for
    hashes) the bytes once; never loads tensors into memory, never imports torch."""
    adapter = AdapterFile.open(path)
    modules = list(adapter.modules.values())
    imported = adapter.imported
    report: dict[str, Any] = {
        "schema_version": INSPECT_SCHEMA_VERSION,
        "path": str(adapter.path),
        "format": adapter.format,
        "dialect": dict(adapter.mapping.dialect),
        "network_type": adapter.network_type,
        "components": _counts(m.module.component for m in modules),
        "module_count": len(modules),
        "conv_module_count": sum(1 for m in modules if m.kind == "conv"),
        "algorithms": _counts(m.algo for m in modules),
        "ranks": _counts(m.rank for m in modules if m.rank is not None),
        "alphas": _alpha_counts(modules),
        "dtypes": _counts(map(_DTYPE, adapter.header.tensors.values())),  # thousands of tensors: no generator
        "tensor_count": len(adapter.header.tensors),
        "unknown_keys": list(adapter.unknown_keys),
        "file_size": adapter.file_size,
        "header_size": adapter.header.header_size,
        "metadata": imported.metadata.model_dump(mode="json", exclude_none=True),
        "metadata_sources": sorted(k for k, v in imported.sources.items() if v),
        "inferred": list(imported.inferred),
        "warnings": list(imported.warnings),
    }
    if hashes:
        report["hashes"] = adapter.hashes.as_dict()
    return report
