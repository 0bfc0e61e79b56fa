"""The tensor scan: what the values say, streamed through one numpy memory map of the file.

Pass one reads each tensor once, on its raw bits, at integer speed (numpy's float16 -> float32 cast runs at
~0.4 GB/s, a mask + max over uint16 at >10 GB/s): for IEEE floats the exponent field says NaN/Inf, and with
the sign bit cleared the integer order of the bits is the order of |x|, so one ``max`` gives both "all zero"
and the largest finite magnitude. Other dtypes (F8, integers) are converted to float32 as before. Small
files skip numpy's import (which costs more than scanning them): ``bitscan`` computes the same fields with the
standard library, and numpy loads only for what it leaves (NaN/Inf, other dtypes) or an exact pass.

Module deltas then get a free upper bound on their RMS entry from those maxima (each delta entry is a sum of
``r`` products of factor entries, so for LoRA ``RMS(s * up @ down) <= |s| * r * max|up| * max|down|``). Only
where the bound reaches ``EXTREME_DELTA_RMS`` is the exact norm computed (lazily, on first access of
``ModuleStats.delta_norm``), from the factors' small Gram matrices (``up^T up`` and ``down down^T``, r x r)
without ever building the out x in matrix:

    ||s * up @ down||_F^2 = s^2 * sum((up^T up) * (down down^T))          (both Grams are symmetric)

LoCon's Tucker core, LoHa (via the face-splitting identity (A1 B1) * (A2 B2) = (A1 . A2)(B1 . B2)) and
LoKr (||kron(w1, w2)|| = ||w1|| ||w2||) reuse the same Grams. Tucker LoHa/LoKr halves get no norm. The exact
pass converts float16 through integer shifts (exact, ~3x numpy's cast) and sums in the same float32 blocks as
ever, so every value and finding is what a full float pass gives.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

from ..adapter import ModuleInfo
from ..canonical import ModuleKey
from ..errors import InvalidSafetensorsError
from ..safetensors_io import INF_BITS, SafetensorsHeader, TensorInfo, numpy_dtype
from . import bitscan
from .shapes import NOT_FACTORS

CHUNK_ELEMENTS = 1 << 22  # 4 Mi values per step: 16 MB of float32, whatever the tensor's size

# Pass one runs on the standard library (bitscan) up to this many bytes of tensor data per process while numpy
# is not loaded. Measured (one process per file: bitscan, then import numpy + numpy's pass one): bitscan takes
# ~0.2-0.55x numpy's cost on 19 MB SD1 files, ~0.8x on 38 MB fp16/bf16 files with uniform-initialised downs
# (many ties), ~1.2x at 76 MB; past this budget numpy's import pays for itself.
STDLIB_SCAN_BYTES = 32 << 20
_stdlib_scanned = 0  # bytes this process has scanned through bitscan

# Base SD/SDXL/Flux weights have an RMS entry well below 0.1 (SD1 attention ~0.02-0.05). A delta whose RMS
# entry is >= 1.0 is ten to fifty times the weight it is added to: the output saturates ("fried" images),
# which only happens with exploded training or a broken alpha/scale. Real adapters sit near 1e-3.
EXTREME_DELTA_RMS = 1.0
# Grams are side x side float64: ranks stay far below this; a larger "rank" is a malformed file, scanned without one.
MAX_GRAM_SIDE = 2048
# A bound this far below the threshold cannot be crossed by the exact value's float rounding.
_BOUND_MARGIN = 1.0 - 1e-6

_ROWS_GRAM = frozenset({"up", "lokr_w1_a", "lokr_w2_a"})  # factor [n, r]: accumulate F^T F over row chunks
_COLS_GRAM = frozenset({"down", "lokr_w1_b", "lokr_w2_b"})  # factor [r, n]: accumulate F F^T over column chunks

# IEEE layouts read on their bits: (unsigned view, magnitude mask = all but the sign, +Inf = exponent all ones).
_BITS = {"F16": ("<u2", 0x7FFF, INF_BITS["F16"]), "BF16": ("<u2", 0x7FFF, INF_BITS["BF16"]),
         "F32": ("<u4", 0x7FFF_FFFF, INF_BITS["F32"]), "F64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, INF_BITS["F64"])}


def _never() -> None:
    return None


@dataclass(frozen=True)
class TensorStats:
    key: str
    numel: int
    nan: int
    inf: int
    all_zero: bool  # no finite non-zero value
    max_abs: float = 0.0  # the largest finite |value|
    _sumsq: Callable[[], float] = field(default=lambda: 0.0, repr=False, compare=False)

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0

    @cached_property
    def sumsq(self) -> float:
        """Sum of squares of the finite values (float64 accumulation of float32 blocks), computed on first use."""
        return self._sumsq()


@dataclass(frozen=True)
class ModuleStats:
    """``delta_norm``: ||scale * delta||_F, None where not computed (Tucker halves, non-finite factors); exact,
    computed on first access. ``rms_bound``: a free upper bound of ``delta_rms`` from the factors' maxima."""

    module: ModuleKey
    zero_delta: bool
    rms_bound: float | None = None
    size: int = 0  # entries of the delta
    _norm: Callable[[], float | None] = field(default=_never, repr=False, compare=False)

    @cached_property
    def delta_norm(self) -> float | None:
        return self._norm()

    @property
    def delta_rms(self) -> float | None:
        norm = self.delta_norm
        return norm / math.sqrt(self.size) if norm is not None and self.size else None

    def exceeds(self, threshold: float) -> bool:
        """delta_rms >= threshold (inf counts, NaN does not); the exact norm only where the bound cannot decide."""
        if self.rms_bound is not None and self.rms_bound < threshold * _BOUND_MARGIN:
            return False
        rms = self.delta_rms
        return rms is not None and rms >= threshold


