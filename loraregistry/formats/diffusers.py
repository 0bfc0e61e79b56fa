"""Older diffusers LoRA files (``pytorch_lora_weights.safetensors`` of the SD1/SDXL training scripts
before the PEFT switch): ``unet.<path>.lora.down.weight`` and, for text encoders,
``text_encoder.<path>.lora_linear_layer.down.weight`` (``lora.down`` on ``text_projection``).

The ``lora_A``/``lora_B`` spellings that newer diffusers writes belong to ``peft``. Prefixes work as
in peft (``unet.``, ``text_encoder.``, ``text_encoder_2.``, or none: ``unet.save_attn_procs``
wrote bare UNet paths). Roles: down, up and, since the training scripts' ``--use_dora``, dora_scale:
``convert_state_dict_to_diffusers`` renames peft's ``lora_A``/``lora_B`` but leaves
``<path>.lora_magnitude_vector[.weight]`` as peft spelled it. That key reads as peft too; detection gives it
to whichever format claims the file's other keys. These files carry no alpha.

Dialect fields: those of ``peft.split_prefix`` plus ``<component>.layer`` = ``lora`` or
``lora_linear_layer`` (the usual spelling of that component's keys; defaults ``lora`` for the UNet,
``lora_linear_layer`` for text encoders), and ``dora_suffix`` (``.weight`` or empty; only with DoRA keys).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..canonical import CanonicalKey
from ..errors import UsageError
from ..lazy_re import lazy
from .base import KeyFormat, ParsedKey
from .mmdit import is_fused
from .paths import TEXT_ENCODERS
from .peft import check_bare_components, locate, spell_prefix

_KEY = lazy(r"(?P<path>.+?)\.(?P<layer>lora|lora_linear_layer)\.(?P<factor>down|up)\.weight")
_MAGNITUDE = lazy(r"(?P<path>.+?)\.lora_magnitude_vector(?P<suffix>\.weight)?")


def _layer_field(component: str) -> str:
    return f"{component}.layer"


class DiffusersFormat(KeyFormat):
    name = "diffusers"
    roles = frozenset({"down", "up", "dora_scale"})

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        m = _KEY.fullmatch(key)
        if not m:
            return self._parse_magnitude(key, component)
        located = locate(m["path"], component)
        if located is None:
            return None
        found, path, facts = located
        facts[_layer_field(found)] = m["layer"]
        return ParsedKey(CanonicalKey(found, path, m["factor"]), facts)

    @staticmethod
    def _parse_magnitude(key: str, component: str | None) -> ParsedKey | None:
        m = _MAGNITUDE.fullmatch(key)
        located = locate(m["path"], component) if m else None
        if located is None:
            return None
        found, path, facts = located
        facts["dora_suffix"] = m["suffix"] or ""
        return ParsedKey(CanonicalKey(found, path, "dora_scale"), facts)

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        check_bare_components(self.name, ckeys, dialect)
        full = dict(dialect)
        for component in {k.component for k in ckeys}:
            full.setdefault(_layer_field(component), "lora_linear_layer" if component in TEXT_ENCODERS else "lora")
        return full

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        if is_fused(ckey.path):
            raise UsageError(f"{ckey}: diffusers has no fused modules", hint="split it into its targets first")
        if ckey.role == "dora_scale":
            return f"{spell_prefix(ckey, dialect)}.lora_magnitude_vector{dialect.get('dora_suffix', '')}"
        layer = dialect[_layer_field(ckey.component)]
        return f"{spell_prefix(ckey, dialect)}.{layer}.{ckey.role}.weight"
