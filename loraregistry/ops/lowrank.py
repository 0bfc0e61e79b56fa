"""Factor-space SVD of a low-rank product, and kohya's rank-choice rules.

A module's delta is ``up @ down`` with ``up`` [out, p] and ``down`` [p, n], p small. Its SVD comes from
the factors alone, through the p x p Gram matrices: ``up^T up = Lu Lu^T`` and ``down down^T = Ld Ld^T``
(Cholesky), so ``up Lu^-T`` has orthonormal columns, ``Ld^-1 down`` orthonormal rows, and
``up @ down = (up Lu^-T) (Lu^T Ld) (Ld^-1 down)``. The SVD of the p x p core ``Lu^T Ld = A S B^T`` gives
``u = up (Lu^-T A)`` and ``vt = (B^T Ld^-1) down``. Cost: two Gram products O((out + n) p^2) and p x p work,
against O(out n min(out, n)) for the dense SVD; the out x n matrix is never built, nor even the full
``u``/``vt``: a truncation to k multiplies the factors by p x k mixing matrices. By Eckart-Young the k largest
singular triplets are the best rank-k approximation, with squared Frobenius error ``sum(S[k:]**2)``.

Numerics: a Gram matrix squares the factor's condition number, and the basis ``up Lu^-T`` loses
orthogonality by about ``eps * cond^2``. The Gram path is taken only where that stays below
``GRAM_TOLERANCE`` (cond estimated from the Cholesky diagonal), first in float32 (fp16/bf16/fp32 factors),
then in float64 (the p x p work is always float64). A failed Cholesky (rank-deficient factors, e.g.
repeated ``down`` rows) or a condition still too large falls back to Householder QR of the factors in
float64, which is stable for any condition.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import UnsupportedModule

# kohya resize_lora.py: a module whose largest singular value is at most this is a zero matrix (rank 1).
MIN_SV = 1e-6
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
# Largest loss of orthogonality (eps * cond^2) the Gram path accepts: 100x below fp16's resolution, so
# results stored in fp16/bf16 are the optimum to storage precision. float32 then takes cond <= ~13,
# float64 cond <= ~3e5; beyond, QR.
GRAM_TOLERANCE = 1e-5
_F32_HALF_SCALE = np.float32(2.0**112)  # 2^(127 - 15): moves a half's exponent bias to float32's


@dataclass(frozen=True)
class FactorSVD:
    """``up @ down = u @ diag(s) @ vt`` with orthonormal ``u`` columns and ``vt`` rows, ``s`` descending.

    ``u = left @ left_mix`` and ``vt = right_mix @ right`` are built only when asked for: ``left``/``right``
    are the factors themselves (Gram path) or their QR bases (``method == "qr"``), ``*_mix`` are p x p.
    """

    s: np.ndarray  # [p], float64
    left: np.ndarray  # [out, p]
    left_mix: np.ndarray  # [p, p], float64
    right_mix: np.ndarray  # [p, p], float64
    right: np.ndarray  # [p, n]
    method: str = "cholesky"  # "cholesky" (Gram matrices, float32 or float64) or "qr" (the fallback)

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    @cached_property
    def u(self) -> np.ndarray:  # [out, p]
        return self.left @ self.left_mix.astype(self.left.dtype)

    @cached_property
    def vt(self) -> np.ndarray:  # [p, n]
        return self.right_mix.astype(self.right.dtype) @ self.right

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) of the best rank-``rank`` approximation, in the factors' compute dtype; sqrt(S) on each
        side keeps both factors of similar magnitude, which fp16/bf16 storage prefers."""
        root = np.sqrt(self.s[:rank])
        left_mix = (self.left_mix[:, :rank] * root).astype(self.left.dtype)
        right_mix = (root[:, None] * self.right_mix[:rank]).astype(self.right.dtype)
        return self.left @ left_mix, right_mix @ self.right

    def error(self, rank: int) -> tuple[float, float]:
        """(absolute, relative) Frobenius error of truncating to ``rank``; relative is 0 for a zero delta."""
        total = float(np.sum(self.s**2))
        dropped = float(np.sum(self.s[rank:] ** 2))
        return dropped**0.5, (dropped / total) ** 0.5 if total > 0 else 0.0

    def retained(self, rank: int) -> float:
        """Fraction of the Frobenius norm kept, sqrt(sum S[:k]^2 / sum S^2) (1.0 for a zero delta)."""
        total = float(np.sum(self.s**2))
        return (float(np.sum(self.s[:rank] ** 2)) / total) ** 0.5 if total > 0 else 1.0


