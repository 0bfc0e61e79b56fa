"""Per-consumer verdicts: will diffusers, peft, ComfyUI, InvokeAI, A1111, Forge or kohya load this adapter?

Each consumer is one module of this package that defines ``CONSUMER`` (a ``Consumer``): its rules, written
from that project's public loader code, turn ``AdapterFacts`` into an ``Assessment`` and from there into a
``Verdict`` (loads / loads_partly / fails, with findings in the LRG6xx family; not_modelled where the rules
do not cover the file's base family, an info that gates ``--target`` only under ``--strict``). The registry is
discovered from the package, so a new loader is one new file.

Kept light at import: no torch, and nothing from ``verify.findings`` at module level, so that
``findings.py`` can import ``codes.CONSUMER_ROWS`` without a cycle.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from ...record import FrozenRecord
from .codes import consumer_finding

if TYPE_CHECKING:
    from ...canonical import ModuleKey
    from ..findings import Finding
    from .facts import AdapterFacts

Outcome = Literal["loads", "loads_partly", "fails", "not_modelled"]
OUTCOMES: tuple[Outcome, ...] = ("loads", "loads_partly", "fails", "not_modelled")
# Every family a rule module may cover; a consumer lists the ones its rules model.
ALL_FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")
_SHOWN = 3
_NOT_CONSUMERS = frozenset({"codes", "facts", "cases", "table", "names", "invokeai_flux"})

__all__ = ["CONSUMERS", "OUTCOMES", "Assessment", "Consumer", "Verdict", "Verified", "consumer_verdicts",
           "known_targets",
           "loaders_table_markdown", "option_targets", "parse_targets", "target_option", "target_verdicts",
           "verdict_exit_code", "verdict_findings"]


class Verdict(FrozenRecord):
    """What one consumer would do with the adapter. ``loaded``: modules it applies, per component;
    ``applied``: those modules; ``unused_keys``: the file's keys it never applies (keys of skipped modules,
    ignored keys, a DoRA magnitude it drops). ``not_modelled``: the rules do not cover the file's family."""

    consumer: str
    version_range: str
    outcome: Outcome
    findings: tuple[Finding, ...]
    loaded: Mapping[str, int]
    applied: frozenset[ModuleKey]
    unused_keys: frozenset[str]

    def __init__(self, consumer: str, version_range: str, outcome: Outcome, findings: tuple[Finding, ...] = (),
                 loaded: Mapping[str, int] | None = None, applied: frozenset[ModuleKey] = frozenset(),
                 unused_keys: frozenset[str] = frozenset()) -> None:
        self._set(consumer=consumer, version_range=version_range, outcome=outcome, findings=findings,
                  loaded={} if loaded is None else loaded, applied=applied, unused_keys=unused_keys)

    @property
    def ok(self) -> bool:
        return self.outcome == "loads"

    def to_dict(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "version_range": self.version_range, "outcome": self.outcome,
                "loaded": dict(self.loaded), "findings": [f.to_dict() for f in self.findings]}

    def gates(self, *, strict: bool = False) -> bool:
        """Whether this verdict fails ``--target``: the loader does not fully load the file, or (under
        ``--strict``) its rules do not model the file's family."""
        return self.outcome in ("fails", "loads_partly") or (strict and self.outcome == "not_modelled")


class Verified(FrozenRecord):
    """Where the rules for one family are checked against the loader's running code: the installed ``package``
    at ``version`` (what ``code`` names), by the oracle ``tests`` ("tests/<file>.py::<test function>"), each of
    which has a case of that family. tests/test_loaders_doc.py holds the table to all of that."""

    package: str
    version: str
    code: str
    tests: tuple[str, ...]

    def __init__(self, package: str, version: str, code: str, tests: tuple[str, ...]) -> None:
        self._set(package=package, version=version, code=code, tests=tests)


class Consumer(FrozenRecord):
    """One loader. ``assess`` holds its rules; ``sources`` names the upstream files they were written from;
    ``families`` the base families the rules model (any other known family answers "not modelled");
    ``verified``: family -> the running code the rules are checked against in the test suite (the docs table)."""

    name: str
    title: str
    version_range: str
    sources: tuple[str, ...]
    assess: Callable[[AdapterFacts], Assessment]
    families: tuple[str, ...]
    verified: Mapping[str, Verified]

    def __init__(self, name: str, title: str, version_range: str, sources: tuple[str, ...],
                 assess: Callable[[AdapterFacts], Assessment], families: tuple[str, ...] = ALL_FAMILIES,
                 verified: Mapping[str, Verified] | None = None) -> None:
        self._set(name=name, title=title, version_range=version_range, sources=sources, assess=assess,
                  families=families, verified={} if verified is None else verified)

    def models(self, family: str | None) -> bool:
        """None (nothing tells the family) is assessed with the rules; "other" and unlisted families are not."""
        return family is None or family in self.families

    def verdict(self, facts: AdapterFacts) -> Verdict:
        if not self.models(facts.family):
            return self.not_modelled(facts.family)
        assessment = self.assess(facts)
        if assessment.unmodelled_reason is not None:
            return self.not_modelled(facts.family, assessment.unmodelled_reason)
        return assessment.verdict(self, facts)

    def not_modelled(self, family: str | None, reason: str | None = None) -> Verdict:
        why = reason or (f"its rules do not model {family or 'this'} adapters (they cover "
                         f"{', '.join(self.families)})")
        return Verdict(self.name, self.version_range, "not_modelled", (consumer_finding(
            "consumer-not-modelled", f"{self.name}: {why}: no claim is made whether it loads",
            hint="check the loader by hand; `--strict` makes --target fail on this"),))


