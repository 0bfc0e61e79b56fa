"""What the base modules look like: weight shapes from a fingerprint, and SD3/Flux fused projections.

Shapes matter where the factors do not tell: a LoHa on a conv stores its kernel flattened into
``hada_w1_b``, kohya stores some Linear projections as 1x1 convs, and peft needs factors shaped like
the real module. They come from the fingerprint of the adapter's architecture (detected, else declared);
without one the stored layout is kept.

Fused modules: kohya names SD3/Flux projections after the original fused Linear (``img_attn.qkv``),
canonically ``transformer_blocks.0.attn.{to_q,to_k,to_v}`` (``formats.mmdit``). A LoRA on the fused
module is exactly one LoRA per target with the same ``down`` and the rows of ``up`` split by the targets'
out-features; the reverse fuses split targets (shared down: rows stacked; different downs: block-diagonal
up over stacked downs, ranks adding up; missing targets: zero rows).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from math import prod

import numpy as np

from ..canonical import ModuleKey
from ..errors import LoraregError
from ..formats import fused_targets
from ..formats.mmdit import FAMILIES
from .delta import module_scale
from .errors import UnsupportedModule

Roles = dict[str, np.ndarray]


def base_shapes(adapter, base: str | None = None) -> dict[ModuleKey, tuple[int, ...]]:
    """Base weight shape per module of ``adapter``: from ``base`` (architecture id, model folder or checkpoint,
    as ``verify --base`` takes it) when given, else the fingerprint the modules fit best ({} if none)."""
    from ..verify import load_base
    from ..verify.context import Context

    try:
        fp = load_base(base).fingerprint if base is not None else Context.build(adapter, None).target
    except LoraregError:
        return {}
    if fp is None:
        return {}
    shapes = {}
    for module in adapter.modules:
        spec = fp.lookup(module.component, module.path)
        if spec is not None:
            shapes[module] = spec.weight_shape
    return shapes


def layout(natural: tuple[int, ...], base: tuple[int, ...] | None, *, follow_base: bool) -> tuple[int, ...]:
    """The shape to store a delta in: the base's when ``follow_base`` (peft needs the real layout) or when
    the factors lost the kernel (2-D factors for a conv); else the stored ``natural`` layout."""
    if base is None or base[0] != natural[0] or prod(base[1:]) != prod(natural[1:]):
        return natural
    if follow_base or (len(natural) == 2 and len(base) > 2):
        return tuple(base)
    return natural


def peft_text_model_defaults(adapter) -> dict[str, str]:
    """How diffusers (with transformers 5) names CLIP modules in peft keys: ``CLIPTextModel`` has no
    ``text_model.`` level, ``CLIPTextModelWithProjection`` (SDXL/SD3 ``text_encoder_2``, SD3 both) has one."""
    arch = adapter.metadata.base.architecture or ""
    sd3 = arch.startswith("sd3") or any(m.path.startswith("transformer_blocks.") and ".attn2." in m.path
                                        for m in adapter.modules if m.component == "transformer")
    return {"text_encoder.text_model": "yes" if sd3 else "no", "text_encoder_2.text_model": "yes"}


# --- SD3 / Flux fused projections -------------------------------------------------------------------------


@cache
def _fused_patterns() -> list[tuple[re.Pattern[str], str]]:
    """(regex over a split target path, fused template with {i}) for every fused template."""
    patterns = []
    for table in FAMILIES.values():
        for template in set(table.values()):
            if "{" not in template.replace("{i}", ""):
                continue
            prefix, _, rest = template.replace("{i}", "\x00").partition("{")
            targets = rest.rstrip("}").split(",")
            body = re.escape(prefix).replace("\x00", r"(?P<i>\d+)")
            patterns.append((re.compile(body + "(?:" + "|".join(map(re.escape, targets)) + ")"), template))
    return patterns


def fused_path_of(path: str) -> str | None:
    """The fused canonical path a split diffusers transformer path belongs to, or None."""
    for pattern, template in _fused_patterns():
        if m := pattern.fullmatch(path):
            return template.replace("{i}", m["i"])
    return None


def target_sizes(targets: tuple[str, ...], total: int | None) -> list[int] | None:
    """Out-features of each target from the first fingerprint that has them all (and, with ``total``,
    whose sizes add up to it); None when no fingerprint does."""
    from ..architectures import fingerprint, fingerprint_names

    for name in fingerprint_names():
        fp = fingerprint(name)
        specs = [fp.lookup("transformer", t) for t in targets]
        if all(specs) and (total is None or sum(s.out_features for s in specs) == total):
            return [s.out_features for s in specs]
    return None


def split_fused(module: ModuleKey, roles: Mapping[str, np.ndarray]) -> dict[ModuleKey, Roles]:
    """One plain-LoRA module on a fused path -> one module per diffusers target (down shared bitwise)."""
    targets = fused_targets(module.path)
    up = roles["up"]
    sizes = target_sizes(targets, up.shape[0])
    if sizes is None:
        raise UnsupportedModule(f"{module}: cannot tell how the {up.shape[0]} rows of the fused up factor split "
                                f"over {', '.join(targets)}", hint="no known SD3/Flux fingerprint matches")
    out: dict[ModuleKey, Roles] = {}
    start = 0
    for target, size in zip(targets, sizes):
        part = {role: array for role, array in roles.items() if role != "up"}
        part["up"] = up[start:start + size]
        out[ModuleKey(module.component, target)] = part
        start += size
    return out


def fuse_split(fused: str, component: str, parts: Mapping[str, Roles]) -> Roles:
    """Plain-LoRA modules on (some of) the targets of ``fused`` -> one module on the fused path, exactly."""
    targets = fused_targets(fused)
    present = [parts.get(t) for t in targets]
    sizes = [p["up"].shape[0] if p is not None else None for p in present]
    if None in sizes:
        known = target_sizes(targets, None)
        if known is None:
            raise UnsupportedModule(f"{component}:{fused}: cannot size the missing targets to fuse them",
                                    hint="write with dialect transformer_names=diffusers instead")
        sizes = known
    given = [p for p in present if p is not None]
    shared = all(np.array_equal(p["down"], given[0]["down"]) and p["down"].dtype == given[0]["down"].dtype
                 and module_scale(p) == module_scale(given[0]) for p in given)
    if shared:
        rank = given[0]["down"].shape[0]
        ups = [p["up"] if p is not None else np.zeros((size, rank, *given[0]["up"].shape[2:]), given[0]["up"].dtype)
               for p, size in zip(present, sizes)]
        fused_roles = {"down": given[0]["down"], "up": np.concatenate(ups, axis=0)}
        if "alpha" in given[0]:
            fused_roles["alpha"] = given[0]["alpha"]
        return fused_roles
    downs = [p["down"].astype(np.float64) for p in given]
    rank = sum(d.shape[0] for d in downs)
    up = np.zeros((sum(sizes), rank), dtype=np.float64)
    row = col = 0
    for p, size in zip(present, sizes):
        if p is not None:
            r = p["down"].shape[0]
            up[row:row + size, col:col + r] = p["up"].reshape(size, r) * module_scale(p)
            col += r
        row += size
    dtype = given[0]["up"].dtype
    return {"down": np.concatenate(downs, axis=0).astype(dtype), "up": up.astype(dtype),
            "alpha": np.array(rank, dtype=np.float32)}
