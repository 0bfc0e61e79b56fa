"""Pass one of the tensor scan with the standard library only, for files too small to pay numpy's import.

``import numpy`` costs more than scanning a few tens of MB this way, so small files are read through one
``mmap`` with C-speed byte operations and no Python loop over the values:

* The leading byte of every value (``mm[start + k - 1 : end : k]``, one strided copy) holds the sign and the top
  exponent bits. With the sign cleared, the bytes of a value, leading byte first, order like ``|x|`` (the same
  IEEE property the numpy path uses on whole words).
* The largest leading byte: a sample's maximum is a lower bound; ``translate(table, delete=...)`` clears the
  signs and drops every byte up to it (usually almost all), and ``max`` runs over what is left.
* Values tied on that byte are few for most tensors: they are found with ``find`` and read whole. Where many
  tie (uniform initialisations, BF16/F32 whose leading byte is an octave), the next byte column is masked to
  the tied values with one big-int AND and reduced the same way, column by column. (A Python loop never runs
  over more than ``MAX_TIES`` values or a sample of ``_SAMPLE``.)
* A largest magnitude at or above +Inf's bits means NaN/Inf: those tensors (and dtypes without an IEEE layout
  here) are left to the numpy path, which counts them. Tensors of a few values are read value by value.

Every field is exactly what the numpy path computes from the same bits (tests compare the two).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from functools import lru_cache
from itertools import islice
from pathlib import Path

from ..safetensors_io import INF_BITS, SafetensorsHeader

Fields = tuple[int, int, bool, float]  # nan, inf, all_zero, max_abs: TensorStats' pass-one fields

# dtype -> (bytes per value, struct code of the word, +Inf's magnitude bits, struct code of the float or None)
_LAYOUT = {"F16": (2, "H", INF_BITS["F16"], "e"), "BF16": (2, "H", INF_BITS["BF16"], None),
           "F32": (4, "I", INF_BITS["F32"], "f"), "F64": (8, "Q", INF_BITS["F64"], "d")}
SMALL_TENSOR = 64  # values read one by one (alphas, tiny factors): cheaper than the byte passes
MAX_TIES = 64  # tied values read one by one; more are narrowed down with big-int masks
_SAMPLE = 256  # values in the sample that bounds a column's maximum (larger: a tighter bound, fewer bytes kept)
_CLEAR_SIGN = bytes(b & 0x7F for b in range(256))


def pass_one(path: str | Path, header: SafetensorsHeader) -> dict[str, Fields] | None:
    """``name -> (nan, inf, all_zero, max_abs)`` for the tensors this path settles (IEEE dtypes, without NaN/Inf
    unless they hold at most ``SMALL_TENSOR`` values); the rest are for the numpy path. None where the file
    cannot be mapped or is shorter than its header says (the numpy path then reads it and reports as it did)."""
    found: dict[str, Fields] = {}
    tensors = [(info, _LAYOUT[info.dtype]) for info in header.tensors.values() if info.dtype in _LAYOUT]
    if not header.data_size:  # nothing to map: every tensor is empty
        return {info.name: (0, 0, False, 0.0) for info, _ in tensors}
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < header.total_size:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                base = header.data_offset
                for info, layout in tensors:
                    fields = _fields(mm, base + info.start, info.numel, *layout)
                    if fields is not None:
                        found[info.name] = fields
    except (OSError, ValueError):
        return None
    return found


def _fields(mm: mmap.mmap, offset: int, numel: int, size: int, word: str, inf_bits: int,
            float_code: str | None) -> Fields | None:
    if numel == 0:
        return 0, 0, False, 0.0
    if numel <= SMALL_TENSOR:
        mask = (1 << (8 * size - 1)) - 1
        magnitudes = [w & mask for w in struct.unpack_from(f"<{numel}{word}", mm, offset)]
        nan = sum(m > inf_bits for m in magnitudes)
        top = max((m for m in magnitudes if m < inf_bits), default=0)
        return nan, magnitudes.count(inf_bits), top == 0, _as_float(top, size, float_code)
    top = _max_magnitude(mm, offset, numel, size, inf_bits)
    if top >= inf_bits:  # NaN or Inf present: the numpy path counts them
        return None
    return 0, 0, top == 0, _as_float(top, size, float_code)


def _as_float(bits: int, size: int, float_code: str | None) -> float:
    if float_code is None:  # BF16: the top half of a float32
        return struct.unpack("<f", (bits << 16).to_bytes(4, "little"))[0]
    return struct.unpack(f"<{float_code}", bits.to_bytes(size, "little"))[0]


def _max_magnitude(mm: mmap.mmap, offset: int, numel: int, size: int, inf_bits: int) -> int:
    """The largest ``bits & ~sign`` over ``numel`` little-endian words of ``size`` bytes from ``offset``; any
    value at or above ``inf_bits`` once the leading byte alone says NaN/Inf (F16's exponent lies in it)."""
    end = offset + numel * size
    lead = mm[offset + size - 1 : end : size]
    sample = lead[:: max(1, numel // _SAMPLE)].translate(_CLEAR_SIGN)
    best = max(sample)  # a lower bound, usually close
    # Keep only the bytes above the bound (few or none: a delete pass is fastest when it keeps little).
    above = lead.translate(_CLEAR_SIGN, _magnitudes_up_to(best))
    if above:
        best = _byte_max(above)
    if best << (8 * size - 8) >= inf_bits:
        return best << (8 * size - 8)
    # Ties on the leading byte: read whole where few (the sample holds at most one of them), else narrow down.
    tied = None if not above and sample.count(best) > 1 else _first(_positions(lead, (best, best | 0x80)), MAX_TIES)
    if tied is not None:
        return max(_magnitude(mm, offset, size, i) for i in tied)
    chosen = int.from_bytes(lead.translate(_sign_free_equal(best)), "little")  # 0xFF where |lead| == best
    value = best
    for column in range(size - 2, -1, -1):
        picked = (int.from_bytes(mm[offset + column : end : size], "little") & chosen).to_bytes(numel, "little")
        best = _byte_max(picked)  # unchosen values read 0 here, below or equal to any chosen one
        value = value << 8 | best
        if column == 0 or best == 0:  # a zero maximum keeps the choice as it is
            continue
        tied = _first(_positions(picked, (best,)), MAX_TIES)  # picked == best only at chosen values (best > 0)
        if tied is not None:
            return max(_magnitude(mm, offset, size, i) for i in tied)
        chosen = int.from_bytes(picked.translate(_equal(best)), "little")
    return value


def _magnitude(mm: mmap.mmap, offset: int, size: int, index: int) -> int:
    start = offset + index * size
    return int.from_bytes(mm[start : start + size], "little") & ((1 << (8 * size - 1)) - 1)


def _positions(column: bytes, values: tuple[int, ...]) -> Iterator[int]:
    """Every index of ``column`` holding one of ``values`` (a bounded few: ``find`` skips the rest in C)."""
    for value in values:
        index = column.find(value)
        while index >= 0:
            yield index
            index = column.find(value, index + 1)


def _first(indices: Iterator[int], limit: int) -> list[int] | None:
    """The indices if there are at most ``limit`` of them, else None (without reading past ``limit + 1``)."""
    found = list(islice(indices, limit + 1))
    return found if len(found) <= limit else None


def _byte_max(data: bytes) -> int:
    """``max(data)`` (non-empty) without a Python loop over it: a sample's maximum, then delete every byte up to
    it and repeat on what is left (each round raises the bound, so it ends)."""
    while len(data) > _SAMPLE:
        bound = max(data[:: len(data) // _SAMPLE])
        above = data.translate(None, _up_to(bound))
        if not above:
            return bound
        data = above
    return max(data)


@lru_cache(maxsize=None)
def _up_to(bound: int) -> bytes:
    return bytes(range(bound + 1))


@lru_cache(maxsize=None)
def _magnitudes_up_to(bound: int) -> bytes:
    return bytes(b for b in range(256) if b & 0x7F <= bound)


@lru_cache(maxsize=None)
def _equal(value: int) -> bytes:
    return bytes(0xFF if b == value else 0 for b in range(256))


@lru_cache(maxsize=None)
def _sign_free_equal(value: int) -> bytes:
    return bytes(0xFF if b & 0x7F == value else 0 for b in range(256))
