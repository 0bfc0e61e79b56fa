"""Write an adapter from canonical tensors in any key format, with its metadata.

Alpha is where each format keeps it: kohya stores an ``alpha`` tensor per module; peft and diffusers
keep it in ``lora_adapter_metadata`` (the JSON of a peft LoraConfig per component, flattened with
component prefixes the way diffusers' ``save_lora_weights`` writes it: ``r``/``lora_alpha`` from the most
common values, ``rank_pattern``/``alpha_pattern`` for the rest); the legacy attention-processor format
and XLabs' Flux format have nowhere to keep it, so alpha must equal the rank there.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from .canonical import CanonicalKey, ModuleKey
from .errors import UsageError
from .safetensors_io import write_safetensors

ALPHA_IN_METADATA = frozenset({"peft", "diffusers"})
ALPHA_NOWHERE = frozenset({"attn_procs", "xlabs"})  # loaders read these at scale 1: alpha must equal the rank


def _rank(tensors: Mapping[CanonicalKey, np.ndarray], module: ModuleKey) -> int | None:
    down = tensors.get(CanonicalKey(module.component, module.path, "down"))
    return int(down.shape[0]) if down is not None else None


def _pattern(name: str, names: Mapping[str, Any]) -> str:
    """The rank/alpha pattern key for module ``name``: the name itself, or ``^name`` when peft would also apply it
    to another module (peft matches a key as a dotted suffix: ``proj_out`` is Flux's ``proj_out`` and every
    ``single_transformer_blocks.N.proj_out``; ``^`` anchors it at the start)."""
    from .peft_patterns import peft_pattern_matches

    last = name.rsplit(".", 1)[-1]  # dot-free, so literal: a module the key matches ends with it
    if any(other != name and other.endswith(last) and peft_pattern_matches(name, other) for other in names):
        return "^" + name
    return name


def peft_adapter_metadata(tensors: Mapping[CanonicalKey, np.ndarray],
                          dialect: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The flattened ``lora_adapter_metadata`` dict for peft/diffusers files (see module docstring).

    Module names are spelled as the file spells them (with or without CLIP's ``text_model.`` level), since
    peft matches ``target_modules`` and patterns against the component's own module names."""
    from .formats.paths import spell_text_model

    per_component: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
    modules = {ck.module for ck in tensors if ck.role == "down"}
    for module in sorted(modules):
        rank = _rank(tensors, module)
        alpha_t = tensors.get(CanonicalKey(module.component, module.path, "alpha"))
        alpha = float(alpha_t) if alpha_t is not None and float(alpha_t) else float(rank)
        name = spell_text_model(module.component, module.path, dict(dialect or {}))
        per_component[module.component][name] = (rank, alpha)
    flat: dict[str, Any] = {}
    for component, entries in sorted(per_component.items()):
        r = Counter(rank for rank, _ in entries.values()).most_common(1)[0][0]
        a = Counter(alpha for _, alpha in entries.values()).most_common(1)[0][0]
        use_dora = any(ck.role == "dora_scale" and ck.component == component for ck in tensors)
        config = {
            "r": r,
            "lora_alpha": int(a) if a.is_integer() else a,
            "rank_pattern": {_pattern(p, entries): rank for p, (rank, _) in entries.items() if rank != r},
            "alpha_pattern": {_pattern(p, entries): (int(al) if al.is_integer() else al)
                              for p, (_, al) in entries.items() if al != a},
            "target_modules": sorted(entries),
            "use_dora": use_dora,
            "peft_type": "LORA",
        }
        flat.update({f"{component}.{k}": v for k, v in config.items()})
    return flat


def adapter_layout(tensors: Mapping[CanonicalKey, np.ndarray], *, format: str,
                   dialect: Mapping[str, str] | None = None,
                   header: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(file key -> array, header metadata) of canonical ``tensors`` written as ``format``, without a record:
    alpha moved to where ``format`` keeps it (see module docstring), keys spelled in ``dialect``, ``header``
    kept. ``write_adapter`` writes exactly this; operations that hash while they write use it directly."""
    from .formats import from_canonical

    body = dict(tensors)
    extra: dict[str, str] = dict(header or {})
    if format in ALPHA_IN_METADATA or format in ALPHA_NOWHERE:
        alphas = {ck: body.pop(ck) for ck in list(body) if ck.role == "alpha"}
        if format in ALPHA_NOWHERE:
            off = [str(ck.module) for ck, a in alphas.items() if float(a) and float(a) != _rank(tensors, ck.module)]
            if off:
                raise UsageError(f"the {format} format cannot store alpha != rank ({off[0]} and "
                                 f"{len(off) - 1} more)", hint="write kohya, peft or diffusers instead")
        else:
            extra["lora_adapter_metadata"] = json.dumps(peft_adapter_metadata(tensors, dialect), indent=2, sort_keys=True)
            extra.setdefault("format", "pt")
    names = from_canonical(list(body), format=format, dialect=dict(dialect or {}))
    # an array-like with shape, dtype and nbytes (ops.outfile.RowStack) stays as it is: its writer streams it
    return {names[ck]: arr if hasattr(arr, "parts") else np.asarray(arr) for ck, arr in body.items()}, extra


def write_adapter(path: str | os.PathLike[str], tensors: Mapping[CanonicalKey, np.ndarray], *, format: str,
                  dialect: Mapping[str, str] | None = None, metadata=None,
                  header: Mapping[str, str] | None = None) -> None:
    """Write canonical ``tensors`` as ``format`` (kohya / peft / diffusers / attn_procs), atomically.

    ``metadata`` (an ``AdapterMetadata``) is stored under ``lorareg`` and projected onto ``modelspec.*`` and
    ``ss_*``; ``header`` holds other str->str keys to keep.
    """
    named, extra = adapter_layout(tensors, format=format, dialect=dialect, header=header)
    if metadata is not None:
        from .schema import merge_projection

        extra = merge_projection(extra, metadata)
    write_safetensors(path, named, extra)