def to_float32(array: np.ndarray) -> np.ndarray:
    """float32 values of fp16/bf16/fp32 factors (float32 ones as they are), exact.

    fp16 goes through its bits, because numpy's own half -> float cast runs 3-4x slower than these three
    vectorized integer passes: sign-extend to int32 and shift left by 13 (exponent and mantissa land in
    place; the sign lands on bits 28-31), clear bits 28-30, then multiply by 2^112 to move the exponent bias
    from 15 to 127 (which also turns half subnormals into float32 normals). Infinite and NaN halves would
    read as numbers of magnitude >= 2^16 (the largest finite half is 65504): those are refused.
    """
    array = np.asarray(array)
    if array.dtype == np.float32:
        return array
    if array.dtype == np.float16:
        bits = array.view(np.int16).astype(np.int32)
        bits <<= 13
        bits &= np.int32(-0x70000001)  # 0x8FFFFFFF: the sign bit, exponent and mantissa
        out = bits.view(np.float32)
        out *= _F32_HALF_SCALE
        if out.size and (float(out.max()) >= 65536.0 or float(out.min()) <= -65536.0):
            raise _non_finite()
        return out
    if array.dtype.name == "bfloat16":  # the top half of a float32
        return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def _non_finite() -> UnsupportedModule:
    return UnsupportedModule("the factors hold infinite or NaN values",
                             hint="run lorareg verify on the input; a broken module cannot be resized or merged")


def factor_svd(up: np.ndarray, down: np.ndarray) -> FactorSVD:
    """The SVD of ``up @ down`` from the factors (see module docstring); ``method`` says which path answered."""
    return factor_svds([(up, down)])[0]


