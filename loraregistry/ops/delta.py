"""The weight delta of one adapter module, for every algorithm lorareg reads, in numpy (fp64 by default).

A module's tensors come as ``{role: array}`` (canonical roles, ``alpha`` included, see ``ops.io``).
Shapes (kohya/LyCORIS storage):

* LoRA / LoCon: ``down`` [r, in] or [r, in, kh, kw]; ``up`` [out, r] or [out, r, 1, 1];
  Tucker LoCon: ``down`` [r, in, 1, 1], ``mid`` [r, r, kh, kw].  dW = up . mid . down
* LoHa: ``hada_w1_a`` [out, r], ``hada_w1_b`` [r, in*kh*kw]; Tucker: ``hada_t1`` [r, r, kh, kw],
  ``hada_w1_a`` [r, out], ``hada_w1_b`` [r, in]; same for w2.  dW = (w1a w1b) * (w2a w2b) (elementwise)
* LoKr: ``lokr_w1`` [a, c] or ``lokr_w1_a`` [a, r] . ``lokr_w1_b`` [r, c]; ``lokr_w2`` [b, d(, kh, kw)] or
  ``lokr_w2_a`` [b, r] . ``lokr_w2_b`` [r, d(, kh, kw)], or Tucker ``lokr_t2`` [r, r, kh, kw] with
  ``lokr_w2_a`` [r, b], ``lokr_w2_b`` [r, d].  dW = kron(W1, W2): out = a*b, in = c*d
* full: ``diff`` is dW.

Scale is ``alpha / rank`` where rank is ``scale_rank``: LoRA the down rows, LoHa the rows of ``hada_w1_b``,
LoKr the rows of ``lokr_w2_b`` (else ``lokr_w1_b``; both halves full -> scale 1, as LyCORIS forces),
full 1. A missing or 0 alpha means scale 1.

Every delta is also a matrix [out, in*kh*kw] (conv kernels flattened into the input side, the layout
kohya's conv LoRA uses). ``lowrank_factors`` writes that matrix as ``up @ down`` exactly where the
algebra allows: LoRA as it is; LoHa as the face-splitting product of its halves (rank r1*r2, since
(A1 B1) * (A2 B2) = sum_ij (a1_i * a2_j)(b1_i * b2_j)^T); LoKr as kron(U1, U2) @ kron(V1, V2)
(rank rank(W1) * rank(W2)). A full-rank ``diff`` needs a dense SVD.

DoRA (``dora_scale``) rescales the *patched* weight's norms, so its delta depends on the base weight:
``module_delta`` computes it only with ``base_weight``; ``lowrank_factors`` refuses it (DoraNeedsBase).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import numpy as np

from ..alphas import algorithm, scale_rank  # noqa: F401 (re-exported)
from .errors import DoraNeedsBase, UnsupportedModule
from .lowrank import exact_compress, factor_svd

Tensors = Mapping[str, np.ndarray]


def module_scale(tensors: Tensors) -> float:
    """alpha / rank for one module (1.0 where there is no rank, or alpha is missing or 0)."""
    rank = scale_rank({role: np.shape(t) for role, t in tensors.items()})
    if not rank:
        return 1.0
    alpha = float(np.asarray(tensors["alpha"], dtype=np.float64)) if "alpha" in tensors else 0.0
    return (alpha or rank) / rank


# --- matrix factors ----------------------------------------------------------------------------------------


def _f(t: np.ndarray, dtype) -> np.ndarray:
    return np.asarray(t).astype(dtype, copy=False)


def _tucker_down(t: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Tucker core [r, s, *k] times b [s, n] -> [r, n*K] (columns ordered (n, k) like a conv weight)."""
    kernel = tuple(t.shape[2:])
    core = t.reshape(t.shape[0], t.shape[1], -1)
    return np.einsum("ijk,jq->iqk", core, b.reshape(b.shape[0], -1)).reshape(t.shape[0], -1), kernel


def _lora_factors(t: Tensors, dtype) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    if "down" not in t or "up" not in t:
        raise UnsupportedModule("a LoRA module needs both down and up factors")
    up = _f(t["up"], dtype)
    up = up.reshape(up.shape[0], -1)
    down = _f(t["down"], dtype)
    if "mid" in t:
        d, kernel = _tucker_down(_f(t["mid"], dtype), down.reshape(down.shape[0], -1))
        return up, d, (down.shape[1], *kernel)
    return up, down.reshape(down.shape[0], -1), tuple(down.shape[1:])


