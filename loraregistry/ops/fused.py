"""SD3/Flux fused projections and row order, exactly.

Original SD3/Flux code fuses projections that diffusers keeps apart (``img_attn.qkv`` = ``to_q``/``to_k``/``to_v``;
``single_blocks.N.linear1`` = q, k, v and ``proj_mlp``; canonical paths in braces, ``formats.mmdit``).

* Split: a LoRA ``(down, up, alpha)`` on a fused module is exactly one LoRA per target with the same ``down``
  (bitwise), the target's row slice of ``up`` and the same alpha (same rank, so the same scale alpha / r).
* Fuse: targets that share ``down`` and scale become one module with the ``up`` slices stacked (bitwise the
  inverse of split). Targets with their own ``down`` (a diffusers/peft file, each at rank r) stack their ``down``
  factors at rank k*r with a block-diagonal ``up`` (bytes kept, zeros off the diagonal) and alpha k*alpha, so the
  scale alpha / r is unchanged. Only targets whose scales or dtypes differ have the scale folded into ``up``
  (alpha = rank), in float64 before the cast back.
* Missing targets get zero rows; their widths come from a shipped fingerprint, else from the families'
  structure: q, k and v are equally wide and Flux's MLP is 4x (``mlp_ratio`` 4), which tiny test models keep.
* Row order: the original ``final_layer.adaLN_modulation.1`` stores [shift, scale] where diffusers'
  ``norm_out.linear`` stores [scale, shift]; so does SD3's last ``context_block.adaLN_modulation.1``
  (``norm1_context.linear`` of the ``context_pre_only`` block, the one whose output is 2 x hidden, not 6 x).
  A converter between original and diffusers names swaps the halves of ``up`` (and of a per-row DoRA
  magnitude): ``reorder_scale_shift``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ..canonical import CanonicalKey, ModuleKey
from ..formats import fused_targets, is_fused
from ..formats.mmdit import SCALE_SHIFT_SWAPPED, families_of
from .delta import module_scale
from .errors import UnsupportedModule
from .targets import target_sizes

Roles = dict[str, np.ndarray]

_MLP_RATIO = 4  # Flux single blocks: linear1 = [q, k, v, mlp] with mlp 4x as wide as q
_CONTEXT_NORM = re.compile(r"transformer_blocks\.\d+\.norm1_context\.linear")


def split_sizes(targets: tuple[str, ...], total: int, *, label: str) -> list[int]:
    """How the ``total`` rows of a fused module split over ``targets``."""
    sizes = target_sizes(targets, total)
    if sizes is not None:
        return sizes
    weights = [_MLP_RATIO if t.endswith("proj_mlp") else 1 for t in targets]
    unit, rest = divmod(total, sum(weights))
    if rest:
        raise UnsupportedModule(f"{label}: cannot tell how the {total} rows of the fused up factor split over "
                                f"{', '.join(targets)}", hint="no known SD3/Flux fingerprint or structure matches")
    return [unit * w for w in weights]


def _missing_sizes(targets: tuple[str, ...], sizes: list[int | None], *, label: str) -> list[int]:
    """Widths of targets with no module, consistent with the given ones."""
    known = target_sizes(targets, None)
    if known is not None and all(s is None or s == k for s, k in zip(sizes, known)):
        return known
    units = {s // (_MLP_RATIO if t.endswith("proj_mlp") else 1) for t, s in zip(targets, sizes) if s is not None}
    if len(units) != 1:
        raise UnsupportedModule(f"{label}: cannot size the missing targets to fuse them",
                                hint="write with dialect transformer_names=diffusers instead")
    unit = units.pop()
    return [s if s is not None else unit * (_MLP_RATIO if t.endswith("proj_mlp") else 1)
            for t, s in zip(targets, sizes)]


def split_fused(module: ModuleKey, roles: Mapping[str, np.ndarray]) -> dict[ModuleKey, Roles]:
    """One plain-LoRA (or DoRA) module on a fused path -> one module per target (down shared bitwise)."""
    targets = fused_targets(module.path)
    up = roles["up"]
    sizes = split_sizes(targets, up.shape[0], label=str(module))
    blocks = _block_diagonal_parts(module, roles, sizes)
    if blocks is not None:
        return blocks
    out: dict[ModuleKey, Roles] = {}
    start = 0
    for target, size in zip(targets, sizes):
        part = dict(roles)
        part["up"] = up[start:start + size]
        for per_row in ("up_bias", "dora_scale"):
            if per_row in roles and roles[per_row].shape[0] == up.shape[0]:
                part[per_row] = roles[per_row][start:start + size]
        out[ModuleKey(module.component, target)] = part
        start += size
    return out


def _block_diagonal_parts(module: ModuleKey, roles: Mapping[str, np.ndarray], sizes: list[int]
                          ) -> dict[ModuleKey, Roles] | None:
    """The inverse of fusing targets with their own ``down`` (what ``fuse_split`` writes for a peft file): when the
    ``up`` of a plain 2-D LoRA is block-diagonal over equal rank chunks, each target gets its chunk of ``down``, its
    diagonal block of ``up`` and alpha / k, so its rank and scale come back (bitwise). As diffusers' Flux converter
    does for such kohya files."""
    up, down = roles["up"], roles["down"]
    k = len(sizes)
    if set(roles) - {"up", "down", "alpha"} or up.ndim != 2 or down.ndim != 2 or down.shape[0] % k:
        return None
    r = down.shape[0] // k
    starts = np.cumsum([0, *sizes])
    for j in range(k):
        rows = up[starts[j]:starts[j + 1]]
        if np.any(rows[:, :j * r]) or np.any(rows[:, (j + 1) * r:]):
            return None
    total = float(np.asarray(roles.get("alpha", 0.0), dtype=np.float64)) or float(down.shape[0])
    part = total / k  # alpha / rank unchanged: (total / k) / (rank / k)
    alpha = np.array(part, dtype=np.float32 if part == np.float32(part) else np.float64)
    return {ModuleKey(module.component, target): {"down": down[j * r:(j + 1) * r],
                                                   "up": up[starts[j]:starts[j + 1], j * r:(j + 1) * r],
                                                   "alpha": alpha}
            for j, target in enumerate(fused_targets(module.path))}


def split_foreign_fused(modules: Mapping[ModuleKey, Roles]) -> dict[ModuleKey, Roles]:
    """Split fused paths that no original model names (XLabs' single-block q/k/v, three of ``linear1``'s four
    targets), so that fusing can regroup them under an original module."""
    out: dict[ModuleKey, Roles] = {}
    for module, roles in modules.items():
        if module.component == "transformer" and is_fused(module.path) and not families_of(module.path):
            out.update(split_fused(module, roles))
        else:
            out[module] = dict(roles)
    return out


def fuse_split(fused: str, component: str, parts: Mapping[str, Roles]) -> Roles:
    """Plain-LoRA modules on (some of) the targets of ``fused`` -> one module on the fused path, exactly."""
    label = f"{component}:{fused}"
    targets = fused_targets(fused)
    present = [parts.get(t) for t in targets]
    given = [p for p in present if p is not None]
    sizes = [p["up"].shape[0] if p is not None else None for p in present]
    if None in sizes:
        sizes = _missing_sizes(targets, sizes, label=label)
    first = given[0]
    dtype = first["up"].dtype
    scales = {module_scale(p) for p in given}
    same_form = len(scales) == 1 and all(p["down"].dtype == first["down"].dtype and p["up"].dtype == dtype
                                         and p["down"].shape[1:] == first["down"].shape[1:] for p in given)
    if same_form and all(np.array_equal(p["down"], first["down"]) for p in given):
        rank = first["down"].shape[0]
        ups = [p["up"] if p is not None else np.zeros((size, rank, *first["up"].shape[2:]), dtype)
               for p, size in zip(present, sizes)]
        roles = {"down": first["down"], "up": np.concatenate(ups, axis=0)}
        if "alpha" in first:
            roles["alpha"] = first["alpha"]
        return roles
    ranks = [p["down"].shape[0] for p in given]
    total = sum(ranks)
    up = np.zeros((sum(sizes), total), dtype=dtype if same_form else np.float64)
    row = col = 0
    for p, size in zip(present, sizes):
        if p is not None:
            r = p["down"].shape[0]
            block = p["up"].reshape(size, r)
            up[row:row + size, col:col + r] = block if same_form else block.astype(np.float64) * module_scale(p)
            col += r
        row += size
    down = np.concatenate([p["down"] for p in given], axis=0)
    if same_form:  # bytes kept; alpha scaled with the rank so that alpha / rank stays the parts' scale
        alpha = float(np.asarray(first.get("alpha", 0.0), dtype=np.float64)) or float(ranks[0])
        alpha = alpha * total / ranks[0]  # scale kept: equal ranks give k * alpha exactly
        return {"down": down, "up": up.reshape(up.shape[0], total, *first["up"].shape[2:]),
                "alpha": np.array(alpha, dtype=np.float64 if alpha != np.float32(alpha) else np.float32)}
    return {"down": down.astype(dtype), "up": up.astype(dtype), "alpha": np.array(total, dtype=np.float32)}


# --- [shift, scale] rows -----------------------------------------------------------------------------------


def scale_shift_swapped(module: ModuleKey, roles: Mapping[str, np.ndarray]) -> bool:
    """Whether original and diffusers names store this module's output rows in opposite order."""
    if module.component != "transformer":
        return False
    if module.path in SCALE_SHIFT_SWAPPED:
        return True
    if not _CONTEXT_NORM.fullmatch(module.path) or "up" not in roles or "down" not in roles:
        return False
    return roles["up"].shape[0] == 2 * roles["down"].shape[1]  # context_pre_only: [shift, scale] only


