"""Architecture checks: what the weights fit, against what the metadata declares and --base requests."""

from __future__ import annotations

from ...architectures import ARCHITECTURES
from ..context import Context
from ..detect import Detection, Fit, measure_fit
from ..findings import Finding, finding

_HOW_DECIDED = {"declared": "the declared architecture", "prediction_type": "the declared prediction type",
                "resolution": "the declared resolution"}


def what_it_is(detection: Detection) -> str:
    """One phrase saying what the weights are for: 'this is an sd1 adapter (all 264 modules fit sd1)'."""
    best = detection.best
    if detection.architecture and best is not None:
        fit = detection.fit_of(detection.architecture) or best
        return f"this is an {detection.architecture} adapter (all {fit.total} modules fit {fit.fingerprint})"
    if detection.candidates and best is not None:
        return f"this is an adapter for {' or '.join(detection.candidates)} (all {best.total} modules fit each)"
    if best is not None:
        return (f"this looks like a partial {' / '.join(best.architectures)} adapter "
                f"({best.fitted} of {best.total} modules fit {best.fingerprint})")
    return "its modules fit no known base"


def _fit_phrase(fit: Fit | None, label: str, total: int) -> str:
    return f"only {fit.fitted if fit else 0} of {fit.total if fit else total} modules fit {label}"


def check_detected(ctx: Context) -> list[Finding]:
    detection = ctx.detection
    total = sum(1 for d in ctx.deltas.values() if d is not None)
    if total == 0 or ctx.base is not None:
        return []  # nothing to detect (factor findings say why), or --base decides (check_requested)
    best = detection.best
    if best is None:
        return [finding("architecture-undetected", f"got {total} modules, none of which fits a known base "
                        f"({', '.join(ARCHITECTURES)})", hint="pass --base PATH to check against your own base model")]
    findings: list[Finding] = []
    if not detection.candidates:
        findings.append(finding(
            "architecture-partial-fit", f"only {best.fitted} of {best.total} modules fit "
            f"{' / '.join(best.architectures)}, the best match; the other {best.total - best.fitted} fit no known base",
            hint="the modules that do not fit are listed as compatibility findings"))
    if len(detection.candidates) > 1:
        names = " and ".join(detection.candidates)
        if detection.architecture:
            how = _HOW_DECIDED.get(detection.decided_by or "", "metadata")
            message = f"{names} fit the shapes equally; chose {detection.architecture} by {how}"
        else:
            message = f"{names} fit the shapes equally and nothing declared tells them apart"
        findings.append(finding("ambiguous-variant", message,
                                hint="declare base.architecture (or modelspec.architecture / prediction type) so "
                                     "loaders and sites file it under the right base"))
    return findings


def check_declared(ctx: Context) -> list[Finding]:
    declared, source = ctx.declaration.architecture, ctx.declaration.source
    detection = ctx.detection
    if declared is None or detection.best is None:
        return []
    fit = detection.fit_of(declared)
    if fit is not None and fit.fits_all:
        return []
    total = detection.best.total
    return [finding("declared-architecture-mismatch",
                    f"declared {declared} ({source}), but {what_it_is(detection)}; {_fit_phrase(fit, declared, total)}",
                    key=source, hint="declare the base the weights fit with `lorareg meta set FILE --base <id>`, "
                                     "or check that this is the file you meant")]


def check_requested(ctx: Context) -> list[Finding]:
    base, detection = ctx.base, ctx.detection
    if base is None or not ctx.adapter.modules:
        return []
    if base.architecture is not None:
        fit = detection.fit_of(base.architecture)
    else:
        fit = measure_fit(ctx.adapter.modules, ctx.deltas, base.fingerprint)
    if fit is None or not fit.fits_all:
        total = detection.best.total if detection.best else len(ctx.adapter.modules)
        where = base.architecture or f"the base at {base.label}"
        return [finding("requested-architecture-mismatch",
                        f"{what_it_is(detection)}, not {where}: {_fit_phrase(fit, where, total)}",
                        hint="use the base the adapter was made for, or another adapter")]
    declared = ctx.declaration.architecture
    if (base.architecture and declared and declared != base.architecture and declared in detection.candidates
            and base.architecture in detection.candidates):
        want, got = ARCHITECTURES[base.architecture], ARCHITECTURES[declared]
        return [finding("requested-variant-differs",
                        f"got an adapter declared for {declared} ({got.prediction_type}, {got.resolution}px), "
                        f"expected {base.architecture} ({want.prediction_type}, {want.resolution}px): the shapes "
                        "are identical, so it loads, but it was trained for the other variant",
                        hint="use the declared base, or fix the declaration if it is wrong")]
    return []
