"""Key formats: detect how an adapter spells its tensor keys, and map keys to and from the canonical
form ``(component, module_path, role)`` (see ``loraregistry.canonical``). Keys only, no torch.

``FORMATS`` is an ordered registry; detection asks each format in order and the first that
understands a key claims it. A file whose keys are claimed by more than one format is ``mixed``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from ..canonical import CanonicalKey, KeyMapping, ModuleKey
from ..errors import UnknownAdapterFormat, UsageError
from ..record import Record
from .attn_procs import AttnProcsFormat
from .base import KeyFormat, ParsedKey, add_without_collisions
from .bfl import BflFormat
from .diffusers import DiffusersFormat
from .kohya import KohyaFormat
from .lycoris import network_type
from .mmdit import SCALE_SHIFT_SWAPPED, fused_targets, is_fused
from .peft import PeftFormat
from .xlabs import XlabsFormat

__all__ = [
    "FORMATS", "MIXED", "UNKNOWN", "FormatDetection", "KeyFormat", "ParsedKey", "SCALE_SHIFT_SWAPPED",
    "detect_format", "from_canonical", "fused_targets", "is_fused", "network_type", "register_format",
    "roles_by_module", "to_canonical", "to_canonical_by_module",
]

MIXED = "mixed"
UNKNOWN = "unknown"

FORMATS: dict[str, KeyFormat] = {}


def register_format(fmt: KeyFormat, *, before: str | None = None) -> None:
    """Add a format to the registry, last or ahead of ``before`` (detection order matters)."""
    if fmt.name in FORMATS or fmt.name in (MIXED, UNKNOWN):
        raise UsageError(f"a key format named {fmt.name!r} is already registered")
    _detected_mapping.cache_clear()
    if before is None:
        FORMATS[fmt.name] = fmt
        return
    if before not in FORMATS:
        raise UsageError(f"no key format named {before!r} to insert before")
    items = list(FORMATS.items())
    at = [name for name, _ in items].index(before)
    items.insert(at, (fmt.name, fmt))
    FORMATS.clear()
    FORMATS.update(items)




class FormatDetection(Record):
    """Which format claims how many keys. ``format`` is a format name, ``mixed`` or ``unknown``."""

    format: str
    counts: dict[str, int]
    unknown_keys: list[str]

    def __init__(self, format: str, counts: dict[str, int] | None = None, unknown_keys: list[str] | None = None
                 ) -> None:
        self.format = format
        self.counts = {} if counts is None else counts
        self.unknown_keys = [] if unknown_keys is None else unknown_keys


def _claimant(key: str, component: str | None) -> tuple[str, ParsedKey] | None:
    for name, fmt in FORMATS.items():
        parsed = fmt.claim(key, component=component)
        if parsed is not None:
            return name, parsed
    return None


def _claims(keys: Iterable[str], component: str | None
            ) -> tuple[dict[str, dict[str, ParsedKey]], list[str]]:
    """Keys by the format that claims them, with what it parsed (so mapping need not parse twice)."""
    by_format: dict[str, dict[str, ParsedKey]] = {}
    unknown: list[str] = []
    for key in keys:
        claim = _claimant(key, component)
        if claim is None:
            unknown.append(key)
        else:
            by_format.setdefault(claim[0], {})[key] = claim[1]
    if len(by_format) > 1:
        _settle_shared_keys(by_format, component)
    return by_format, unknown


def _settle_shared_keys(by_format: dict[str, dict[str, ParsedKey]], component: str | None) -> None:
    """Move keys that another claimed format reads as well into that format, smallest claim first.

    Some spellings belong to two formats: ``lora_magnitude_vector`` is peft's, and diffusers' DoRA exports keep
    it next to their ``.lora.down`` keys. The first claimant would make such a file "mixed"; it is one format."""
    for name in sorted(by_format, key=lambda n: len(by_format[n])):
        if len(by_format) < 2:
            return
        for other in [n for n in by_format if n != name]:
            reparsed = {key: FORMATS[other].parse(key, component=component) for key in by_format[name]}
            if all(parsed is not None for parsed in reparsed.values()):
                by_format[other].update(reparsed)  # type: ignore[arg-type]  # checked: none is None
                del by_format[name]
                break


def detect_format(keys: Iterable[str], *, component: str | None = None) -> FormatDetection:
    """The key format of a file's tensor keys. ``component`` is a hint for keys with no component prefix."""
    by_format, unknown = _claims(keys, component)
    counts = {name: len(claimed) for name, claimed in by_format.items()}
    if not counts:
        name = UNKNOWN
    elif len(counts) == 1:
        name = next(iter(counts))
    else:
        name = MIXED
    return FormatDetection(format=name, counts=counts, unknown_keys=unknown)


def _get(format: str) -> KeyFormat:
    try:
        return FORMATS[format]
    except KeyError:
        known = ", ".join(FORMATS)
        raise UsageError(f"unknown key format {format!r}", hint=f"one of: {known}") from None


