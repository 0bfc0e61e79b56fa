"""Rank and alpha of every module as the loaders compute them, from the header alone (no numpy).

The scale a loader applies is ``alpha / rank``. ``scale_rank`` says which rank that is for each algorithm;
``module_alphas`` finds alpha: the stored kohya/LyCORIS alpha tensor where there is one, else the peft
``lora_alpha`` / ``alpha_pattern`` that peft and diffusers files keep in ``lora_adapter_metadata``.
This is core knowledge (``AdapterFile.facts`` needs it); the operations in ``ops`` build on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .canonical import COMPONENTS, ModuleKey
from .peft_patterns import first_matching

if TYPE_CHECKING:
    from .adapter import AdapterFile

PEFT_CONFIG_KEY = "lora_adapter_metadata"


def algorithm(roles: Iterable[str]) -> str:
    """lora / loha / lokr / full / other, from the roles a module has (LoCon and DoRA count as lora)."""
    roles = set(roles)
    if roles & {"down", "up"}:
        return "lora"
    if any(r.startswith("hada_") for r in roles):
        return "loha"
    if any(r.startswith("lokr_") for r in roles):
        return "lokr"
    if "diff" in roles:
        return "full"
    return "other"


def scale_rank(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The rank that alpha is divided by, from shapes alone; None: scale is 1.

    LoRA: the rows of ``down``; LoHa: the rows of ``hada_w1_b``; LoKr: the rows of ``lokr_w2_b`` (else
    ``lokr_w1_b``; both halves full -> scale 1, as LyCORIS forces); full: none.
    """
    algo = algorithm(shapes)
    if algo == "lora":
        down, up = shapes.get("down"), shapes.get("up")
        return int(down[0]) if down else (int(up[1]) if up and len(up) > 1 else None)
    # a factor stored as a scalar (a broken file: verify reports its shape) has no rank to divide by
    if algo == "loha" and shapes.get("hada_w1_b"):
        return int(shapes["hada_w1_b"][0])
    if algo == "lokr":
        for role in ("lokr_w2_b", "lokr_w1_b"):
            if shapes.get(role):
                return int(shapes[role][0])
    return None


def split_components(data: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    """A ``lora_adapter_metadata`` object as {component or None (flat): config dict}."""
    per_component: dict[str | None, dict[str, Any]] = {}
    for key, value in data.items():
        head, _, rest = key.partition(".")
        if key in COMPONENTS and isinstance(value, dict):
            per_component.setdefault(key, {}).update(value)
        elif rest and head in COMPONENTS:
            per_component.setdefault(head, {})[rest] = value
        else:
            per_component.setdefault(None, {})[key] = value
    return per_component


def peft_configs(header: Mapping[str, str]) -> dict[str | None, dict[str, Any]]:
    """``lora_adapter_metadata`` split per component ({None: config} for a flat one); {} when absent or
    unreadable (loaders then use alpha = rank too)."""
    raw = header.get(PEFT_CONFIG_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # untrusted header text: deeply nested arrays too
        return {}
    return split_components(data) if isinstance(data, dict) else {}


def module_alphas(adapter: AdapterFile) -> dict[ModuleKey, float]:
    """The effective alpha of every module with a rank, from the header alone.

    A stored alpha of 0 reads as "alpha = rank", as kohya and LyCORIS read it.
    """
    configs = peft_configs(adapter.header.metadata)
    out: dict[ModuleKey, float] = {}
    for module, info in adapter.modules.items():
        rank = scale_rank({role: t.shape for role, t in info.tensors.items()})
        if rank is None:
            continue
        if info.alpha:
            out[module] = float(info.alpha)
        elif module.component in configs or None in configs:
            out[module] = config_alpha(configs.get(module.component) or configs[None], module, rank)
        else:
            out[module] = float(rank)
    return out


def config_alpha(config: Mapping[str, Any], module: ModuleKey, rank: int) -> float:
    """peft's alpha for one module: alpha_pattern (exact name, then peft's ``(.*\\.)?key$`` match) over
    lora_alpha; with use_rslora the scale is alpha / sqrt(r), returned as the equivalent alpha / r."""
    names = [module.path, module.path.removeprefix("text_model."), f"{module.component}.{module.path}"]
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, Mapping):
        patterns = {}
    alpha = next((patterns[n] for n in names if n in patterns), None)
    if alpha is None:
        alpha = first_matching(patterns, names)  # linear-time matcher: the keys come from the file
    if alpha is None:
        alpha = config.get("lora_alpha") or config.get("alpha")
    alpha = float(alpha) if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0 \
        else float(rank)
    return alpha * rank ** 0.5 if config.get("use_rslora") is True else alpha
