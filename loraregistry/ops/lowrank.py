"""Factor-space SVD of a low-rank product, and kohya's rank-choice rules.

A module's delta is ``up @ down`` with ``up`` [out, p] and ``down`` [p, n], p small. Its SVD comes from
the factors alone: ``up = Qu Ru`` and ``down.T = Qd Rd`` (thin QR), so ``up @ down = Qu (Ru Rd^T) Qd^T``
and the SVD of the p x p core ``Ru Rd^T = U S V^T`` gives ``up @ down = (Qu U) S (Qd V)^T``. Cost
O((out + n) p^2 + p^3) against O(out n min(out, n)) for the dense SVD, and the out x n matrix is never
built. Truncating to k keeps the k largest singular values: by Eckart-Young the best rank-k
approximation, with squared Frobenius error ``sum(S[k:]**2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# kohya resize_lora.py: a module whose largest singular value is at most this is a zero matrix (rank 1).
MIN_SV = 1e-6
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class FactorSVD:
    """``up @ down = u @ diag(s) @ vt`` with orthonormal ``u`` columns and ``vt`` rows, ``s`` descending."""

    u: np.ndarray  # [out, p]
    s: np.ndarray  # [p]
    vt: np.ndarray  # [p, n]

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) of the best rank-``rank`` approximation; sqrt(S) on each side keeps both factors
        of similar magnitude, which fp16/bf16 storage prefers."""
        root = np.sqrt(self.s[:rank])
        return self.u[:, :rank] * root, root[:, None] * self.vt[:rank]

    def error(self, rank: int) -> tuple[float, float]:
        """(absolute, relative) Frobenius error of truncating to ``rank``; relative is 0 for a zero delta."""
        total = float(np.sum(self.s**2))
        dropped = float(np.sum(self.s[rank:] ** 2))
        return dropped**0.5, (dropped / total) ** 0.5 if total > 0 else 0.0

    def retained(self, rank: int) -> float:
        """Fraction of the Frobenius norm kept, sqrt(sum S[:k]^2 / sum S^2) (1.0 for a zero delta)."""
        total = float(np.sum(self.s**2))
        return (float(np.sum(self.s[:rank] ** 2)) / total) ** 0.5 if total > 0 else 1.0


def factor_svd(up: np.ndarray, down: np.ndarray) -> FactorSVD:
    """The SVD of ``up @ down`` from the factors (see module docstring), in fp64."""
    up = np.asarray(up, dtype=np.float64)
    down = np.asarray(down, dtype=np.float64)
    qu, ru = np.linalg.qr(up)
    qd, rd = np.linalg.qr(down.T)
    u, s, vt = np.linalg.svd(ru @ rd.T, full_matrices=False)
    return FactorSVD(u=qu @ u, s=s, vt=vt @ qd.T)


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