def to_canonical(keys: Iterable[str], *, format: str | None = None, component: str | None = None) -> KeyMapping:
    """Map a file's keys to canonical keys.

    With ``format=None`` the format is detected; a file no format understands raises
    UnknownAdapterFormat. With a format given, keys it does not understand are reported unknown.
    A ``mixed`` file maps each key by the format that claims it; its dialect holds
    ``formats`` (comma list) and each format's fields as ``<format>.<field>``.
    ``component`` is a hint for keys with no component prefix (bare peft/diffusers keys).
    """
    keys = list(keys)
    if format is not None and format != MIXED:
        return _get(format).to_canonical(keys, component=component)
    detected = _detected_mapping(tuple(keys), component, format)
    return KeyMapping(format=detected.format, mapped=dict(detected.mapped), unknown=list(detected.unknown),
                      dialect=dict(detected.dialect))  # a copy: callers own what they get


def to_canonical_by_module(keys: Iterable[str]) -> tuple[KeyMapping, dict[ModuleKey, dict[str, str]]]:
    """``to_canonical(keys)`` (the format detected) and, per module, role -> key; both the caller's own copies."""
    keys = tuple(keys)
    detected = _detected_mapping(keys, None, None)
    kept = _GROUPED.get(id(detected))
    if kept is None or kept[0] is not detected:  # grouped for another mapping, since forgotten: group again
        grouped: dict[ModuleKey, dict[str, str]] = {}
        for key, ck in detected.mapped.items():
            grouped.setdefault(ck.module, {})[ck.role] = key
        if len(_GROUPED) >= 32:
            _GROUPED.clear()
        kept = _GROUPED[id(detected)] = (detected, grouped)  # holding the mapping: its id stays its own
    mapping = KeyMapping(format=detected.format, mapped=dict(detected.mapped), unknown=list(detected.unknown),
                         dialect=dict(detected.dialect))
    return mapping, {module: dict(roles) for module, roles in kept[1].items()}


# id(kept mapping) -> (that mapping, its modules' role -> key): a folder of one trainer's files groups their keys once.
_GROUPED: dict[int, tuple[KeyMapping, dict[ModuleKey, dict[str, str]]]] = {}


@functools.lru_cache(maxsize=32)
def _detected_mapping(keys: tuple[str, ...], component: str | None, format: str | None) -> KeyMapping:
    """``to_canonical`` with detection, kept for the last key lists seen: a folder of adapters from one trainer
    repeats the same keys file after file (the result depends on the keys and the registered formats only; a
    registration clears it)."""
    by_format, unknown = _claims(keys, component)
    if not by_format:
        raise UnknownAdapterFormat(
            f"no known key format matches these {len(keys)} keys" if keys else "no tensor keys to map",
            hint=f"known formats: {', '.join(FORMATS)}",
        )
    if len(by_format) == 1 and format is None:
        (name, claimed), = by_format.items()
        mapping = FORMATS[name].to_canonical(claimed, component=component, parsed=claimed)
        mapping.unknown.extend(unknown)
        return mapping
    mapping = KeyMapping(format=MIXED, dialect={"formats": ",".join(by_format)})
    for name, claimed in by_format.items():
        part = FORMATS[name].to_canonical(claimed, component=component, parsed=claimed)
        add_without_collisions(mapping, part.mapped.items())
        mapping.unknown.extend(part.unknown)
        mapping.dialect.update({f"{name}.{k}": v for k, v in part.dialect.items()})
    mapping.unknown.extend(unknown)
    return mapping


def from_canonical(
    ckeys: Iterable[CanonicalKey], *, format: str, dialect: Mapping[str, str] | None = None
) -> dict[CanonicalKey, str]:
    """The key each canonical key gets in ``format``, spelled per ``dialect`` (a KeyMapping's dialect
    reproduces that file's keys exactly).

    Raises UsageError when the format cannot spell a key: a role it has no tensor for (peft keeps
    alpha in its config: filter with ``FORMATS[format].roles``), a component or module it cannot
    name, or ``mixed`` (write one format).
    """
    if format == MIXED:
        raise UsageError("cannot write a mixed file", hint=f"choose one of: {', '.join(FORMATS)}")
    return _get(format).from_canonical(ckeys, dialect)


def roles_by_module(mapping: KeyMapping) -> dict[ModuleKey, set[str]]:
    """The roles present per module; the input ``network_type`` wants."""
    result: dict[ModuleKey, set[str]] = {}
    for ckey in mapping.mapped.values():
        result.setdefault(ckey.module, set()).add(ckey.role)
    return result


# bfl ahead of peft: its ``lora_A`` keys under original names must not fall to peft's component hint.
for _fmt in (KohyaFormat(), BflFormat(), PeftFormat(), AttnProcsFormat(), DiffusersFormat(), XlabsFormat()):
    register_format(_fmt)
