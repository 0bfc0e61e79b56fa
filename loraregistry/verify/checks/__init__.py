"""The checks, in report order. Each is ``(Context) -> list[Finding]``; none raises for a bad adapter.

``HEADER_CHECKS`` read the header only (plus the alpha scalars ``AdapterFile`` already read);
``TENSOR_CHECKS`` read tensor data and are skipped with ``tensors=False``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context
from ..findings import Finding
from .architecture import check_declared, check_detected, check_requested
from .compatibility import check_against_base, check_dtypes, check_factors
from .format import check_keys, unreadable_keys
from .metadata import check_declared_sources, check_imported, check_record, check_size
from .tensors import check_hashes, check_health

Check = Callable[[Context], list[Finding]]

HEADER_CHECKS: tuple[Check, ...] = (
    check_keys, check_dtypes,
    check_detected, check_declared, check_requested,
    check_factors, check_against_base,
    check_record, check_declared_sources, check_imported, check_size,
)
TENSOR_CHECKS: tuple[Check, ...] = (check_health, check_hashes)

__all__ = ["HEADER_CHECKS", "TENSOR_CHECKS", "Check", "unreadable_keys"]
