"""Small helpers shared by convert, merge and resize: grouping canonical tensors by module, dtypes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from ..canonical import CanonicalKey, ModuleKey
from ..errors import UsageError

DTYPES = {"fp16": np.float16, "fp32": np.float32, "bf16": None}  # bf16 resolved lazily (ml_dtypes)


def numpy_dtype(name: str | None):
    """fp16 / bf16 / fp32 -> numpy dtype; None -> None."""
    if name is None:
        return None
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}", hint="one of: fp16, bf16, fp32")
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(DTYPES[name])


def by_module(tensors: Mapping[CanonicalKey, np.ndarray]) -> dict[ModuleKey, dict[str, np.ndarray]]:
    """{module: {role: array}}, modules sorted."""
    grouped: dict[ModuleKey, dict[str, np.ndarray]] = {}
    for key, array in tensors.items():
        grouped.setdefault(key.module, {})[key.role] = array
    return dict(sorted(grouped.items()))


def flatten_modules(modules: Mapping[ModuleKey, Mapping[str, np.ndarray]]) -> dict[CanonicalKey, np.ndarray]:
    return {CanonicalKey(m.component, m.path, role): a for m, roles in modules.items() for role, a in roles.items()}


def storage_dtype(tensors: Mapping[CanonicalKey, np.ndarray]) -> np.dtype:
    """The most common float dtype among factor tensors (alpha excluded); fp32 when there is none."""
    counts = Counter(a.dtype for k, a in tensors.items() if k.role != "alpha"
                     and (a.dtype.kind == "f" or a.dtype.name == "bfloat16"))
    return counts.most_common(1)[0][0] if counts else np.dtype(np.float32)


def alpha_array(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)
