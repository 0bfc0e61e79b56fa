"""Module names as the web UIs and sd-scripts spell them, from a canonical module and the base family.

Loaders match a key by the text before its factor suffix; these helpers give, for one canonical module,
the spellings a loader builds from its own model, so a rule can test the file's key against them.
"""

from __future__ import annotations

import re

from ...canonical import ModuleKey
from ...formats.sgm import diffusers_to_sgm

# CLIP modules every loader maps: attention q/k/v/out and the MLP (kohya/ComfyUI LORA_CLIP_MAP).
_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(self_attn\.[qkvo]\w*_proj|mlp\.fc[12])$")
_LEVELS = {"sd1": 4, "sd2": 4, "sdxl": 3}


def flat(path: str) -> str:
    return path.replace(".", "_")


def clip_layer(path: str) -> tuple[str, str] | None:
    """(layer index, module) of a CLIP encoder-layer path, e.g. ("0", "self_attn.q_proj")."""
    m = _CLIP_LAYER.fullmatch(path)
    return (m[1], m[2]) if m else None


def sgm_path(path: str, family: str | None) -> str | None:
    """The SGM/LDM (compvis) name of a diffusers UNet path, or None."""
    try:
        return diffusers_to_sgm(path, levels=_LEVELS.get(family or ""))
    except Exception:  # noqa: BLE001 - a path SGM has no name for
        return None


def kohya_te_prefixes(component: str, family: str | None) -> tuple[str, ...]:
    """kohya prefixes that name this text encoder: SDXL uses lora_te1/lora_te2, SD1/SD2 lora_te."""
    if component == "text_encoder_2":
        return ("lora_te2",)
    return ("lora_te1",) if family == "sdxl" else ("lora_te",)


def stem(key: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """(stem, suffix) for the longest of ``suffixes`` that ends ``key``."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


def module_of_keys(modules) -> dict[str, ModuleKey]:
    """key -> module for every key of ``AdapterFacts.modules``."""
    return {key: m.module for m in modules.values() for key in m.keys}