def _swap_halves(array: np.ndarray) -> np.ndarray:
    half = array.shape[0] // 2
    return np.concatenate([array[half:], array[:half]], axis=0)


def reorder_scale_shift(tensors: Mapping[CanonicalKey, np.ndarray], modules: set[ModuleKey]
                        ) -> dict[CanonicalKey, np.ndarray]:
    """``tensors`` with the [shift, scale] halves of ``modules`` that need it swapped (an involution)."""
    from .common import by_module, flatten_modules

    grouped = by_module(tensors)
    for module in modules & grouped.keys():
        roles = grouped[module]
        if not scale_shift_swapped(module, roles) or "up" not in roles:
            continue
        rows = roles["up"].shape[0]
        for role in ("up", "up_bias", "dora_scale"):
            if role in roles and roles[role].shape[0] == rows:
                roles[role] = _swap_halves(roles[role])
    return flatten_modules(grouped)


def natively_named(mapping) -> set[ModuleKey]:
    """Transformer modules a file names after the original model (kohya ``lora_unet_``, BFL-native keys)."""
    from ..formats import FORMATS

    native = set()
    for key, ckey in mapping.mapped.items():
        if ckey.component == "transformer" and (key.startswith("lora_unet_") or FORMATS["bfl"].parse(key)):
            native.add(ckey.module)
    return native