@dataclass
class HealthScan:
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    modules: dict[ModuleKey, ModuleStats] = field(default_factory=dict)
    unscannable: dict[str, str] = field(default_factory=dict)  # key -> dtype


def scan(path: str | Path, header: SafetensorsHeader, modules: dict[ModuleKey, ModuleInfo],
         deltas: dict[ModuleKey, tuple[int, ...] | None], *, alpha_fallback: float | None = None,
         stdlib: bool | None = None) -> HealthScan:
    """Scan every tensor of the file, then bound each module's delta RMS from its factors' statistics.
    ``stdlib``: pass one on the standard library where it can (``bitscan``); None decides by ``_stdlib_first``."""
    roles = {key: role for info in modules.values() for role, key in info.keys.items()}
    result = HealthScan()
    data = _DataSection(path, header)
    use_stdlib = _stdlib_first(header) if stdlib is None else stdlib
    settled = bitscan.pass_one(path, header) if use_stdlib else None
    readable = None
    if settled is None:  # numpy's pass one, a few calls per run of back-to-back tensors
        readable = {info.name: array for info in header.tensors.values()
                    if (array := _array(data(), info, result)) is not None}
        settled = _scan_runs(data(), [header.tensors[name] for name in readable])
    floats = _FloatPasses()
    for info in header.tensors.values():
        sumsq = partial(floats.sumsq, info.name)
        found = settled.get(info.name)
        if found is not None:
            stats = TensorStats(info.name, info.numel, *found, sumsq)
            source = partial(_array_of, data, info, result)  # the exact pass maps the file only if a bound asks
        else:  # NaN/Inf, dtypes without a bit rule, tensors outside runs: one numpy scan each
            array = readable.get(info.name) if readable is not None else _array(data(), info, result)
            if array is None:  # unscannable
                continue
            stats = _scan_tensor(info, array, sumsq)
            source = partial(_same, array)
        floats.register(info, source, _gram_mode(roles.get(info.name)), stats.finite)
        result.tensors[info.name] = stats
    arrays = lambda info: _array(data(), info, result)  # noqa: E731 - small factors read whole (LoHa, mids)
    for key, module in modules.items():
        stats = [result.tensors.get(k) for r, k in module.keys.items() if r not in NOT_FACTORS]
        zero = any(s is not None and s.all_zero for s in stats)
        size = math.prod(deltas.get(key) or (0,))
        if not zero and all(s is not None and s.finite for s in stats) and deltas.get(key):
            scale = abs(_scale(module, alpha_fallback))
            bound = _entry_bound(module, result.tensors)
            norm = (lambda m=module, s=scale: _delta_norm(m, s, result.tensors, floats, arrays))
            result.modules[key] = ModuleStats(key, zero, scale * bound if bound is not None else None, size, norm)
        else:
            result.modules[key] = ModuleStats(key, zero, None, size)
    return result


