"""XLabs-AI Flux LoRA keys (x-flux's attention processors): ``[diffusion_model.]<block>.processor.<lora>.<up|down>.weight``.

Double blocks carry ``qkv_lora1``/``proj_lora1`` (image stream) and ``qkv_lora2``/``proj_lora2`` (text stream);
single blocks ``qkv_lora`` (the q/k/v rows of ``linear1``, not its MLP rows) and ``proj_lora`` (``linear2``).
Canonical paths (as diffusers' ``_convert_xlabs_flux_lora_to_diffusers`` maps them)::

    double_blocks.N.processor.qkv_lora1  -> transformer_blocks.N.attn.{to_q,to_k,to_v}
    double_blocks.N.processor.qkv_lora2  -> transformer_blocks.N.attn.{add_q_proj,add_k_proj,add_v_proj}
    double_blocks.N.processor.proj_lora1 -> transformer_blocks.N.attn.to_out.0
    double_blocks.N.processor.proj_lora2 -> transformer_blocks.N.attn.to_add_out
    single_blocks.N.processor.qkv_lora   -> single_transformer_blocks.N.{attn.to_q,attn.to_k,attn.to_v}
    single_blocks.N.processor.proj_lora  -> single_transformer_blocks.N.proj_out

The single-block ``qkv_lora`` is a fused path of its own (three of ``linear1``'s four targets): converters split
it, and fuse it into ``linear1`` with zero MLP rows for kohya/BFL names. The files hold no alpha (diffusers loads
them at scale 1, i.e. alpha = rank); the writer refuses other alphas. Dialect: ``xlabs_prefix``
(``diffusion_model.`` or empty).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..canonical import CanonicalKey
from ..errors import UsageError
from ..lazy_re import lazy
from .base import KeyFormat, ParsedKey

_KEY = lazy(r"(?P<prefix>diffusion_model\.)?(?P<block>double|single)_blocks\.(?P<i>\d+)\.processor\."
                  r"(?P<lora>qkv_lora[12]?|proj_lora[12]?)\.(?P<role>down|up)\.weight")

# (block kind, lora name) -> canonical template ({i} = block index)
TABLE: dict[tuple[str, str], str] = {
    ("double", "qkv_lora1"): "transformer_blocks.{i}.attn.{to_q,to_k,to_v}",
    ("double", "qkv_lora2"): "transformer_blocks.{i}.attn.{add_q_proj,add_k_proj,add_v_proj}",
    ("double", "proj_lora1"): "transformer_blocks.{i}.attn.to_out.0",
    ("double", "proj_lora2"): "transformer_blocks.{i}.attn.to_add_out",
    ("single", "qkv_lora"): "single_transformer_blocks.{i}.{attn.to_q,attn.to_k,attn.to_v}",
    ("single", "proj_lora"): "single_transformer_blocks.{i}.proj_out",
}
_BY_TEMPLATE = {template: kind_lora for kind_lora, template in TABLE.items()}
_CANONICAL = lazy(r"(?P<head>transformer_blocks|single_transformer_blocks)\.(?P<i>\d+)\.(?P<tail>.+)")


def xlabs_name(path: str) -> str | None:
    """The ``<block>_blocks.N.processor.<lora>`` name of a canonical transformer path, or None."""
    m = _CANONICAL.fullmatch(path)
    if not m:
        return None
    found = _BY_TEMPLATE.get(f"{m['head']}.{{i}}.{m['tail']}")
    if found is None:
        return None
    kind, lora = found
    return f"{kind}_blocks.{m['i']}.processor.{lora}"


class XlabsFormat(KeyFormat):
    name = "xlabs"
    roles = frozenset({"down", "up"})

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        if not key.startswith(("double_blocks.", "single_blocks.", "diffusion_model.")):  # cheap reject first
            return None
        m = _KEY.fullmatch(key)
        if not m:
            return None
        template = TABLE.get((m["block"], m["lora"]))
        if template is None:
            return None
        path = template.replace("{i}", str(int(m["i"])))
        if xlabs_name(path) != f"{m['block']}_blocks.{m['i']}.processor.{m['lora']}":  # e.g. "01": not canonical
            return None
        return ParsedKey(CanonicalKey("transformer", path, m["role"]), {"xlabs_prefix": m["prefix"] or ""})

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        name = xlabs_name(ckey.path) if ckey.component == "transformer" else None
        if name is None:
            raise UsageError(f"{ckey}: XLabs files hold only the attention q/k/v and output projections of Flux",
                             hint="write kohya, bfl or peft instead")
        return f"{dialect.get('xlabs_prefix', '')}{name}.{ckey.role}.weight"