def _loha_half(t: Tensors, i: int, dtype) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    a, b = _f(t[f"hada_w{i}_a"], dtype), _f(t[f"hada_w{i}_b"], dtype)
    if f"hada_t{i}" in t:  # a [r, out], b [r, in]
        d, kernel = _tucker_down(_f(t[f"hada_t{i}"], dtype), b)
        return a.T, d, (b.shape[1], *kernel)
    return a, b.reshape(b.shape[0], -1), tuple(b.shape[1:])


def _min_side(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An exact factorization of a full matrix without an SVD: I @ W or W @ I, whichever is thinner."""
    rows, cols = w.shape
    return (np.eye(rows, dtype=w.dtype), w) if rows <= cols else (w, np.eye(cols, dtype=w.dtype))


def _lokr_halves(t: Tensors, dtype):
    """((U1, V1), (U2, V2), (c, d, *kernel)): W1 = U1 V1 [a, c]; W2 as a matrix [b, d*K] = U2 V2."""
    if "lokr_w1" in t:
        w1 = _f(t["lokr_w1"], dtype)
        first = _min_side(w1.reshape(w1.shape[0], w1.shape[1]))
    elif "lokr_w1_a" in t and "lokr_w1_b" in t:
        first = (_f(t["lokr_w1_a"], dtype), _f(t["lokr_w1_b"], dtype))
    else:
        raise UnsupportedModule("a LoKr module needs lokr_w1 or lokr_w1_a + lokr_w1_b")
    c = first[1].shape[1]
    if "lokr_w2" in t:
        w2 = _f(t["lokr_w2"], dtype)
        second, tail = _min_side(w2.reshape(w2.shape[0], -1)), tuple(w2.shape[1:])
    elif "lokr_t2" in t and "lokr_w2_a" in t and "lokr_w2_b" in t:  # a [r, b], b [r, d]
        b = _f(t["lokr_w2_b"], dtype)
        down, kernel = _tucker_down(_f(t["lokr_t2"], dtype), b)
        second, tail = (_f(t["lokr_w2_a"], dtype).T, down), (b.shape[1], *kernel)
    elif "lokr_w2_a" in t and "lokr_w2_b" in t:
        b = _f(t["lokr_w2_b"], dtype)
        second, tail = (_f(t["lokr_w2_a"], dtype), b.reshape(b.shape[0], -1)), tuple(b.shape[1:])
    else:
        raise UnsupportedModule("a LoKr module needs lokr_w2, or lokr_w2_a + lokr_w2_b (+ lokr_t2)")
    # A half factored wider than its matrix shrinks losslessly first: the Kronecker width is the product.
    return exact_compress(*first), exact_compress(*second), (c * tail[0], *tail[1:])


def _face_split(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """Columns a1_i * a2_j for every (i, j): [m, r1] x [m, r2] -> [m, r1*r2]."""
    return (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], -1)


def exact_factors(tensors: Tensors, *, dtype=np.float64) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(up, down, in_shape): the unscaled delta as ``up @ down`` ([out, p] @ [p, in*K]) and the delta's
    input side shape ``(in, *kernel)`` as stored. No truncation, no scale."""
    algo = algorithm(tensors)
    if algo == "lora":
        return _lora_factors(tensors, dtype)
    if algo == "loha":
        u1, d1, in_shape = _loha_half(tensors, 1, dtype)
        u2, d2, _ = _loha_half(tensors, 2, dtype)
        (u1, d1), (u2, d2) = exact_compress(u1, d1), exact_compress(u2, d2)  # the face-split width is r1 * r2
        return _face_split(u1, u2), _face_split(d1.T, d2.T).T, in_shape
    if algo == "lokr":
        (u1, v1), (u2, v2), in_shape = _lokr_halves(tensors, dtype)
        return np.kron(u1, u2), np.kron(v1, v2), in_shape
    if algo == "full":
        diff = _f(tensors["diff"], dtype)
        matrix = diff.reshape(diff.shape[0], -1)
        return *exact_compress(matrix, np.eye(matrix.shape[1], dtype=dtype)), tuple(diff.shape[1:])
    raise UnsupportedModule(f"no delta for a module with roles {sorted(tensors)}")


# --- public --------------------------------------------------------------------------------------------------


def _shape_for(out: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    natural = (out, *in_shape)
    if out_shape is None:
        return natural
    out_shape = tuple(int(x) for x in out_shape)
    if out_shape[0] != out or prod(out_shape[1:]) != prod(in_shape):
        raise UnsupportedModule(f"factors give a {natural} delta, which cannot be read as {out_shape}")
    return out_shape


def module_delta(tensors: Tensors, *, out_shape: tuple[int, ...] | None = None,
                 base_weight: np.ndarray | None = None, scaled: bool = True, dtype=np.float64) -> np.ndarray:
    """The dense delta of one module (scale included unless ``scaled=False``), shaped ``out_shape``
    (e.g. the base weight's [out, in, kh, kw]; needed for LoHa on a conv, whose factors store the kernel
    flattened) or the stored layout: [out, in] for Linear, [out, in, kh, kw] for conv.

    DoRA modules need ``base_weight`` (the exact base weight): their delta is
    ``m * (W + dW) / ||W + dW|| - W`` with the norm per output row (peft, LyCORIS ``wd_on_out``) or per
    input column (LyCORIS' default ``dora_scale`` [1, in, ...]).
    """
    up, down, in_shape = exact_factors(tensors, dtype=dtype)
    delta = (up @ down).reshape(_shape_for(up.shape[0], in_shape, out_shape))
    if scaled:
        delta *= module_scale(tensors)
    if "dora_scale" not in tensors:
        return delta
    if base_weight is None:
        raise DoraNeedsBase("a DoRA module's delta depends on the base weight",
                            hint="pass the exact base weight; an approximate base gives a wrong delta")
    return _dora_delta(_f(base_weight, dtype).reshape(delta.shape), delta, _f(tensors["dora_scale"], dtype))


def _dora_delta(weight: np.ndarray, delta: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    patched = weight + delta
    per_column = magnitude.ndim > 1 and magnitude.shape[0] == 1 and weight.shape[0] != 1
    if per_column:  # [1, in, ...]: norm over output rows and kernel, per input channel
        flat = np.swapaxes(patched, 0, 1).reshape(patched.shape[1], -1)
        norm = np.linalg.norm(flat, axis=1).reshape(1, patched.shape[1], *([1] * (patched.ndim - 2)))
    else:  # [out] or [out, 1, ...]: norm per output row
        norm = np.linalg.norm(patched.reshape(patched.shape[0], -1), axis=1)
        norm = norm.reshape(patched.shape[0], *([1] * (patched.ndim - 1)))
    return magnitude.reshape(norm.shape) * patched / norm - weight


@dataclass(frozen=True)
class LowRank:
    """A module's delta as plain LoRA factors with the scale folded into ``up``.

    ``up`` [out, rank] and ``down`` [rank, in*K]; ``shape`` is the delta's full shape (out, in, *kernel).
    ``exact_rank`` is the rank of the exact factorization; ``rel_error`` the relative Frobenius error of
    the truncation to ``rank`` (0.0 when exact).
    """

    up: np.ndarray
    down: np.ndarray
    shape: tuple[int, ...]
    exact_rank: int
    rel_error: float = 0.0

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    @property
    def exact(self) -> bool:
        return self.rank >= self.exact_rank or self.rel_error == 0.0

    def lora_tensors(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """{down, up} in kohya/peft layout: conv deltas get down [r, in, kh, kw] and up [out, r, 1, 1]."""
        kernel = self.shape[2:]
        down = self.down.reshape(self.rank, *self.shape[1:])
        up = self.up.reshape(self.shape[0], self.rank, *([1] * len(kernel)))
        return {"down": down.astype(dtype), "up": up.astype(dtype)}


def lowrank_factors(tensors: Tensors, *, out_shape: tuple[int, ...] | None = None, max_rank: int | None = None,
                    dtype=np.float64) -> LowRank:
    """The module's scaled delta as plain LoRA factors: exact (see module docstring) when that needs at
    most ``max_rank`` (None: no limit) columns, else the best rank-``max_rank`` approximation by factor-space
    SVD, with its relative error. A factorization wider than min(out, in*K) is shrunk losslessly first.
    """
    if "dora_scale" in tensors:
        raise DoraNeedsBase("a DoRA module has no plain-LoRA form without its base weight",
                            hint="keep DoRA (kohya or peft), or bake it into the exact base first")
    up, down, in_shape = exact_factors(tensors, dtype=dtype)
    shape = _shape_for(up.shape[0], in_shape, out_shape)
    up = up * module_scale(tensors)
    up, down = exact_compress(up, down)
    exact_rank = up.shape[1]
    if max_rank is None or exact_rank <= max_rank:
        return LowRank(up=up, down=down, shape=shape, exact_rank=exact_rank)
    svd = factor_svd(up, down)
    new_up, new_down = svd.factors(max_rank)
    return LowRank(up=new_up, down=new_down, shape=shape, exact_rank=exact_rank, rel_error=svd.error(max_rank)[1])