def _stdlib_first(header: SafetensorsHeader) -> bool:
    """Pass one on the standard library while numpy is not loaded and this process has scanned at most
    ``STDLIB_SCAN_BYTES`` that way (the budget makes a verify of many files switch once numpy repays its import)."""
    global _stdlib_scanned
    if "numpy" in sys.modules or _stdlib_scanned + header.data_size > STDLIB_SCAN_BYTES:
        return False
    _stdlib_scanned += header.data_size
    return True


class _DataSection:
    """The file's data section as one uint8 array (None when empty), mapped on first call: a file the standard
    library scans whole never imports numpy."""

    def __init__(self, path: str | Path, header: SafetensorsHeader) -> None:
        self._path, self._header = path, header
        self._mapped = False
        self._array = None

    def __call__(self):
        if not self._mapped:
            import numpy as np

            header = self._header
            # A plain ndarray view of the map: slicing an np.memmap subclass costs more than scanning a small tensor.
            self._array = (np.memmap(self._path, dtype=np.uint8, mode="r", offset=header.data_offset,
                                     shape=(header.data_size,)).view(np.ndarray) if header.data_size else None)
            self._mapped = True
        return self._array


def _array_of(data: _DataSection, info: TensorInfo, result: HealthScan):
    return _array(data(), info, result)


def _same(value):
    return value


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


# --- pass one: counts and maxima ---------------------------------------------------------------------


def _scan_tensor(info: TensorInfo, array, sumsq: Callable[[], float]) -> TensorStats:
    import numpy as np

    numeric = array.dtype.kind in "fiub" or info.dtype == "BF16" or info.dtype.startswith("F8")
    if not numeric or array.size == 0:  # complex: zeros only; empty: nothing to count
        return TensorStats(info.name, info.numel, 0, 0, array.size > 0 and not np.any(array), 0.0, sumsq)
    if info.dtype in _BITS:
        return TensorStats(info.name, info.numel, *_scan_bits(array, *_BITS[info.dtype]), sumsq)
    return TensorStats(info.name, info.numel, *_scan_values(array), sumsq)


def _scan_bits(array, uint: str, mask: int, inf_bits: int) -> tuple[int, int, bool, float]:
    """NaN (magnitude bits above +Inf's), Inf (equal) and the largest finite magnitude, on the raw bits."""
    import numpy as np

    flat = array.reshape(-1).view(uint)
    step = CHUNK_ELEMENTS
    buffer = np.empty(min(flat.size, step), dtype=uint)
    nan = inf = top = 0
    for start in range(0, flat.size, step):
        block = flat[start : start + step]
        magnitudes = np.bitwise_and(block, mask, out=buffer[: block.size])
        peak = int(magnitudes.max())
        if peak >= inf_bits:  # rare: count the non-finite values and take the finite maximum
            nan += int(np.count_nonzero(magnitudes > inf_bits))
            inf += int(np.count_nonzero(magnitudes == inf_bits))
            finite = magnitudes[magnitudes < inf_bits]
            peak = int(finite.max()) if finite.size else 0
        top = max(top, peak)
    max_abs = float(np.array([top], dtype=uint).view(array.dtype)[0])
    return nan, inf, top == 0, max_abs


def _scan_runs(data, infos: list[TensorInfo]) -> dict[str, tuple[int, int, bool, float]]:
    """(nan, inf, all_zero, max_abs) of every finite tensor in a run of back-to-back tensors of one IEEE dtype,
    a few numpy calls per run rather than per tensor (files hold hundreds of small factors and 0-dim alphas).
    Tensors with a NaN/Inf, and those outside runs, are left to ``_scan_tensor``."""
    found: dict[str, tuple[int, int, bool, float]] = {}
    if data is None:
        return found
    runs: list[list[TensorInfo]] = []
    for info in infos:
        if not _batchable(info):
            continue
        last = runs[-1][-1] if runs else None
        if last is not None and info.dtype == last.dtype and info.start == last.end:
            runs[-1].append(info)
        else:
            runs.append([info])
    for run in runs:
        found.update(_run_fields(data, run, *_BITS[run[0].dtype]))
    return found


def _batchable(info: TensorInfo) -> bool:
    """An IEEE tensor with values, whose start is aligned to its item size (views of other bytes would not be)."""
    if info.dtype not in _BITS or info.numel == 0:
        return False
    return info.start % int(_BITS[info.dtype][0][2:]) == 0


