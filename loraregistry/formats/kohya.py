"""kohya / A1111 keys (LoRA, LoCon, LyCORIS in kohya naming): ``<prefix>_<flat module path>.<suffix>``.

Prefixes: ``lora_unet_`` (UNet, or the SD3/Flux transformer under its original module names),
``lora_te_`` (SD1/SD2 text encoder), ``lora_te1_``/``lora_te2_``/``lora_te3_`` (SDXL, SD3, Flux text
encoders; te3 is T5), ``lora_transformer_`` (diffusers-named SD3/Flux transformer, as OneTrainer
writes). Suffixes and roles come from ``lycoris.SUFFIX_ROLES``.

Dialect fields (each only when the file has such keys):

* ``unet_names``: ``sgm`` (SDXL: ``input_blocks_4_1_...``) or ``diffusers`` (``down_blocks_1_...``);
  ``unet_levels``: ``3``/``4``, when the keys tell (only needed to spell up block 0's up-sampler in SGM);
* ``transformer_names``: ``flux`` / ``sd3`` (original names, see ``mmdit``) or ``diffusers``;
* ``te_prefix``: ``lora_te`` or ``lora_te1`` for ``text_encoder``;
* ``<component>.text_model``: ``yes``/``no``, whether CLIP names carry ``text_model_``;
* ``t5_component``: where ``lora_te3_`` went: ``text_encoder_3`` (SD3) or ``text_encoder_2`` (Flux,
  whose pipeline calls T5 ``text_encoder_2``). It is Flux when the file has transformer keys and
  nothing shows SD3 (SD3 names or ``lora_te2_`` keys); a text-encoder-only file reads as SD3's.

Emitting without a dialect: diffusers UNet names, ``lora_te`` for SD1-style files (``lora_te1`` when a
second text encoder is present), ``text_model_`` kept, the transformer family inferred from the
paths. Every emitted key is parsed back and must give the same canonical key, so what this format
writes always reads back unchanged.
"""

from __future__ import annotations

import functools

from collections.abc import Mapping
from functools import cache

from ..canonical import CanonicalKey
from ..errors import UsageError
from ..lazy_re import lazy
from . import mmdit, sgm
from .base import KeyFormat, ParsedKey
from .flat_names import flatten, name_index, resolve, split_flat
from .lycoris import ROLE_SUFFIXES, SUFFIX_ROLES
from .paths import (
    TEXT_ENCODER_ROOTS,
    TRANSFORMER_ROOTS,
    is_t5_path,
    spell_text_model,
    text_model_field,
    with_text_model,
)

_KEY = lazy(r"(lora_unet|lora_te[123]?|lora_transformer)_([^.]+)\.(.+)")
_TE_COMPONENTS = {
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
    "lora_te3": "text_encoder_3",
}
_UNET_ROOTS = sgm.DIFFUSERS_ROOTS | sgm.SGM_ROOTS


@cache
def _sgm_index() -> dict[str, str]:
    """flat SGM name -> diffusers path, derived from the UNet name index."""
    index: dict[str, str] = {}
    for path in name_index("unet").values():
        for levels in (3, 4):
            try:
                sgm_path = sgm.diffusers_to_sgm(path, levels=levels)
            except sgm.LayoutError:
                continue
            if sgm_path is not None:
                index.setdefault(flatten(sgm_path), path)
    return index


def _parse_unet(flat: str) -> ParsedKey | None:
    """UNet names (diffusers or SGM) -> canonical path; roles are filled in by the caller."""
    if (path := name_index("unet").get(flat)) is not None:
        return ParsedKey(CanonicalKey("unet", path, ""), {"unet_names": "diffusers"})
    if (path := _sgm_index().get(flat)) is not None:
        sgm_path = split_flat(flat)  # for the levels fact only
        return _unet_result(path, "sgm", sgm_path)
    dotted = resolve("unet", flat, _UNET_ROOTS)
    if dotted is None:
        return None
    if dotted.split(".", 1)[0] in sgm.SGM_ROOTS:
        path = sgm.sgm_to_diffusers(dotted)
        return None if path is None else _unet_result(path, "sgm", dotted)
    return ParsedKey(CanonicalKey("unet", dotted, ""), {"unet_names": "diffusers"})


