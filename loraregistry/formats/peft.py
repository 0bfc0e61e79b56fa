"""PEFT keys, as diffusers saves and loads them today: ``<prefix><module path>.lora_A[.<adapter>].weight``.

This format owns every ``lora_A``/``lora_B``/``lora_magnitude_vector`` key, with or without a
component prefix: the "diffusers" format is only the older ``.lora.down`` spellings, so detection
never has two candidates for one key.

Spelling: ``[base_model.model.][<component>.]<path>.<factor>[.<adapter>][.weight|.bias]``:
``lora_A.weight`` -> down, ``lora_B.weight`` -> up, ``lora_B.bias`` -> up_bias,
``lora_magnitude_vector[.weight]`` -> dora_scale. ``lora_embedding_A/B`` stay unknown.
Keys without a component prefix take the caller's hint, else the component their path looks like
(UNet blocks -> unet, ``text_model.``/``encoder.layers`` -> text_encoder, transformer blocks ->
transformer); a bare T5 path needs the hint.

Dialect fields: ``outer_prefix`` (``base_model.model.`` or empty), ``component_prefix`` (yes/no),
``component`` (the component of bare keys), ``adapter_name`` (only when present),
``dora_suffix`` (``.weight`` or empty; only with DoRA keys), ``<component>.text_model`` (yes/no).

Alpha: PEFT keeps ``lora_alpha``/``alpha_pattern`` in the adapter config, not in tensors, so
``alpha`` is not in ``roles`` and ``from_canonical`` refuses it (UsageError): a converter folds alpha
into the config (or the weights) and drops those keys first. Fused SD3/Flux paths are refused too.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..canonical import COMPONENTS, CanonicalKey
from ..errors import UsageError
from ..lazy_re import lazy
from .base import KeyFormat, ParsedKey
from .mmdit import is_fused
from .paths import guess_component, spell_text_model, text_model_field, with_text_model

_KEY = lazy(
    r"(?P<path>.+?)\.(?P<factor>lora_A|lora_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>(?!weight$|bias$)[^.]+))?(?:\.(?P<param>weight|bias))?"
)
_ROLES = {
    ("lora_A", "weight"): "down",
    ("lora_B", "weight"): "up",
    ("lora_B", "bias"): "up_bias",
    ("lora_magnitude_vector", None): "dora_scale",
    ("lora_magnitude_vector", "weight"): "dora_scale",
}
_OUTER = "base_model.model."


def split_prefix(path: str, hint: str | None) -> tuple[str | None, str, dict[str, str]]:
    """(component, module path, facts) of a dotted path that may start with a component prefix.

    Shared with the older diffusers spellings, which use the same prefixes.
    """
    facts: dict[str, str] = {}
    if path.startswith(_OUTER):
        path = path[len(_OUTER):]
        facts["outer_prefix"] = _OUTER
    head, _, rest = path.partition(".")
    if head in COMPONENTS and rest:
        facts["component_prefix"] = "yes"
        return head, rest, facts
    facts["component_prefix"] = "no"
    component = hint or guess_component(path)
    if component is not None:
        facts["component"] = component
    return component, path, facts


def locate(path: str, hint: str | None) -> tuple[str, str, dict[str, str]] | None:
    """``split_prefix`` then the canonical ``text_model.`` spelling: (component, canonical path, facts), or
    None when no component can be told. Shared by the peft, diffusers and attention-processor formats."""
    found, path, facts = split_prefix(path, hint)
    if found is None:
        return None
    path, text_model = with_text_model(found, path)
    if text_model is not None:
        facts[text_model_field(found)] = text_model
    return found, path, facts


def spell_prefix(ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
    """Inverse of ``split_prefix``: the prefixed, text_model-spelled module path."""
    path = spell_text_model(ckey.component, ckey.path, dict(dialect))
    if dialect.get("component_prefix", "yes") == "yes":
        path = f"{ckey.component}.{path}"
    return dialect.get("outer_prefix", "") + path


def check_bare_components(fmt: str, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> None:
    """Keys without a component prefix must all belong to the component they will be read back as."""
    if dialect.get("component_prefix", "yes") == "yes":
        return
    components = {k.component for k in ckeys}
    if len(components) > 1:
        raise UsageError(f"{fmt} keys without a component prefix cannot hold {', '.join(sorted(components))}",
                         hint="use dialect component_prefix=yes")
    for ckey in ckeys:
        if ckey.component != (dialect.get("component") or guess_component(ckey.path)):
            raise UsageError(f"{ckey}: a bare {fmt} key would not read back as {ckey.component}",
                             hint="use dialect component_prefix=yes")


class PeftFormat(KeyFormat):
    name = "peft"
    roles = frozenset({"down", "up", "up_bias", "dora_scale"})

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        m = _KEY.fullmatch(key)
        if not m:
            return None
        role = _ROLES.get((m["factor"], m["param"]))
        if role is None:
            return None
        located = locate(m["path"], component)
        if located is None:
            return None
        found, path, facts = located
        if m["adapter"]:
            facts["adapter_name"] = m["adapter"]
        if role == "dora_scale":
            facts["dora_suffix"] = ".weight" if m["param"] else ""
        return ParsedKey(CanonicalKey(found, path, role), facts)

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        check_bare_components(self.name, ckeys, dialect)
        return dict(dialect)

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        if is_fused(ckey.path):
            raise UsageError(f"{ckey}: peft has no fused modules", hint="split it into its diffusers targets first")
        adapter = f".{dialect['adapter_name']}" if dialect.get("adapter_name") else ""
        tail = {
            "down": f"lora_A{adapter}.weight",
            "up": f"lora_B{adapter}.weight",
            "up_bias": f"lora_B{adapter}.bias",
            "dora_scale": f"lora_magnitude_vector{adapter}{dialect.get('dora_suffix', '')}",
        }[ckey.role]
        return f"{spell_prefix(ckey, dialect)}.{tail}"
