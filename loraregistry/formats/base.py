"""What a key format is: a parser of single keys plus an emitter, and the shared file-level logic.

A format's ``parse`` looks at one key and returns its canonical key together with the dialect facts
its spelling implies (``{"unet_names": "sgm"}``), or None when the format does not understand it.
The file-level ``to_canonical`` collects those facts into one dialect (most common value per field;
a file that mixes spellings of one format cannot be re-emitted exactly) and lets the format adjust
keys that only the whole file can settle (kohya ``lora_te3`` is Flux's ``text_encoder_2``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping
from ..canonical import CanonicalKey, KeyMapping
from ..errors import UsageError
from ..record import FrozenRecord


class ParsedKey(FrozenRecord):
    key: CanonicalKey
    facts: Mapping[str, str]

    def __init__(self, key: CanonicalKey, facts: Mapping[str, str] | None = None) -> None:
        self._set(key=key, facts={} if facts is None else facts)


class KeyFormat(ABC):
    """One key format. Subclasses set ``name`` and ``roles`` (the roles it can spell)."""

    name: str
    roles: frozenset[str]

    @abstractmethod
    def parse(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        """The canonical form of one key, or None when this format does not understand it.

        ``component`` is a hint for keys whose spelling carries no component.
        """

    def claim(self, key: str, *, component: str | None = None) -> ParsedKey | None:
        """``parse`` for detection and mapping inside this package: the result (its ``facts`` too) may be one a
        format keeps for every caller, so it is read, never changed. Default: ``parse``."""
        return self.parse(key, component=component)

    @abstractmethod
    def emit_one(self, ckey: CanonicalKey, dialect: Mapping[str, str]) -> str:
        """The key of one canonical key; raise UsageError when the format cannot spell it."""

    def complete_dialect(self, ckeys: list[CanonicalKey], dialect: Mapping[str, str]) -> dict[str, str]:
        """The dialect to emit with: the caller's, plus defaults inferred from the keys."""
        return dict(dialect)

    def settle(self, parsed: dict[str, ParsedKey], dialect: dict[str, str]) -> dict[str, ParsedKey]:
        """Adjust keys that only the whole file can settle; may add dialect fields. Default: none."""
        return parsed

    # --- shared file-level logic -----------------------------------------------------------------

    def to_canonical(self, keys: Iterable[str], *, component: str | None = None,
                     parsed: Mapping[str, ParsedKey] | None = None) -> KeyMapping:
        """Map ``keys``; ``parsed`` holds results of ``parse`` already made for them (detection makes them)."""
        done = parsed or {}
        parsed = {}
        unknown: list[str] = []
        for key in keys:
            result = done.get(key) or self.parse(key, component=component)
            if result is None:
                unknown.append(key)
            else:
                parsed[key] = result
        dialect = collect_dialect(p.facts for p in parsed.values())
        parsed = self.settle(parsed, dialect)
        mapping = KeyMapping(format=self.name, unknown=unknown, dialect=dialect)
        add_without_collisions(mapping, ((k, p.key) for k, p in parsed.items()))
        return mapping

    def from_canonical(
        self, ckeys: Iterable[CanonicalKey], dialect: Mapping[str, str] | None = None
    ) -> dict[CanonicalKey, str]:
        ckeys = list(ckeys)
        unsupported = sorted({k.role for k in ckeys} - self.roles)
        if unsupported:
            raise UsageError(
                f"format {self.name!r} has no key for role(s) {', '.join(unsupported)}",
                hint=f"it spells {', '.join(sorted(self.roles))}; drop or convert the others first",
            )
        full = self.complete_dialect(ckeys, dialect or {})
        emitted = {ckey: self.emit_one(ckey, full) for ckey in ckeys}
        seen: dict[str, CanonicalKey] = {}
        for ckey, key in emitted.items():
            if key in seen:
                raise UsageError(f"{seen[key]} and {ckey} would both be written as {key!r} in {self.name}")
            seen[key] = ckey
        return emitted


def collect_dialect(facts: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Most common value per dialect field; ties go to the value seen first."""
    # One count of (field, value) pairs (a Counter per field per fact cost a Counter per key); Counter keeps the
    # order pairs were first seen and max() keeps the first of equals, so ties still go to the value seen first.
    pairs = Counter(item for fact in facts for item in fact.items())
    best: dict[str, tuple[str, int]] = {}
    for (name, value), count in pairs.items():
        if name not in best or count > best[name][1]:
            best[name] = (value, count)
    return {name: best[name][0] for name in sorted(best)}


def add_without_collisions(mapping: KeyMapping, pairs: Iterable[tuple[str, CanonicalKey]]) -> None:
    """Add key -> canonical pairs; a key whose canonical key is already taken becomes unknown
    (two tensors for one slot, e.g. two adapter names in one peft file) rather than overwriting."""
    taken = set(mapping.mapped.values())
    for key, ckey in pairs:
        if ckey in taken:
            mapping.unknown.append(key)
        else:
            mapping.mapped[key] = ckey
            taken.add(ckey)