class Assessment:
    """What a consumer's rules found, collected before the outcome is decided.

    ``refuse``: the loader raises, nothing is applied. ``load_nothing``: it returns but patches nothing.
    ``skip``: these modules are not applied. ``lose_dora``: they load without their magnitude. ``ignore``:
    keys that belong to no module are dropped. ``misfile``/``note``: findings that do not change what loads.
    ``unmodelled``: the file takes a path of the loader these rules do not model (the verdict is not_modelled).
    """

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.fatal: list[Finding] = []
        self.skipped: dict[ModuleKey, str] = {}
        self.lossy: set[ModuleKey] = set()
        self.ignored: list[str] = []
        self.extra: list[Finding] = []
        self.unmodelled_reason: str | None = None
        self._skip_findings: dict[tuple[str, str | None], list[ModuleKey]] = {}

    def _finding(self, name: str, message: str, key: str | None = None, hint: str | None = None) -> Finding:
        return consumer_finding(name, f"{self.consumer}: {message}", key=key, hint=hint)

    def unmodelled(self, reason: str) -> None:
        self.unmodelled_reason = reason

    def refuse(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.fatal.append(self._finding("consumer-refuses-file", message, key, hint))

    def load_nothing(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        self.fatal.append(self._finding("consumer-loads-nothing", message, key, hint))

    def skip(self, modules: Iterable[ModuleKey], reason: str, *, hint: str | None = None) -> None:
        for module in modules:
            if module not in self.skipped:
                self.skipped[module] = reason
                self._skip_findings.setdefault((reason, hint), []).append(module)

    def lose_dora(self, modules: Iterable[ModuleKey], *, hint: str | None = None) -> None:
        modules = sorted(set(modules) - set(self.skipped))
        if modules:
            self.lossy.update(modules)
            self.extra.append(self._finding(
                "consumer-drops-dora", f"{len(modules)} DoRA modules load as plain LoRA (magnitude dropped): "
                f"{_examples(map(str, modules))}", key=str(modules[0]), hint=hint))

    def ignore(self, keys: Iterable[str], reason: str, *, hint: str | None = None) -> None:
        keys = list(keys)
        if keys:
            self.ignored += keys
            self.extra.append(self._finding("consumer-ignores-keys", f"{len(keys)} keys {reason}: {_examples(keys)}",
                                            key=keys[0], hint=hint))

    def misfile(self, message: str, *, hint: str | None = None) -> None:
        self.extra.append(self._finding("consumer-misfiles-adapter", message, hint=hint))

    def note(self, name: str, message: str, *, hint: str | None = None) -> None:
        self.extra.append(self._finding(name, message, hint=hint))

    def verdict(self, consumer: Consumer, facts: AdapterFacts) -> Verdict:
        findings = list(self.fatal)
        if not self.fatal:
            for (reason, hint), modules in self._skip_findings.items():
                findings.append(self._finding("consumer-skips-modules", f"{len(modules)} modules not applied, "
                                              f"{reason}: {_examples(map(str, modules))}", str(modules[0]), hint))
        findings += self.extra
        loaded = Counter(m.component for m in facts.modules if m not in self.skipped) if not self.fatal else Counter()
        if not facts.base_known:
            findings.append(self._finding("consumer-base-unknown", "no base detected or given: module names and "
                                          "shapes were not checked against the model", hint="pass --base"))
        if self.fatal or not loaded:
            if not self.fatal:
                findings.insert(0, self._finding("consumer-loads-nothing", "no module of the file is applied"))
            outcome: Outcome = "fails"
        elif self.skipped or self.lossy or self.ignored:
            outcome = "loads_partly"
        else:
            outcome = "loads"
        counts = {c: loaded.get(c, 0) for c in facts.components}
        applied = frozenset(m for m in facts.modules if m not in self.skipped) if not self.fatal else frozenset()
        unused = set(facts.keys) - {k for m in applied for k in facts.modules[m].keys} | set(self.ignored)
        unused |= {k for m in self.lossy for k in facts.modules[m].keys if _is_dora_key(k)}
        return Verdict(consumer.name, consumer.version_range, outcome, tuple(findings), counts, applied,
                       frozenset(unused))


def _is_dora_key(key: str) -> bool:
    return "dora_scale" in key or "lora_magnitude_vector" in key


def _examples(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:_SHOWN])
    return shown + (f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


# --- the registry ----------------------------------------------------------------------------------------


@cache
def _discover() -> dict[str, Consumer]:
    import pkgutil  # here: verify imports this package for its codes, and most runs name no --target

    found: dict[str, Consumer] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in _NOT_CONSUMERS:
            continue
        consumer = getattr(importlib.import_module(f"{__name__}.{info.name}"), "CONSUMER", None)
        if isinstance(consumer, Consumer):
            found[consumer.name] = consumer
    return dict(sorted(found.items()))


class _Registry(Mapping[str, Consumer]):
    """``CONSUMERS``: name -> Consumer, discovered on first use (importing this package stays cheap)."""

    def __getitem__(self, name: str) -> Consumer:
        return _discover()[name]

    def __iter__(self):
        return iter(_discover())

    def __len__(self) -> int:
        return len(_discover())


CONSUMERS: Mapping[str, Consumer] = _Registry()


def known_targets() -> tuple[str, ...]:
    return tuple(CONSUMERS)


def parse_targets(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"diffusers,comfyui"`` (or a list of names) -> known consumer names, in order, once each; ``all`` means
    every one. An unknown name is a UsageError (exit 2) that lists the known ones."""
    from ...errors import UsageError

    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip().lower() for p in parts if p.strip()]
    if "all" in names:
        return known_targets()
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown or not names:
        raise UsageError(f"unknown target {', '.join(map(repr, unknown)) or repr(text)}",
                         hint=f"known targets: {', '.join(known_targets())}, all")
    return tuple(dict.fromkeys(names))


def consumer_verdicts(adapter_or_context, targets: Iterable[str] | str | None = None, *,
                      base: str | None = None) -> list[Verdict]:
    """The verdict of each target consumer (all when ``targets`` is None) on an adapter.

    ``adapter_or_context``: a verify ``Context``, an ``AdapterFile`` or a path. ``base`` (an architecture id or a
    model folder/checkpoint, as for ``verify``) is used when no Context is given.
    """
    from .facts import adapter_facts

    names = known_targets() if targets is None else parse_targets(targets)
    facts = adapter_facts(_context(adapter_or_context, base))
    return [CONSUMERS[name].verdict(facts) for name in names]


def target_verdicts(path, targets: Iterable[str], *, base: str | None = None) -> list[Verdict]:
    """``consumer_verdicts`` for ``lorareg verify --target``: a file that is no readable adapter (verify already
    reports why) gets a ``fails`` verdict from every target instead of an exception."""
    from ...errors import InvalidSafetensorsError, UnknownAdapterFormat

    try:
        return consumer_verdicts(path, targets, base=base)
    except (InvalidSafetensorsError, UnknownAdapterFormat) as exc:
        return [Verdict(CONSUMERS[name].name, CONSUMERS[name].version_range, "fails", (consumer_finding(
            "consumer-refuses-file", f"{name}: not a loadable adapter ({exc.one_line()})"),))
            for name in parse_targets(targets)]


def _context(thing, base: str | None):
    from ...adapter import AdapterFile
    from ..base import load_base
    from ..context import Context

    if isinstance(thing, Context):
        return thing
    adapter = thing if isinstance(thing, AdapterFile) else AdapterFile.open(thing)
    return Context.build(adapter, load_base(base) if base is not None else None)


def verdict_findings(verdicts: Iterable[Verdict]) -> list[Finding]:
    """Every verdict's findings, for a report; each message names its consumer."""
    return [f for v in verdicts for f in v.findings]


def verdict_exit_code(verdicts: Iterable[Verdict], *, strict: bool = False) -> int:
    """1 when a chosen consumer cannot fully load the adapter (or, under ``strict``, its rules do not model
    the adapter's family), else 0."""
    return 1 if any(v.gates(strict=strict) for v in verdicts) else 0


def option_targets(value: str | None) -> tuple[str, ...]:
    """``--target``'s value (None when not given) as consumer names: what ``lorareg verify`` gates on, with or
    without click (cli/fast_args.py)."""
    return parse_targets(value) if value else ()


def target_option(func):
    """The ``--target`` click option for ``lorareg verify`` (parsed to a tuple of consumer names)."""
    import click

    def parse(ctx, param, value):
        return option_targets(value)

    return click.option("--target", "targets", callback=parse, metavar="NAMES",
                        help="Also gate on these loaders (comma list: diffusers, peft, comfyui, invokeai, a1111, "
                             "forge, kohya, or all): exit 1 when one of them cannot fully load the file "
                             "(with --strict also when its rules do not model the file's family).")(func)


def loaders_table_markdown() -> str:
    """The "which tools load what" table, generated by running every consumer's rules on typical files."""
    from .table import loaders_table

    return loaders_table()