def _run_fields(data, run: list[TensorInfo], uint: str, mask: int, inf_bits: int):
    """Per-tensor maxima of the magnitude bits over one run, window by window (``np.maximum.reduceat``)."""
    import numpy as np

    itemsize = np.dtype(uint).itemsize
    first = run[0].start
    words = data[first : run[-1].end].view(uint)
    starts = np.array([(info.start - first) // itemsize for info in run], dtype=np.int64)
    peaks = np.zeros(len(run), dtype=uint)
    buffer = np.empty(min(words.size, CHUNK_ELEMENTS), dtype=uint)
    for w0 in range(0, words.size, CHUNK_ELEMENTS):
        w1 = min(words.size, w0 + CHUNK_ELEMENTS)
        block = np.bitwise_and(words[w0:w1], mask, out=buffer[: w1 - w0])
        i0 = int(np.searchsorted(starts, w0, side="right")) - 1  # the tensor holding w0, then those starting later
        i1 = int(np.searchsorted(starts, w1, side="left"))
        part = np.maximum.reduceat(block, np.maximum(starts[i0:i1] - w0, 0))
        np.maximum(peaks[i0:i1], part, out=peaks[i0:i1])
    finite = np.where(peaks < inf_bits, peaks, 0)  # NaN/Inf peaks are recounted by _scan_tensor
    values = finite.view(numpy_dtype(run[0].dtype)).astype(np.float64).tolist()
    return {info.name: (0, 0, peak == 0, value) for info, peak, value in zip(run, peaks.tolist(), values)
            if peak < inf_bits}


def _scan_values(array) -> tuple[int, int, bool, float]:
    """Dtypes without an IEEE bit layout numpy can mask (F8, integers, bool): through float32 blocks."""
    import numpy as np

    nan = inf = 0
    top = 0.0
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        chunk = np.asarray(flat[start : start + CHUNK_ELEMENTS], dtype=np.float32)
        finite = np.isfinite(chunk)
        nans = int(np.isnan(chunk).sum())
        nan += nans
        inf += int(chunk.size - finite.sum()) - nans
        values = np.abs(chunk[finite])
        if values.size:
            top = max(top, float(values.max()))
    return nan, inf, top == 0.0, top


# --- the exact pass: float32 blocks, sums of squares and Grams, on demand -----------------------------


class _FloatPasses:
    """One float pass per tensor, run on first need and cached: (sum of squares, Gram or None)."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple] = {}
        self._done: dict[str, tuple[float, object]] = {}

    def register(self, info: TensorInfo, source: Callable[[], object], gram_mode: str | None, finite: bool) -> None:
        """``source()`` gives the tensor's array, on the first float pass that needs it."""
        self._sources[info.name] = (info, source, gram_mode, finite)

    def _get(self, key: str) -> tuple[float, object]:
        if key not in self._done:
            info, source, gram_mode, finite = self._sources[key]
            self._done[key] = _float_pass(info, source(), gram_mode, finite)
        return self._done[key]

    def sumsq(self, key: str) -> float:
        return self._get(key)[0]

    def gram(self, key: str):
        return self._get(key)[1] if key in self._sources else None


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


def _float32(block, dtype: str):
    """``block`` as float32, exactly. F16 and BF16 through integer shifts (numpy's casts are slow); only for
    finite values: the F16 path maps the Inf/NaN exponent to a finite number."""
    import numpy as np

    if dtype == "BF16":  # the top half of a float32
        wide = block.view(np.uint16).astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    if dtype == "F16":  # move sign and exponent+mantissa into place, then rebias the exponent by 2^(127-15)
        wide = block.view(np.uint16).astype(np.uint32)
        sign = wide & 0x8000
        wide ^= sign
        wide <<= 13
        sign <<= 16
        wide |= sign
        out = wide.view(np.float32)
        out *= np.float32(2.0**112)  # exact for normal and subnormal halves alike
        return out
    return np.asarray(block, dtype=np.float32)


def _float_pass(info: TensorInfo, array, gram_mode: str | None, finite: bool) -> tuple[float, object]:
    import numpy as np

    with np.errstate(all="ignore"):  # overflowing squares are expected in broken files; they are counted, not warned
        return _float_pass_blocks(info, array, gram_mode, finite)


def _float_pass_blocks(info: TensorInfo, array, gram_mode: str | None, finite: bool) -> tuple[float, object]:
    import numpy as np

    numeric = array.dtype.kind in "fiub" or info.dtype == "BF16" or info.dtype.startswith("F8")
    if not numeric or array.size == 0:
        return 0.0, None
    work = np.float64 if info.dtype == "F64" else np.float32
    blocks, side = _blocks(array, gram_mode)
    gram = np.zeros((side, side), dtype=np.float64) if side is not None else None
    sumsq = 0.0
    for block in blocks:
        chunk = _float32(block, info.dtype) if finite and work is np.float32 else np.asarray(block, dtype=work)
        flat = chunk.reshape(-1)
        squares = float(np.dot(flat, flat))  # NaN/Inf propagate, so a finite sum proves the block clean
        if not math.isfinite(squares):
            chunk = np.where(np.isfinite(chunk), chunk, 0)
            flat = chunk.reshape(-1)
            squares = float(np.dot(flat.astype(np.float64), flat))  # an overflowing square: count it in float64
        sumsq += squares
        if gram is not None:
            gram += chunk.T @ chunk if gram_mode == "rows" else chunk @ chunk.T
    return sumsq, gram


# --- module deltas: the bound, and the exact norm ------------------------------------------------------


def _scale(module: ModuleInfo, alpha_fallback: float | None) -> float:
    if not module.rank:
        return 1.0
    alpha = module.alpha if module.alpha else (alpha_fallback or float(module.rank))
    return alpha / module.rank


def _entry_bound(module: ModuleInfo, stats: dict[str, TensorStats]) -> float | None:
    """An upper bound of every |entry| of the unscaled delta (hence of its RMS), from the factors' max |x|:
    an entry of A @ B is a sum of inner-size products, each at most max|A| * max|B|."""
    t = module.tensors

    def peak(role: str) -> float:
        return stats[module.keys[role]].max_abs

    def inner(role: str, axis: int) -> int:
        return t[role].shape[axis]

    roles = set(module.keys)
    if module.algo == "lora":
        if "mid" in roles:  # up [out, r1, 1, 1] . mid [r1, r2, kh, kw] . down [r2, in, 1, 1]
            return inner("up", 1) * inner("down", 0) * peak("up") * peak("mid") * peak("down")
        return inner("down", 0) * peak("up") * peak("down")
    if module.algo == "loha" and "hada_t1" not in roles:
        return (inner("hada_w1_a", 1) * peak("hada_w1_a") * peak("hada_w1_b")
                * inner("hada_w2_a", 1) * peak("hada_w2_a") * peak("hada_w2_b"))
    if module.algo == "lokr":
        halves = []
        for n in ("1", "2"):
            if f"lokr_w{n}" in roles:
                halves.append(peak(f"lokr_w{n}"))
            elif f"lokr_t{n}" in roles:
                return None
            else:
                halves.append(inner(f"lokr_w{n}_a", 1) * peak(f"lokr_w{n}_a") * peak(f"lokr_w{n}_b"))
        return halves[0] * halves[1]
    if module.algo == "full" and "diff" in roles:
        return peak("diff")
    return None


def _delta_norm(module: ModuleInfo, scale: float, stats: dict[str, TensorStats], floats: _FloatPasses,
                arrays: Callable) -> float | None:
    """||scale * delta||_F from the factors' Grams and sums of squares; None where no cheap formula applies."""
    import numpy as np

    with np.errstate(all="ignore"):  # an overflow gives inf, which the extreme-norm check reports
        return _delta_norm_of(module, scale, stats, floats, arrays)


def _delta_norm_of(module: ModuleInfo, scale: float, stats: dict[str, TensorStats], floats: _FloatPasses,
                   arrays: Callable) -> float | None:
    import numpy as np

    keys, roles = module.keys, set(module.keys)
    squared: float | None = None
    if module.algo == "lora":
        gu, gd = floats.gram(keys.get("up", "")), floats.gram(keys.get("down", ""))
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
        halves = [_lokr_half_squared(n, keys, stats, floats) for n in ("1", "2")]
        if None in halves:
            return None
        squared = halves[0] * halves[1]  # type: ignore[operator]
    elif module.algo == "full" and "diff" in keys:
        squared = stats[keys["diff"]].sumsq
    if squared is None:
        return None
    return scale * math.sqrt(max(squared, 0.0))


def _lokr_half_squared(n: str, keys: dict[str, str], stats: dict[str, TensorStats],
                       floats: _FloatPasses) -> float | None:
    import numpy as np

    if f"lokr_w{n}" in keys:
        return stats[keys[f"lokr_w{n}"]].sumsq
    if f"lokr_t{n}" in keys:
        return None
    ga, gb = floats.gram(keys.get(f"lokr_w{n}_a", "")), floats.gram(keys.get(f"lokr_w{n}_b", ""))
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
