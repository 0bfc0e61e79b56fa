"""DoRA as plain LoRA, given the base weight.

A DoRA module (peft ``use_dora``, LyCORIS ``dora_wd``) stores a LoRA (up, down, alpha) and a magnitude ``m``.
The patched weight is ``W' = m * (W + dW) / ||W + dW||`` with ``dW = (alpha / r) up @ down`` and the norm taken

* per output row: peft (``DoraLinearLayer.get_weight_norm``: ``torch.linalg.norm(W + s BA, dim=1)``; conv:
  over every dim but 0, magnitude stored [1, out, 1, 1]; merge_and_unload multiplies ``m / norm`` into the rows),
  and LyCORIS with ``wd_on_out`` ([out, 1, ...]);
* per input channel: LyCORIS' default ``dora_scale`` [1, in, ...] (over the output rows and the kernel).

The plain-LoRA delta ``W' - W`` depends on W. Per output row, with ``g = m / ||W + dW||`` (one value a row):

    W' - W = diag(g) (W + dW) - W = diag(g) dW + diag(g - 1) W = [diag(g) s up | E] @ [down ; (g - 1)_E W_E]

where E selects the k rows whose ``g != 1``: exact at rank r + k. Per input channel the same with columns
(``W' - W = dW diag(g) + W diag(g - 1)``). A trained magnitude moves nearly every norm (k ~ out), so the exact
form is used only while its factors stay smaller than the dense delta and within the requested rank; otherwise
the dense delta is formed and truncated to the requested rank (default: the module's own rank r) by SVD
(``extract.truncated_svd``: LAPACK for small modules, randomized with power iterations for large), and the
relative Frobenius error is measured on the residual itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .delta import LowRank, exact_factors, module_scale
from .errors import UnsupportedModule

PEFT_LAYOUT_FORMATS = frozenset({"peft", "diffusers"})  # magnitude per output row whatever its shape
# A gain m / ||W + dW|| this close to 1 is 1 up to the float64 rounding of the norm: the row (column) counts as
# unmoved, and what that leaves out, below 1e-14 of the row, is far under any storage precision.
UNMOVED_GAIN = 64 * np.finfo(np.float64).eps


def per_output_row(magnitude: np.ndarray, out: int, *, source_format: str | None = None) -> bool:
    """Whether a DoRA magnitude holds one norm per output row (peft, diffusers, LyCORIS ``wd_on_out``) or per
    input channel (LyCORIS' default [1, in, ...]). peft's conv magnitude is [1, out, 1, 1], so the file's format
    decides before the shape does."""
    if source_format in PEFT_LAYOUT_FORMATS:
        return True
    return not (magnitude.ndim > 1 and magnitude.shape[0] == 1 and out != 1)


def _norms(patched: np.ndarray, per_row: bool, channels: int) -> np.ndarray:
    """||W + dW|| per output row, or per input channel (its kernel columns together), as float64."""
    if per_row:
        return np.linalg.norm(patched, axis=1)
    grouped = patched.reshape(patched.shape[0], channels, -1)
    return np.sqrt(np.einsum("ock,ock->c", grouped, grouped))


def _one_hot(size: int, where: np.ndarray) -> np.ndarray:
    selector = np.zeros((size, where.size))
    selector[where, np.arange(where.size)] = 1.0
    return selector


def dora_lowrank(roles: Mapping[str, np.ndarray], base_weight: np.ndarray, *, per_row: bool,
                 max_rank: int | None = None, seed: int = 0) -> LowRank:
    """The DoRA module's delta ``W' - W`` on ``base_weight`` as plain LoRA factors (scale folded into ``up``).

    Exact at rank r + k (see module docstring) when that is at most ``max_rank`` (None: while the factors take
    less room than the dense delta); else the best rank-``max_rank`` approximation (None: the module's rank r)
    with its relative error. ``per_row``: the magnitude's norm axis (``per_output_row``).
    """
    from .extract import truncated_svd

    up, down, in_shape = exact_factors(roles)  # float64, unscaled
    out, inner, width = up.shape[0], down.shape[1], up.shape[1]
    shape = (out, *in_shape)
    weight = np.asarray(base_weight, dtype=np.float64)
    weight_shape = weight.shape
    if weight.size != out * inner:
        raise UnsupportedModule(f"the base weight {tuple(weight.shape)} does not fit the DoRA module's {shape} delta",
                                hint="pass the base model the adapter was trained on")
    weight = weight.reshape(out, inner)
    up = up * module_scale(roles)
    patched = weight + up @ down
    channels = weight_shape[1] if len(weight_shape) > 2 else in_shape[0]  # a LoHa's factors flatten the kernel
    norms = _norms(patched, per_row, channels)
    magnitude = np.asarray(roles["dora_scale"], dtype=np.float64).reshape(-1)
    if magnitude.size != norms.size:
        axis = "output row" if per_row else "input channel"
        raise UnsupportedModule(f"the DoRA magnitude has {magnitude.size} values for {norms.size} {axis}s")
    if not norms.all():
        raise UnsupportedModule("the patched weight has an all-zero row or column, whose DoRA norm is 0",
                                hint="check that --base is the model the adapter was trained on")
    gain = magnitude / norms
    if not per_row:
        gain = np.repeat(gain, inner // channels)  # one gain per flattened column (channel, kernel position)
    moved = np.flatnonzero(np.abs(gain - 1.0) > UNMOVED_GAIN)
    limit = min(max_rank if max_rank is not None else out * inner // (out + inner), out, inner)
    if width + moved.size <= limit:
        if per_row:
            new_up = np.concatenate([gain[:, None] * up, _one_hot(out, moved)], axis=1)
            new_down = np.concatenate([down, (gain[moved] - 1.0)[:, None] * weight[moved]], axis=0)
        else:
            new_up = np.concatenate([up, weight[:, moved] * (gain[moved] - 1.0)], axis=1)
            new_down = np.concatenate([down * gain, _one_hot(inner, moved).T], axis=0)
        return LowRank(up=new_up, down=new_down, shape=shape, exact_rank=new_up.shape[1])
    delta = (gain[:, None] * patched if per_row else patched * gain) - weight
    rank = min(max_rank if max_rank is not None else width, out, inner)
    svd = truncated_svd(delta, rank, seed=seed)
    root = np.sqrt(svd.s)
    new_up, new_down = svd.u * root, root[:, None] * svd.vt
    total = float(np.linalg.norm(delta))
    error = float(np.linalg.norm(delta - new_up @ new_down)) / total if total > 0 else 0.0
    return LowRank(up=new_up, down=new_down, shape=shape, exact_rank=min(width + moved.size, out, inner),
                   rel_error=error)


# --- base weights ------------------------------------------------------------------------------------------


def open_base_weights(base: str | None):
    """The ``ops.checkpoint.Checkpoint`` that ``--base`` names when it is a model folder or single-file checkpoint;
    None for an architecture id (shapes only) or no base."""
    import os

    if base is None or not os.path.exists(os.path.expanduser(base)):
        return None
    from .checkpoint import open_checkpoint

    return open_checkpoint(base)


def lower_dora(module, roles: Mapping[str, np.ndarray], weights, *, source_format: str | None,
               max_rank: int | None = None) -> LowRank:
    """One DoRA module of a file in ``source_format`` as plain LoRA on the base ``weights`` (``open_base_weights``);
    DoraNeedsBase (exit 2) when there are none."""
    import zlib

    from .errors import DoraNeedsBase

    if weights is None:
        raise DoraNeedsBase(f"module {module} is DoRA: its plain-LoRA delta needs the base weights",
                            hint="pass --base MODEL, the diffusers folder or single-file checkpoint it was trained on")
    try:
        weight = weights.read(module, dtype=np.float64)
    except KeyError:
        raise UnsupportedModule(f"module {module} is DoRA and the base {weights.path} has no weight for it",
                                hint="pass the base model the adapter was trained on") from None
    out = np.shape(roles["up"])[0] if "up" in roles else weight.shape[0]
    per_row = per_output_row(np.asarray(roles["dora_scale"]), out, source_format=source_format)
    seed = zlib.crc32(str(module).encode())  # randomized SVD of large modules: the same answer every run
    return dora_lowrank(roles, weight, per_row=per_row, max_rank=max_rank, seed=seed)
