"""BFL-native keys: SD3/Flux modules under their original dotted names, as ComfyUI, ai-toolkit and BFL's own
LoRAs spell them: ``[<prefix>]<original module>.<factor>``.

* prefix: ``diffusion_model.`` (ComfyUI, ai-toolkit), ``base_model.model.`` (peft around the original model,
  e.g. fal's Kontext LoRAs) or none (BFL's control LoRAs); text encoders as ComfyUI saves them:
  ``text_encoders.clip_l.transformer.`` (CLIP-L), ``text_encoders.clip_g.transformer.`` (SD3's CLIP-G),
  ``text_encoders.t5xxl.transformer.`` (T5: Flux's ``text_encoder_2``, SD3's ``text_encoder_3``);
* module: ``double_blocks.0.img_attn.qkv``, ``joint_blocks.0.x_block.attn.qkv``, ... (``mmdit`` tables, fused
  paths included);
* factor: ``lora_A.weight``/``lora_B.weight`` or ``lora_down.weight``/``lora_up.weight``, with ``alpha`` and
  ``dora_scale`` beside them (ComfyUI reads ``<module>.alpha`` and ``<module>.dora_scale`` for either spelling).

Dialect fields: ``bfl_prefix`` (the transformer prefix), ``bfl_factors`` (``lora_A`` or ``lora_down``),
``transformer_names`` (``flux``/``sd3``, when the names tell), ``t5_component`` and ``<component>.text_model``
(CLIP spelled with or without ``text_model.``). Rows are stored as the original model stores them:
``final_layer.adaLN_modulation.1`` holds [shift, scale] (see ``mmdit.SCALE_SHIFT_SWAPPED``); the key maps 1:1
and converters reorder the rows.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..canonical import CanonicalKey
from ..errors import UsageError
from ..lazy_re import lazy
from . import mmdit
from .base import KeyFormat, ParsedKey
from .paths import is_t5_path, spell_text_model, text_model_field, with_text_model

PREFIXES = ("diffusion_model.", "base_model.model.", "")
_TE_HEADS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}
_KEY = lazy(
    r"(?:(?P<prefix>diffusion_model\.|base_model\.model\.)|text_encoders\.(?P<te>clip_l|clip_g|t5xxl)\.transformer\.)?"
    r"(?P<module>.+?)\.(?P<suffix>lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha|dora_scale)"
)
# first segments a BFL-native key can start with: the prefixes and the original models' top-level modules
_HEADS = frozenset({"diffusion_model", "base_model", "text_encoders"}
                   | {native.split(".", 1)[0] for table in mmdit.FAMILIES.values() for native in table})
_SUFFIX_ROLES = {
    "lora_A.weight": ("down", "lora_A"), "lora_B.weight": ("up", "lora_A"),
    "lora_down.weight": ("down", "lora_down"), "lora_up.weight": ("up", "lora_down"),
    "alpha": ("alpha", None), "dora_scale": ("dora_scale", None),
}
_FACTOR_SUFFIX = {("lora_A", "down"): "lora_A.weight", ("lora_A", "up"): "lora_B.weight",
                  ("lora_down", "down"): "lora_down.weight", ("lora_down", "up"): "lora_up.weight"}


def _parse_transformer(module: str) -> tuple[str, dict[str, str]] | None:
    found = mmdit.parse_dotted(module)
    paths = set(found.values())
    if len(paths) != 1:  # unknown, or (never with the shipped tables) two families disagreeing
        return None
    facts = {"transformer_names": next(iter(found))} if len(found) == 1 else {}
    return paths.pop(), facts


def _parse_text_encoder(head: str, module: str) -> tuple[str, str, dict[str, str]] | None:
    component = _TE_HEADS[head]
    if head == "t5xxl":
        return (component, module, {}) if is_t5_path(module) else None
    path, text_model = with_text_model(component, module)
    if text_model is None:
        return None
    return component, path, {text_model_field(component): text_model}


class BflFormat(KeyFormat):
    name = "bfl"
    roles = frozenset({"down", "up", "alpha", "dora_scale"})

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        if key.split(".", 1)[0] not in _HEADS:  # every other format's keys: one set lookup, no regex
            return None
        m = _KEY.fullmatch(key)
        if not m:
            return None
        role, factors = _SUFFIX_ROLES[m["suffix"]]
        facts: dict[str, str] = {"bfl_factors": factors} if factors else {}
        if m["te"]:
            parsed = _parse_text_encoder(m["te"], m["module"])
            if parsed is None:
                return None
            found, path, te_facts = parsed
            return ParsedKey(CanonicalKey(found, path, role), facts | te_facts)
        transformer = _parse_transformer(m["module"])
        if transformer is None:
            return None
        path, t_facts = transformer
        facts |= t_facts | {"bfl_prefix": m["prefix"] or ""}
        return ParsedKey(CanonicalKey("transformer", path, role), facts)

    def settle(self, parsed: dict[str, ParsedKey], dialect: dict[str, str]) -> dict[str, ParsedKey]:
        """T5 keys are Flux's ``text_encoder_2`` unless the file shows SD3 (SD3 names or a CLIP-G), as in kohya."""
        t5_keys = [k for k, p in parsed.items() if p.key.component == "text_encoder_3" and is_t5_path(p.key.path)]
        if not t5_keys:
            return parsed
        has_clip_g = any(p.key.component == "text_encoder_2" for p in parsed.values())
        has_transformer = any(p.key.component == "transformer" for p in parsed.values())
        flux = has_transformer and not has_clip_g and dialect.get("transformer_names") in ("flux", None)
        dialect["t5_component"] = "text_encoder_2" if flux else "text_encoder_3"
        if flux:
            for key in t5_keys:
                old = parsed[key].key
                parsed[key] = ParsedKey(CanonicalKey("text_encoder_2", old.path, old.role), parsed[key].facts)
        return parsed

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        full = dict(dialect)
        full.setdefault("bfl_prefix", "diffusion_model.")
        full.setdefault("bfl_factors", "lora_down")
        if full["bfl_prefix"] not in PREFIXES or full["bfl_factors"] not in ("lora_A", "lora_down"):
            raise UsageError(f"bfl dialect bfl_prefix={full['bfl_prefix']!r}, bfl_factors={full['bfl_factors']!r} "
                             "is not one this format writes",
                             hint=f"bfl_prefix one of {PREFIXES}, bfl_factors lora_A or lora_down")
        if "transformer_names" not in full:
            family = mmdit.infer_family({k.path for k in ckeys if k.component == "transformer"})
            if family:
                full["transformer_names"] = family
        return full

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        factors = dialect["bfl_factors"]
        suffix = _FACTOR_SUFFIX.get((factors, ckey.role), ckey.role)
        key = f"{self._module(ckey, dialect)}.{suffix}"
        back = self.parse(key)
        if back is None or (back.key.path, back.key.role) != (ckey.path, ckey.role):
            raise UsageError(f"bfl cannot spell {ckey} so that it reads back (would write {key!r})")
        return key

    def _module(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        component = ckey.component
        if component == "transformer":
            return dialect["bfl_prefix"] + _native_name(ckey, dialect.get("transformer_names"))
        if component == "text_encoder":
            head = "clip_l"
        elif component == "text_encoder_2":
            head = "t5xxl" if is_t5_path(ckey.path) else "clip_g"
        elif component == "text_encoder_3":
            head = "t5xxl"
        else:
            raise UsageError(f"bfl has no prefix for component {component!r}", hint="write kohya or peft instead")
        return f"text_encoders.{head}.transformer.{spell_text_model(component, ckey.path, dict(dialect))}"


def _native_name(ckey: CanonicalKey, family: str | None) -> str:
    families = [family] if family in mmdit.FAMILIES else list(mmdit.FAMILIES)
    names = {mmdit.to_native(ckey.path, f) for f in families} - {None}
    if len(names) == 1:
        return names.pop()
    if not names:
        raise UsageError(f"{ckey}: no original {family or 'SD3/Flux'} module name",
                         hint="fuse split q/k/v first (lorareg convert --to bfl does), or write peft")
    raise UsageError(f"{ckey}: SD3 and Flux name it differently", hint="pass dialect transformer_names=flux or sd3")
