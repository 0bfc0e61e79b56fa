"""LyCORIS tensor suffixes, their canonical roles, and the network type a set of roles implies.

kohya and LyCORIS share one key layout, ``<lora_name>.<suffix>``; the suffix alone says which factor
of which algorithm a tensor is. Suffixes with no canonical role yet ((IA)^3 ``on_input``, OFT
``oft_blocks``/``rescale``, GLoRA ``a1``..., norm ``w_norm``) are left out on purpose: their keys stay
unknown instead of being mapped to a role that would mislead a converter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..canonical import ModuleKey

# suffix after the module name -> canonical role
SUFFIX_ROLES: dict[str, str] = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_mid.weight": "mid",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    **{name: name for name in (
        "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
        "diff", "diff_b",
    )},
}
ROLE_SUFFIXES: dict[str, str] = {role: suffix for suffix, role in SUFFIX_ROLES.items()}

LOHA_ROLES = frozenset(r for r in SUFFIX_ROLES.values() if r.startswith("hada_"))
LOKR_ROLES = frozenset(r for r in SUFFIX_ROLES.values() if r.startswith("lokr_"))
FULL_ROLES = frozenset({"diff", "diff_b"})

# Last path segments of modules that are convolutions inside ResNet / down / up blocks: a LoRA on
# them is what kohya calls LoCon ("LoRA-C3Lier"). Attention proj_in of SD1 is a 1x1 conv but a plain
# LoRA target, so it is not listed.
_CONV_LEAVES = frozenset({"conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out"})


def is_conv_module(path: str) -> bool:
    """Whether a canonical UNet module path names a ResNet/sampler convolution (by name, no shapes)."""
    return path.rsplit(".", 1)[-1] in _CONV_LEAVES


def network_type(
    roles_by_module: Mapping[ModuleKey, Iterable[str]],
    *,
    conv_modules: Iterable[ModuleKey] | None = None,
) -> str:
    """The network type (one of ``canonical.NETWORK_TYPES``) that a file's roles imply.

    Precedence, first match wins: ``dora`` (any ``dora_scale``), ``loha``, ``lokr``, ``full``,
    ``locon`` (a ``mid`` factor, or LoRA on a conv module), else ``lora`` (also for no modules).
    ``conv_modules`` lets a caller that has shapes say which modules are convolutions; without it a
    module counts as conv when its UNet path names a ResNet/sampler conv.
    """
    all_roles: set[str] = set()
    for roles in roles_by_module.values():
        all_roles.update(roles)
    if "dora_scale" in all_roles:
        return "dora"
    if all_roles & LOHA_ROLES:
        return "loha"
    if all_roles & LOKR_ROLES:
        return "lokr"
    if all_roles & FULL_ROLES:
        return "full"
    if "mid" in all_roles:
        return "locon"
    if conv_modules is not None:
        convs = set(conv_modules)
        has_conv = any(module in convs for module in roles_by_module)
    else:
        has_conv = any(m.component == "unet" and m.path.rsplit(".", 1)[-1] in _CONV_LEAVES  # is_conv_module, inline
                       for m in roles_by_module)
    return "locon" if has_conv else "lora"
