"""SD3 (MMDiT) and Flux original module names <-> canonical (diffusers) transformer paths.

kohya names SD3/Flux modules after the original implementations (``double_blocks.N.img_attn.qkv``),
not after diffusers. Where a module maps 1:1, the canonical path is the diffusers one
(``single_blocks.N.linear2`` -> ``single_transformer_blocks.N.proj_out``).

Fused modules: the original fuses projections that diffusers keeps apart (Flux ``img_attn.qkv`` is
diffusers ``attn.to_q``/``to_k``/``to_v``; ``single_blocks.N.linear1`` is q, k, v and ``proj_mlp``).
Their canonical path lists the diffusers targets in braces, in the order of the fused output rows::

    transformer_blocks.0.attn.{to_q,to_k,to_v}
    single_transformer_blocks.0.{attn.to_q,attn.to_k,attn.to_v,proj_mlp}

so a converter knows exactly which diffusers modules it splits into (split sizes are the targets'
out-features in the base fingerprint) and which ones it must fuse to write kohya. ``fused_targets``
expands such a path. A fused path is a valid canonical path for kohya only; peft and diffusers
formats refuse it (split first).

Row order: ``final_layer.adaLN_modulation.1`` stores [shift, scale] where diffusers ``norm_out.linear``
stores [scale, shift] (both families), as does SD3's last ``context_block.adaLN_modulation.1``
(``context_pre_only``) against ``norm1_context.linear``. The key maps 1:1, but a converter must swap
the halves of the up factor: see ``SCALE_SHIFT_SWAPPED``.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

from ..lazy_re import lazy

# native (dotted, {i} = block index) -> canonical template
FLUX: dict[str, str] = {
    "double_blocks.{i}.img_attn.qkv": "transformer_blocks.{i}.attn.{to_q,to_k,to_v}",
    "double_blocks.{i}.img_attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "double_blocks.{i}.img_mlp.0": "transformer_blocks.{i}.ff.net.0.proj",
    "double_blocks.{i}.img_mlp.2": "transformer_blocks.{i}.ff.net.2",
    "double_blocks.{i}.img_mod.lin": "transformer_blocks.{i}.norm1.linear",
    "double_blocks.{i}.txt_attn.qkv": "transformer_blocks.{i}.attn.{add_q_proj,add_k_proj,add_v_proj}",
    "double_blocks.{i}.txt_attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "double_blocks.{i}.txt_mlp.0": "transformer_blocks.{i}.ff_context.net.0.proj",
    "double_blocks.{i}.txt_mlp.2": "transformer_blocks.{i}.ff_context.net.2",
    "double_blocks.{i}.txt_mod.lin": "transformer_blocks.{i}.norm1_context.linear",
    "single_blocks.{i}.linear1": "single_transformer_blocks.{i}.{attn.to_q,attn.to_k,attn.to_v,proj_mlp}",
    "single_blocks.{i}.linear2": "single_transformer_blocks.{i}.proj_out",
    "single_blocks.{i}.modulation.lin": "single_transformer_blocks.{i}.norm.linear",
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}

SD3: dict[str, str] = {
    "joint_blocks.{i}.x_block.attn.qkv": "transformer_blocks.{i}.attn.{to_q,to_k,to_v}",
    "joint_blocks.{i}.x_block.attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "joint_blocks.{i}.x_block.attn2.qkv": "transformer_blocks.{i}.attn2.{to_q,to_k,to_v}",
    "joint_blocks.{i}.x_block.attn2.proj": "transformer_blocks.{i}.attn2.to_out.0",
    "joint_blocks.{i}.x_block.mlp.fc1": "transformer_blocks.{i}.ff.net.0.proj",
    "joint_blocks.{i}.x_block.mlp.fc2": "transformer_blocks.{i}.ff.net.2",
    "joint_blocks.{i}.x_block.adaLN_modulation.1": "transformer_blocks.{i}.norm1.linear",
    "joint_blocks.{i}.context_block.attn.qkv": "transformer_blocks.{i}.attn.{add_q_proj,add_k_proj,add_v_proj}",
    "joint_blocks.{i}.context_block.attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "joint_blocks.{i}.context_block.mlp.fc1": "transformer_blocks.{i}.ff_context.net.0.proj",
    "joint_blocks.{i}.context_block.mlp.fc2": "transformer_blocks.{i}.ff_context.net.2",
    "joint_blocks.{i}.context_block.adaLN_modulation.1": "transformer_blocks.{i}.norm1_context.linear",
    "x_embedder.proj": "pos_embed.proj",
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}

FAMILIES: dict[str, dict[str, str]] = {"flux": FLUX, "sd3": SD3}

# Canonical paths whose original weight stores [shift, scale] rows against diffusers' [scale, shift].
# SD3's last block's norm1_context.linear is swapped too; which block is last needs the base depth.
SCALE_SHIFT_SWAPPED = frozenset({"norm_out.linear"})

_FUSED = lazy(r"(?P<prefix>.*?)\{(?P<targets>[^{}]+)\}")


def fused_targets(path: str) -> tuple[str, ...]:
    """The diffusers module paths a canonical path stands for: itself, or each target of a fused path."""
    m = _FUSED.fullmatch(path)
    if not m:
        return (path,)
    return tuple(m["prefix"] + target for target in m["targets"].split(","))


def is_fused(path: str) -> bool:
    return _FUSED.fullmatch(path) is not None


# Every rule is a template with at most one ``{i}``, a whole segment between separators (``double_blocks.{i}.img_attn``);
# it matches a name when the name, with one all-digit segment written back as ``{i}``, is the template itself.
# So a name is looked up, not matched against every pattern: a header may hold 100,000 names that are none.


class _Rules(NamedTuple):
    templates: dict[str, tuple[int, str]]  # template as names spell it -> (rule order, output template)
    heads: frozenset[str]  # the templates' first segments


@cache
def _rules(family: str, *, flat: bool, reverse: bool) -> _Rules:
    """The rules of one family and direction, ready for lookup."""
    pairs = [(canonical, native) for native, canonical in FAMILIES[family].items()] if reverse \
        else list(FAMILIES[family].items())
    templates: dict[str, tuple[int, str]] = {}
    for order, (source, target) in enumerate(pairs):
        templates.setdefault(source.replace(".", "_") if flat else source, (order, target))
    separator = "_" if flat else "."
    return _Rules(templates, frozenset(template.split(separator, 1)[0] for template in templates))


def _apply(rules: _Rules, name: str, separator: str) -> str | None:
    """The first rule (in table order) whose template the name spells, with its index filled in; None if none."""
    parts = name.split(separator)
    if parts[0] not in rules.heads and "{i}" not in rules.heads:
        return None  # no template starts so: most names that are no module end here
    best = rules.templates.get(name) if "{i}" not in name else None  # "{i}" spelled out is no index
    for at, part in enumerate(parts):
        if part.isdecimal():  # what the patterns' \d+ matched: any Unicode decimal digits
            rule = rules.templates.get(separator.join([*parts[:at], "{i}", *parts[at + 1:]]))
            if rule is not None and (best is None or rule[0] < best[0]):
                best = (rule[0], rule[1].replace("{i}", part))
    return None if best is None else best[1]


def parse_flat(flat: str) -> dict[str, str]:
    """family -> canonical path, for every family in which the kohya flat name is a known module."""
    found = {}
    for family in FAMILIES:
        if (path := _apply(_rules(family, flat=True, reverse=False), flat, "_")) is not None:
            found[family] = path
    return found


def parse_dotted(name: str) -> dict[str, str]:
    """family -> canonical path, for every family in which the dotted original name (``double_blocks.0.img_attn.qkv``,
    as BFL, ComfyUI and ai-toolkit spell it) is a known module."""
    found = {}
    for family in FAMILIES:
        if (path := _apply(_rules(family, flat=False, reverse=False), name, ".")) is not None:
            found[family] = path
    return found


def infer_family(paths: set[str]) -> str | None:
    """flux or sd3 when the canonical transformer paths fit only one of them."""
    possible = set(FAMILIES)
    for path in paths:
        families = families_of(path)
        if families:
            possible &= families
    return possible.pop() if len(possible) == 1 else None


def to_native(path: str, family: str) -> str | None:
    """The original dotted module name of a canonical transformer path in ``family``, or None."""
    return _apply(_rules(family, flat=False, reverse=True), path, ".")


def families_of(path: str) -> frozenset[str]:
    """The families in which a canonical transformer path has an original name."""
    return frozenset(family for family in FAMILIES if to_native(path, family) is not None)
