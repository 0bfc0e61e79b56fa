"""Compatibility checks: each module's factors on their own, then against the base's module."""

from __future__ import annotations

from collections import defaultdict

from ...architectures import ModuleSpec
from ...canonical import ModuleKey
from ..context import Context
from ..findings import Finding, finding
from ..shapes import Problem, fit_problems

_REPORTED_ELSEWHERE = frozenset({"unchecked-algorithm", "non-float-factor"})


def _where(ctx: Context, module: ModuleKey, problem: Problem) -> str:
    """The tensor key to blame when one tensor is, else the module as component:path."""
    keys = ctx.adapter.modules[module].keys
    return keys[problem.role] if problem.role in keys else str(module)


def check_factors(ctx: Context) -> list[Finding]:
    """Base-independent: factors present, ranks agree, LyCORIS factors compose, alpha is a sane scalar."""
    return [finding(p.name, p.message, key=_where(ctx, module, p), hint=p.hint)
            for module, problems in ctx.factor_problems.items() for p in problems
            if p.name not in _REPORTED_ELSEWHERE]


def check_dtypes(ctx: Context) -> list[Finding]:
    return [finding(p.name, p.message, key=_where(ctx, module, p), hint=p.hint)
            for module, problems in ctx.factor_problems.items() for p in problems if p.name == "non-float-factor"]


def check_against_base(ctx: Context) -> list[Finding]:
    """Each module exists in the target base, and its delta has the base module's shape and kernel."""
    target = ctx.target
    if target is None:
        return []
    label = ctx.target_label
    findings: list[Finding] = []
    outside: dict[str, list[ModuleKey]] = defaultdict(list)
    components = set(target.components)  # computed on each access: hoisted
    # fit_problems reads the module's algo, its delta and the spec: adapters repeat a few of each. Specs are keyed by
    # identity (a base shares one per shape; hashing one is a Python call), each kept beside its answer so that no
    # other spec can take its id while this dict lives (a fused path's spec is a new object each lookup).
    fitted: dict[tuple, tuple[ModuleSpec, list[Problem]]] = {}
    tables = {component: target.table(component) for component in components}
    deltas = ctx.deltas
    for module, info in ctx.adapter.modules.items():
        table = tables.get(module.component)
        if table is None:
            outside[module.component].append(module)
            continue
        # The exact path in the table (a dict lookup, nearly every module), else lookup's other spellings.
        spec = table.get(module.path)
        if spec is None:
            spec = target.lookup(module.component, module.path)
        if spec is None:
            findings.append(finding("module-not-in-base", f"got module '{module}', which {label} does not have",
                                    key=str(module), hint="the adapter was made for another base model, or its "
                                                          "key names are misspelled"))
            continue
        delta = deltas.get(module)
        if delta is not None:
            kept = fitted.get(signature := (info.algo, delta, id(spec)))
            if kept is None:
                kept = fitted[signature] = (spec, fit_problems(info, delta, spec))
            if kept[1]:
                findings += [finding(p.name, p.message, key=str(module), hint=p.hint) for p in kept[1]]
    for component, modules in sorted(outside.items()):
        findings.append(finding("component-not-in-base",
                                f"got {len(modules)} modules for {component}, expected only "
                                f"{', '.join(sorted(components))} (the components of {label})",
                                key=str(modules[0]), hint="the adapter was made for another base model"))
    return findings
