"""Legacy attention-processor LoRA keys (diffusers <= 0.16 ``save_attn_procs``):
``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight``.

One processor held the q/k/v/out LoRAs of one attention module: ``to_<x>_lora`` names the
projection (``to_out_lora`` is the module ``to_out.0``). Text encoders patched the same way
(``text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight``) map onto CLIP's
``q_proj``/``k_proj``/``v_proj``/``out_proj``. ``.processor.`` is optional (loaders strip it).

Dialect fields: those of ``peft.split_prefix`` plus ``processor`` (yes/no).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..canonical import CanonicalKey
from ..errors import UsageError
from ..lazy_re import lazy
from .base import KeyFormat, ParsedKey
from .paths import TEXT_ENCODERS
from .peft import check_bare_components, locate, spell_prefix

_KEY = lazy(
    r"(?P<path>.+?)(?P<processor>\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<factor>down|up)\.weight"
)
_UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_CLIP_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def _projections(component: str) -> dict[str, str]:
    return _CLIP_PROJ if component in TEXT_ENCODERS else _UNET_PROJ


class AttnProcsFormat(KeyFormat):
    name = "attn_procs"
    roles = frozenset({"down", "up"})

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        m = _KEY.fullmatch(key)
        if not m:
            return None
        located = locate(m["path"], component)
        if located is None:
            return None
        found, path, facts = located
        facts["processor"] = "yes" if m["processor"] else "no"
        module = f"{path}.{_projections(found)[m['proj']]}"
        return ParsedKey(CanonicalKey(found, module, m["factor"]), facts)

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        check_bare_components(self.name, ckeys, dialect)
        return dict(dialect)

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        for proj, module in _projections(ckey.component).items():
            if ckey.path.endswith("." + module):
                owner = CanonicalKey(ckey.component, ckey.path[: -len(module) - 1], ckey.role)
                processor = ".processor" if dialect.get("processor", "yes") == "yes" else ""
                return f"{spell_prefix(owner, dialect)}{processor}.{proj}_lora.{ckey.role}.weight"
        raise UsageError(f"{ckey}: attention processors only hold q/k/v/out projections of attention modules")
