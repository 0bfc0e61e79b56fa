"""The tensor scan: what the values say, streamed through one numpy memory map of the file.

Each tensor is read once, in chunks of at most ``CHUNK_ELEMENTS`` converted to float32 (float64 for F64),
counting NaN/Inf and non-zeros and summing squares in float64. LoRA factors also accumulate their small
Gram matrices (``up^T up`` and ``down down^T``, r x r), from which the Frobenius norm of the module's
effective delta follows without ever building the out x in matrix:

    ||s * up @ down||_F^2 = s^2 * sum((up^T up) * (down down^T))          (both Grams are symmetric)

LoCon's Tucker core, LoHa (via the face-splitting identity (A1 B1) * (A2 B2) = (A1 . A2)(B1 . B2)) and
LoKr (||kron(w1, w2)|| = ||w1|| ||w2||) reuse the same Grams. Tucker LoHa/LoKr halves get no norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter import ModuleInfo
from ..canonical import ModuleKey
from ..errors import InvalidSafetensorsError
from ..safetensors_io import SafetensorsHeader, TensorInfo, numpy_dtype
from .shapes import NOT_FACTORS

CHUNK_ELEMENTS = 1 << 22  # 4 Mi values per step: 16 MB of float32, whatever the tensor's size

# Base SD/SDXL/Flux weights have an RMS entry well below 0.1 (SD1 attention ~0.02-0.05). A delta whose RMS
# entry is >= 1.0 is ten to fifty times the weight it is added to: the output saturates ("fried" images),
# which only happens with exploded training or a broken alpha/scale. Real adapters sit near 1e-3.
EXTREME_DELTA_RMS = 1.0
# Grams are side x side float64: ranks stay far below this; a larger "rank" is a malformed file, scanned without one.
MAX_GRAM_SIDE = 2048

_ROWS_GRAM = frozenset({"up", "lokr_w1_a", "lokr_w2_a"})  # factor [n, r]: accumulate F^T F over row chunks
_COLS_GRAM = frozenset({"down", "lokr_w1_b", "lokr_w2_b"})  # factor [r, n]: accumulate F F^T over column chunks


@dataclass(frozen=True)
class TensorStats:
    key: str
    numel: int
    nan: int
    inf: int
    all_zero: bool
    sumsq: float  # sum of squares of the finite values (float64 accumulation of float32 blocks)

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0


@dataclass(frozen=True)
class ModuleStats:
    """``delta_norm``: ||scale * delta||_F, None where not computed (Tucker halves, non-finite factors)."""

    module: ModuleKey
    zero_delta: bool
    delta_norm: float | None = None
    delta_rms: float | None = None


@dataclass
class HealthScan:
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    modules: dict[ModuleKey, ModuleStats] = field(default_factory=dict)
    unscannable: dict[str, str] = field(default_factory=dict)  # key -> dtype


def scan(path: str | Path, header: SafetensorsHeader, modules: dict[ModuleKey, ModuleInfo],
         deltas: dict[ModuleKey, tuple[int, ...] | None], *, alpha_fallback: float | None = None) -> HealthScan:
    """Scan every tensor of the file, then derive each module's delta norm from its factors' statistics."""
    import numpy as np

    roles = {key: role for info in modules.values() for role, key in info.keys.items()}
    result = HealthScan()
    grams: dict[str, object] = {}
    data = (np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(header.data_size,))
            if header.data_size else None)
    for info in header.tensors.values():
        array = _array(data, info, result)
        if array is None:
            continue
        stats, gram = _scan_tensor(info, array, _gram_mode(roles.get(info.name)))
        result.tensors[info.name] = stats
        if gram is not None:
            grams[info.name] = gram
    arrays = lambda info: _array(data, info, result)  # noqa: E731 - small factors read whole (LoHa, mids)
    for key, module in modules.items():
        stats = [result.tensors.get(k) for r, k in module.keys.items() if r not in NOT_FACTORS]
        zero = any(s is not None and s.all_zero for s in stats)
        norm = None
        if not zero and all(s is not None and s.finite for s in stats) and deltas.get(key):
            norm = _delta_norm(module, result.tensors, grams, arrays, alpha_fallback)
        size = math.prod(deltas.get(key) or (0,))
        rms = norm / math.sqrt(size) if norm is not None and size else None
        result.modules[key] = ModuleStats(key, zero, norm, rms)
    return result


def _array(data, info: TensorInfo, result: HealthScan):
    import numpy as np

    try:
        dtype = numpy_dtype(info.dtype)
    except InvalidSafetensorsError:
        result.unscannable[info.name] = info.dtype
        return None
    if info.nbytes == 0 or data is None:
        return np.zeros(info.shape, dtype=dtype)
    return data[info.start : info.end].view(dtype).reshape(info.shape)


def _gram_mode(role: str | None) -> str | None:
    return "rows" if role in _ROWS_GRAM else "cols" if role in _COLS_GRAM else None


def _blocks(array, gram_mode: str | None):
    """(blocks, gram side): row blocks of [n, r] factors, column blocks of [r, n] ones (contiguous runs, so
    the float32 copy is cheap), flat slices of everything else; gram side None when no Gram is wanted."""
    if gram_mode and array.ndim >= 2:
        matrix = array.reshape(array.shape[0], -1)
        side = matrix.shape[1] if gram_mode == "rows" else matrix.shape[0]
        if side <= MAX_GRAM_SIDE:
            if gram_mode == "rows":
                step = max(1, CHUNK_ELEMENTS // side)
                return (matrix[i : i + step] for i in range(0, matrix.shape[0], step)), side
            step = max(1, CHUNK_ELEMENTS // side)
            return (matrix[:, i : i + step] for i in range(0, matrix.shape[1], step)), side
    flat = array.reshape(-1)
    return (flat[i : i + CHUNK_ELEMENTS] for i in range(0, flat.size, CHUNK_ELEMENTS)), None


def _scan_tensor(info: TensorInfo, array, gram_mode: str | None):
    import numpy as np

    work = np.float64 if info.dtype == "F64" else np.float32
    numeric = array.dtype.kind in "fiub" or info.dtype == "BF16" or info.dtype.startswith("F8")
    if not numeric or array.size == 0:  # complex: zeros only; empty: nothing to count
        return TensorStats(info.name, info.numel, 0, 0, array.size > 0 and not np.any(array), 0.0), None
    blocks, side = _blocks(array, gram_mode)
    gram = np.zeros((side, side), dtype=np.float64) if side is not None else None
    nan = inf = 0
    sumsq = 0.0
    any_nonzero = False
    for block in blocks:
        chunk = np.asarray(block, dtype=work)
        flat = chunk.reshape(-1)
        squares = float(np.dot(flat, flat))  # NaN/Inf propagate, so a finite sum proves the block clean
        if not math.isfinite(squares):
            finite = np.isfinite(chunk)
            nan += int(np.isnan(chunk).sum())
            inf += int(chunk.size - finite.sum()) - int(np.isnan(chunk).sum())
            chunk = np.where(finite, chunk, 0)
            flat = chunk.reshape(-1)
            squares = float(np.dot(flat.astype(np.float64), flat))  # an overflowing square: count it in float64
        sumsq += squares
        any_nonzero = any_nonzero or squares > 0 or bool(np.any(flat))  # np.any only for an all-zero-looking block
        if gram is not None:
            gram += chunk.T @ chunk if gram_mode == "rows" else chunk @ chunk.T
    return TensorStats(info.name, info.numel, nan, inf, not any_nonzero, sumsq), gram


def _scale(module: ModuleInfo, alpha_fallback: float | None) -> float:
    if not module.rank:
        return 1.0
    alpha = module.alpha if module.alpha else (alpha_fallback or float(module.rank))
    return alpha / module.rank


def _delta_norm(module: ModuleInfo, stats: dict[str, TensorStats], grams: dict[str, object],
                arrays: Callable, alpha_fallback: float | None) -> float | None:
    """||scale * delta||_F from the factors' Grams and sums of squares; None where no cheap formula applies."""
    import numpy as np

    keys, roles = module.keys, set(module.keys)
    squared: float | None = None
    if module.algo == "lora":
        gu, gd = grams.get(keys.get("up", "")), grams.get(keys.get("down", ""))
        if gu is None or gd is None:
            return None
        if "mid" in roles:  # W_k = U M_k D: ||W||^2 = sum_k tr(M_k^T Gu M_k Gd)
            mid = np.asarray(arrays(module.tensors["mid"]), dtype=np.float64)
            cores = mid.reshape(mid.shape[0], mid.shape[1], -1)
            squared = sum(float(np.sum((cores[:, :, k].T @ gu @ cores[:, :, k]) * gd)) for k in range(cores.shape[2]))
        else:
            squared = float(np.sum(gu * gd))
    elif module.algo == "loha" and "hada_t1" not in roles:
        squared = _loha_squared(*(np.asarray(arrays(module.tensors[r]), dtype=np.float32)
                                  for r in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")))
    elif module.algo == "lokr":
        halves = [_lokr_half_squared(n, keys, stats, grams) for n in ("1", "2")]
        if None in halves:
            return None
        squared = halves[0] * halves[1]  # type: ignore[operator]
    elif module.algo == "full" and "diff" in keys:
        squared = stats[keys["diff"]].sumsq
    if squared is None:
        return None
    return abs(_scale(module, alpha_fallback)) * math.sqrt(max(squared, 0.0))


def _lokr_half_squared(n: str, keys: dict[str, str], stats: dict[str, TensorStats], grams) -> float | None:
    import numpy as np

    if f"lokr_w{n}" in keys:
        return stats[keys[f"lokr_w{n}"]].sumsq
    if f"lokr_t{n}" in keys:
        return None
    ga, gb = grams.get(keys.get(f"lokr_w{n}_a", "")), grams.get(keys.get(f"lokr_w{n}_b", ""))
    return None if ga is None or gb is None else float(np.sum(ga * gb))


def _loha_squared(a1, b1, a2, b2) -> float:
    """||(a1 b1) * (a2 b2)||^2 through the face-splitting products L = a1 . a2 [out, r1 r2], R = b1 . b2, whose
    Grams are (r1 r2)^2; for large ranks, row blocks of the dense delta instead (never all of it at once)."""
    import numpy as np

    width = a1.shape[1] * a2.shape[1]
    if width > MAX_GRAM_SIDE // 2:
        step = max(1, CHUNK_ELEMENTS // max(b1.shape[1], 1))
        total = 0.0
        for s in range(0, a1.shape[0], step):
            block = (a1[s : s + step] @ b1) * (a2[s : s + step] @ b2)
            total += float(np.sum(np.square(block, dtype=np.float64)))
        return total

    def gram_of_rowwise_kron(x, y) -> np.ndarray:  # sum over rows of kron(x_i, y_i)^T kron(x_i, y_i)
        gram = np.zeros((width, width), dtype=np.float64)
        step = max(1, CHUNK_ELEMENTS // width)
        for s in range(0, x.shape[0], step):
            rows = (x[s : s + step, :, None] * y[s : s + step, None, :]).reshape(-1, width)
            gram += rows.T @ rows
        return gram

    return float(np.sum(gram_of_rowwise_kron(a1, a2) * gram_of_rowwise_kron(b1.T, b2.T)))