def factor_svds(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[FactorSVD]:
    """``factor_svd`` of many (up, down) pairs: pairs of one rank and dtype share each small LAPACK call
    (stacked Cholesky, SVD and solves), which saves numpy's per-call overhead on modules of rank 8-128.

    float32 pairs stay float32 where that is accurate enough, anything else is float64; a pair the Gram
    path refuses is retried in float64, then by QR.
    """
    arrays = [(np.asarray(up), np.asarray(down)) for up, down in pairs]
    results: list[FactorSVD | None] = [None] * len(arrays)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (up, down) in enumerate(arrays):
        single = up.dtype == np.float32 and down.dtype == np.float32
        if not single:
            arrays[i] = (up.astype(np.float64, copy=False), down.astype(np.float64, copy=False))
        groups.setdefault((up.shape[1], single), []).append(i)
    for indices in groups.values():
        for i, svd in zip(indices, _gram_svds([arrays[i] for i in indices])):
            results[i] = svd
    for i, svd in enumerate(results):
        if svd is not None:
            continue
        up, down = arrays[i]
        if up.dtype == np.float32:  # not accurate enough in float32: float64 Grams may be
            up, down = up.astype(np.float64), down.astype(np.float64)
            svd = _gram_svds([(up, down)])[0]
        results[i] = svd or _qr_svd(up, down)
    return results  # type: ignore[return-value]


def _cholesky(grams: np.ndarray) -> np.ndarray:
    """Cholesky factors of stacked Gram matrices; a matrix that is not positive definite gives NaN."""
    try:
        return np.linalg.cholesky(grams)
    except np.linalg.LinAlgError:  # some matrix failed: find it (rare, so one call each)
        out = np.full_like(grams, np.nan)
        for i, gram in enumerate(grams):
            with contextlib.suppress(np.linalg.LinAlgError):
                out[i] = np.linalg.cholesky(gram)
        return out


def _condition_estimates(cholesky: np.ndarray) -> np.ndarray:
    """max/min of each Cholesky diagonal: the factor's condition number up to a small factor (exactly where
    a row is close to the span of the rows before it, the near-collinear case); inf for a failed factor."""
    diagonal = np.abs(np.diagonal(cholesky, axis1=1, axis2=2))
    low, high = diagonal.min(axis=1), diagonal.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = high / low
    return np.where(np.isfinite(cond), cond, np.inf)


def _gram_svds(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[FactorSVD | None]:
    """The Gram/Cholesky path for pairs of one rank and dtype; None where it would not be accurate."""
    dtype = pairs[0][0].dtype
    # float32 Grams (BLAS syrk), the p x p work in float64
    gram_up = np.stack([up.T @ up for up, _ in pairs]).astype(np.float64)
    gram_down = np.stack([down @ down.T for _, down in pairs]).astype(np.float64)
    if not (np.isfinite(gram_up).all() and np.isfinite(gram_down).all()):
        raise _non_finite()
    lu, ld = _cholesky(gram_up), _cholesky(gram_down)
    worst = np.maximum(_condition_estimates(lu), _condition_estimates(ld))
    good = np.flatnonzero(worst**2 * np.finfo(dtype).eps <= GRAM_TOLERANCE)
    results: list[FactorSVD | None] = [None] * len(pairs)
    if not len(good):
        return results
    lu_t, ld = np.swapaxes(lu[good], 1, 2), ld[good]
    a, s, bt = np.linalg.svd(lu_t @ ld)
    left_mix = np.linalg.solve(lu_t, a)  # Lu^-T A
    right_mix = np.swapaxes(np.linalg.solve(np.swapaxes(ld, 1, 2), np.swapaxes(bt, 1, 2)), 1, 2)  # B^T Ld^-1
    for j, i in enumerate(good):
        up, down = pairs[i]
        results[i] = FactorSVD(s=s[j], left=up, left_mix=left_mix[j], right_mix=right_mix[j], right=down)
    return results


def _qr_svd(up: np.ndarray, down: np.ndarray) -> FactorSVD:
    """Thin QR of both factors, SVD of the core ``Ru Rd^T``: stable for any condition, float64."""
    if not (np.isfinite(up).all() and np.isfinite(down).all()):
        raise _non_finite()
    qu, ru = np.linalg.qr(up)
    qd, rd = np.linalg.qr(down.T)
    u, s, vt = np.linalg.svd(ru @ rd.T, full_matrices=False)
    return FactorSVD(s=s, left=qu, left_mix=u, right_mix=vt, right=np.ascontiguousarray(qd.T), method="qr")


def exact_compress(up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same product with at most min(out, n) columns: a factorization wider than its matrix is lossless
    to shrink (the dropped singular values are zero)."""
    limit = min(up.shape[0], down.shape[1])
    if up.shape[1] <= limit:
        return up, down
    return factor_svd(up, down).factors(limit)


# --- kohya's dynamic rank (sd-scripts networks/resize_lora.py) --------------------------------------------


def _index_sv_ratio(s: np.ndarray, ratio: float) -> int:
    index = int(np.sum(s > s[0] / ratio))
    return max(1, min(index, len(s) - 1))


def _index_sv_cumulative(s: np.ndarray, target: float) -> int:
    cumulative = np.cumsum(s) / float(np.sum(s))
    index = int(np.searchsorted(cumulative, target)) + 1
    return max(1, min(index, len(s) - 1))


def _index_sv_fro(s: np.ndarray, target: float) -> int:
    squared = s**2
    cumulative = np.cumsum(squared) / float(np.sum(squared))
    index = int(np.searchsorted(cumulative, target**2)) + 1
    return max(1, min(index, len(s) - 1))


_INDEX = {"sv_ratio": _index_sv_ratio, "sv_cumulative": _index_sv_cumulative, "sv_fro": _index_sv_fro}


def choose_rank(s: np.ndarray, *, rank: int | None, method: str | None = None, param: float | None = None) -> int:
    """The rank to keep for singular values ``s`` (descending), with kohya's rules.

    Fixed: ``rank``. Dynamic (``method`` in DYNAMIC_METHODS, ``rank`` then a cap, None = no cap):
    ``sv_ratio`` keeps singular values above max / param; ``sv_cumulative`` keeps until the cumulative
    sum fraction reaches param; ``sv_fro`` until the Frobenius-norm fraction reaches param. kohya's off-by-
    one (``index + 1``) is kept so ranks match its output. Always at least 1 (1 for a zero delta:
    S[0] <= MIN_SV) and never more than ``len(s)`` (the module's rank) or the cap.
    """
    available = len(s)
    if available == 0:
        return 1
    if method is None:
        new = rank if rank is not None else available
    elif available == 1:
        new = 1
    else:
        new = _INDEX[method](s, float(param)) + 1
        if rank is not None:
            new = min(new, rank)
    if s[0] <= MIN_SV:
        return 1
    return max(1, min(new, available))
