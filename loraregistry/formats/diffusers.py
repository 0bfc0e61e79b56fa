"""Older diffusers LoRA files (``pytorch_lora_weights.safetensors`` of the SD1/SDXL training scripts
before the PEFT switch): ``unet.<path>.lora.down.weight`` and, for text encoders,
``text_encoder.<path>.lora_linear_layer.down.weight`` (``lora.down`` on ``text_projection``).

The ``lora_A``/``lora_B`` spellings that newer diffusers writes belong to ``peft``. Prefixes work as
in peft (``unet.``, ``text_encoder.``, ``text_encoder_2.``, or none: ``unet.save_attn_procs``
wrote bare UNet paths). Roles: down and up only; these files carried no alpha.

Dialect fields: those of ``peft.split_prefix`` plus ``<component>.layer`` = ``lora`` or
``lora_linear_layer`` (the usual spelling of that component's keys; defaults ``lora`` for the UNet,
``lora_linear_layer`` for text encoders).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..canonical import CanonicalKey
from ..errors import UsageError
from .base import KeyFormat, ParsedKey
from .mmdit import is_fused
from .paths import TEXT_ENCODERS
from .peft import check_bare_components, locate, spell_prefix

_KEY = re.compile(r"(?P<path>.+?)\.(?P<layer>lora|lora_linear_layer)\.(?P<factor>down|up)\.weight")


def _layer_field(component: str) -> str:
    return f"{component}.layer"


class DiffusersFormat(KeyFormat):
    name = "diffusers"
    roles = frozenset({"down", "up"})

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        m = _KEY.fullmatch(key)
        if not m:
            return None
        located = locate(m["path"], component)
        if located is None:
            return None
        found, path, facts = located
        facts[_layer_field(found)] = m["layer"]
        return ParsedKey(CanonicalKey(found, path, m["factor"]), facts)

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        check_bare_components(self.name, ckeys, dialect)
        full = dict(dialect)
        for component in {k.component for k in ckeys}:
            full.setdefault(_layer_field(component), "lora_linear_layer" if component in TEXT_ENCODERS else "lora")
        return full

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        if is_fused(ckey.path):
            raise UsageError(f"{ckey}: diffusers has no fused modules", hint="split it into its targets first")
        layer = dialect[_layer_field(ckey.component)]
        return f"{spell_prefix(ckey, dialect)}.{layer}.{ckey.role}.weight"