def _unet_result(path: str, names: str, sgm_path: str | None) -> ParsedKey:
    facts = {"unet_names": names}
    levels = sgm.levels_from_sgm(sgm_path) if sgm_path else None
    if levels is not None:
        facts["unet_levels"] = str(levels)
    return ParsedKey(CanonicalKey("unet", path, ""), facts)


def _parse_transformer_native(flat: str) -> ParsedKey | None:
    found = mmdit.parse_flat(flat)
    if not found:
        return None
    paths = set(found.values())
    if len(paths) != 1:  # never happens with the shipped tables; refuse rather than guess
        return None
    facts = {"transformer_names": next(iter(found))} if len(found) == 1 else {}
    return ParsedKey(CanonicalKey("transformer", paths.pop(), ""), facts)


def _parse_text_encoder(prefix: str, flat: str) -> ParsedKey | None:
    component = _TE_COMPONENTS[prefix]
    index = name_index(component)
    path = index.get(flat) or index.get("text_model_" + flat) or resolve(component, flat, TEXT_ENCODER_ROOTS)
    if path is None and component == "text_encoder_3":  # T5 of SD3 and Flux has one layout
        path = name_index("text_encoder_2").get(flat)
    if path is None:
        return None
    canonical, _ = with_text_model(component, path)
    facts: dict[str, str] = {}
    if canonical.startswith("text_model."):
        facts[text_model_field(component)] = "yes" if flat.startswith("text_model_") else "no"
    if component == "text_encoder":
        facts["te_prefix"] = prefix
    return ParsedKey(CanonicalKey(component, canonical, ""), facts)


@functools.lru_cache(maxsize=1 << 17)
def _parse_key(key: str) -> ParsedKey | None:
    """Cached: detection and mapping both parse every key, and files of one tool share key names.
    ``parse`` gives its callers a copy of the facts; ``claim`` (detection, which only reads) the kept result."""
    m = _KEY.fullmatch(key)
    if not m:
        return None
    prefix, flat, suffix = m.groups()
    role = SUFFIX_ROLES.get(suffix)
    if role is None:
        return None
    parsed = _parse_module(prefix, flat)
    if parsed is None:
        return None
    return ParsedKey(CanonicalKey(parsed.key.component, parsed.key.path, role), parsed.facts)


@functools.lru_cache(maxsize=1 << 16)
def _parse_module(prefix: str, flat: str) -> ParsedKey | None:
    """One module name; cached, since every module has 2-3 keys and most files share module names."""
    if prefix == "lora_unet":
        if (path := name_index("unet").get(flat)) is not None:  # the common case, one dict lookup
            return ParsedKey(CanonicalKey("unet", path, ""), {"unet_names": "diffusers"})
        return _parse_transformer_native(flat) or _parse_unet(flat)
    if prefix == "lora_transformer":
        path = resolve("transformer", flat, TRANSFORMER_ROOTS)
        return None if path is None else ParsedKey(
            CanonicalKey("transformer", path, ""), {"transformer_names": "diffusers"})
    return _parse_text_encoder(prefix, flat)


class KohyaFormat(KeyFormat):
    name = "kohya"
    roles = frozenset(ROLE_SUFFIXES)

    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        parsed = _parse_key(key)
        return None if parsed is None else ParsedKey(parsed.key, dict(parsed.facts))

    def claim(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        return _parse_key(key)  # the kept result itself: detection only reads it (no copy per key)

    def settle(self, parsed: dict[str, ParsedKey], dialect: dict[str, str]) -> dict[str, ParsedKey]:
        te3_keys = [k for k, p in parsed.items() if p.key.component == "text_encoder_3"]
        if not te3_keys:
            return parsed
        # Flux unless the file shows SD3 (SD3 names, or a CLIP-G te2); without transformer keys
        # nothing tells, and te3 stays SD3's text_encoder_3.
        has_te2 = any(k.startswith("lora_te2_") for k in parsed)
        has_transformer = any(p.key.component == "transformer" for p in parsed.values())
        flux = has_transformer and not has_te2 and dialect.get("transformer_names") in ("flux", None)
        t5_component = "text_encoder_2" if flux else "text_encoder_3"
        dialect["t5_component"] = t5_component
        if flux:
            for key in te3_keys:
                old = parsed[key].key
                parsed[key] = ParsedKey(CanonicalKey(t5_component, old.path, old.role), parsed[key].facts)
        return parsed

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        full = dict(dialect)
        components = {k.component for k in ckeys}
        full.setdefault("unet_names", "diffusers")
        if "unet_levels" not in full:
            levels = sgm.infer_levels({k.path for k in ckeys if k.component == "unet"})
            if levels is not None:
                full["unet_levels"] = str(levels)
        # sd-scripts spells CLIP-L lora_te1 wherever a model has more than one text encoder: SDXL, and SD3 / Flux
        # (lora_sd3, lora_flux), even in a file that holds no T5 keys; InvokeAI's Flux loader matches only that
        numbered = {"text_encoder_2", "text_encoder_3", "transformer"} & components
        full.setdefault("te_prefix", "lora_te1" if numbered else "lora_te")
        if "transformer_names" not in full:
            family = _infer_family({k.path for k in ckeys if k.component == "transformer"})
            if family:
                full["transformer_names"] = family
        return full

    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        key = f"{self._prefix(ckey, dialect)}_{flatten(self._module_name(ckey, dialect))}.{ROLE_SUFFIXES[ckey.role]}"
        back = self.parse(key)
        same_module = back is not None and (back.key.path, back.key.role) == (ckey.path, ckey.role)
        if not same_module:
            raise UsageError(f"kohya cannot spell {ckey} so that it reads back (would write {key!r})")
        return key

    def _prefix(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        component = ckey.component
        if component == "unet":
            return "lora_unet"
        if component == "transformer":
            return "lora_transformer" if dialect.get("transformer_names") == "diffusers" else "lora_unet"
        if component == "text_encoder":
            return dialect["te_prefix"]
        if component == "text_encoder_2":
            return "lora_te3" if is_t5_path(ckey.path) else "lora_te2"  # Flux calls T5 text_encoder_2
        if component == "text_encoder_3":
            return "lora_te3"
        raise UsageError(f"kohya has no prefix for component {component!r}")

    def _module_name(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        if ckey.component == "unet":
            if dialect.get("unet_names") != "sgm":
                return ckey.path
            levels = dialect.get("unet_levels")
            try:
                sgm_path = sgm.diffusers_to_sgm(ckey.path, levels=int(levels) if levels else None)
            except sgm.LayoutError as err:
                raise UsageError(str(err), hint="pass dialect unet_levels=3 (SDXL) or 4 (SD1/SD2)") from None
            if sgm_path is None:
                raise UsageError(f"{ckey}: not a module of the standard SD UNet layout, no SGM name")
            return sgm_path
        if ckey.component == "transformer":
            family = dialect.get("transformer_names")
            if family == "diffusers":
                return ckey.path
            return _native_name(ckey, family)
        return spell_text_model(ckey.component, ckey.path, dict(dialect))


def _infer_family(paths: set[str]) -> str | None:
    """flux or sd3 when the transformer paths fit only one of them."""
    return mmdit.infer_family(paths)


def _native_name(ckey: CanonicalKey, family: str | None) -> str:
    families = [family] if family else list(mmdit.FAMILIES)
    names = {mmdit.to_native(ckey.path, f) for f in families} - {None}
    if len(names) == 1:
        return names.pop()
    if not names:
        hint = "fuse split q/k/v first, or write with dialect transformer_names=diffusers"
        raise UsageError(f"{ckey}: no original {family or 'SD3/Flux'} module name", hint=hint)
    raise UsageError(f"{ckey}: SD3 and Flux name it differently", hint="pass dialect transformer_names=flux or sd3")
