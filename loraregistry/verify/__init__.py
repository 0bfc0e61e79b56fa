"""``verify``: prove that an adapter loads into its base, without torch.

``verify(path)`` opens the file once, runs every check and returns a ``Report`` of findings, each with a
stable ``LRG###`` code (table: ``findings.CODES``, docs: ``docs/verify-codes.md``). A bad adapter file
never raises: even bytes that are no safetensors container give a report with an integrity finding.
"""

from __future__ import annotations

import os
import sys
import types
from collections import Counter
from typing import TYPE_CHECKING

from ..adapter import AdapterFile
from ..errors import InvalidSafetensorsError, UnknownAdapterFormat
from ..safetensors_io import SafetensorsHeader, read_header
from .checks import HEADER_CHECKS, TENSOR_CHECKS, unreadable_keys
from .context import Context
from .findings import CODES, Finding, codes_markdown
from .integrity import container_finding, size_finding
from .report import REPORT_SCHEMA_VERSION, Report

if TYPE_CHECKING:
    from .base import Base

__all__ = ["CODES", "REPORT_SCHEMA_VERSION", "Base", "Finding", "Report", "codes_markdown", "load_base", "verify",
           "verify_header"]


def load_base(spec: str) -> Base:
    """``--base``: see ``verify.base.load_base`` (folder and checkpoint reading load only when a base is named)."""
    from .base import load_base as load

    return load(spec)


def __getattr__(name: str):
    if name == "Base":
        from .base import Base

        return Base
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def verify(path: str | os.PathLike[str], *, base: str | None = None, tensors: bool = True) -> Report:
    """Verify one adapter file and return its report.

    ``base``: an architecture id or alias (``sd1``, ``sdxl-base``, ``SDXL 1.0``, ...) or the path of a
    diffusers model folder / single-file checkpoint to check every module against; by default modules are
    checked against the architecture their shapes fit. ``tensors=False`` skips the tensor scan (NaN/Inf,
    untrained and extreme factors, declared tensor hashes), so only the header and alpha scalars are read.

    Raises ``LoraregError`` only for usage and I/O problems: an unknown ``base`` (UnknownArchitecture, listing
    the known ids), a ``base`` path that is no model (UsageError), or a ``path`` that does not exist or cannot
    be read (FileAccessError). The file is never modified.
    """
    target: Base | None = load_base(base) if base is not None else None
    report = Report(path=str(path), requested_base=target.label if target else None)
    try:
        adapter = AdapterFile.open(path)
    except InvalidSafetensorsError as exc:
        report.findings.append(container_finding(exc))
        return report
    except UnknownAdapterFormat:
        report.findings += unreadable_keys(read_header(path))
        return report
    return _run_checks(report, adapter, target, tensors)


def verify_header(header: SafetensorsHeader, *, base: str | None = None, source: str,
                  file_size: int | None = None) -> Report:
    """Verify an adapter from its parsed header alone (a remote file read up to 8 + N bytes).

    Runs every header check (integrity of what the header says, format, architecture, compatibility,
    metadata); the tensor scan needs the data and never runs, so ``tensors_checked`` is False. Alpha values
    live in the data too: a stored alpha counts as unknown, never as "no alpha" (alpha = rank). ``source``
    names the file in the report (a URL, an hf:// URI); ``file_size``, when known, must be the size the
    header describes. ``base`` is as for ``verify``.
    """
    target: Base | None = load_base(base) if base is not None else None
    report = Report(path=source, requested_base=target.label if target else None)
    if file_size is not None and file_size != header.total_size:
        report.findings.append(size_finding(header, file_size, source))
        return report
    try:
        adapter = AdapterFile.from_header(header, path=source, file_size=file_size)
    except UnknownAdapterFormat:
        report.findings += unreadable_keys(header)
        return report
    return _run_checks(report, adapter, target, tensors=False)


def _run_checks(report: Report, adapter: AdapterFile, target: Base | None, tensors: bool) -> Report:
    ctx = Context.build(adapter, target)
    for check in HEADER_CHECKS + (TENSOR_CHECKS if tensors else ()):
        report.findings += check(ctx)
    _describe(report, ctx, tensors)
    return report


def _describe(report: Report, ctx: Context, tensors: bool) -> None:
    adapter, detection = ctx.adapter, ctx.detection
    report.format = adapter.format
    report.network_type = adapter.network_type
    report.detected_architecture = detection.architecture
    report.candidates = detection.candidates
    report.declared_architecture = ctx.declaration.architecture
    report.declared_source = ctx.declaration.source
    report.modules = len(adapter.modules)
    report.components = dict(sorted(Counter(m.component for m in adapter.modules).items()))
    if ctx.base is None and detection.best is not None:
        report.fitted = detection.best.fitted  # the target is the best fit: detection measured it already
    elif ctx.target is not None:
        from .detect import measure_fit

        report.fitted = measure_fit(adapter.modules, ctx.deltas, ctx.target).fitted
    report.tensors_checked = tensors

class _CallableModule(types.ModuleType):
    """``loraregistry.verify(path)`` must call ``verify`` even once this subpackage is imported, when Python
    binds the attribute ``loraregistry.verify`` to the module itself: so the module is callable too."""

    def __call__(self, path: str | os.PathLike[str], *, base: str | None = None, tensors: bool = True) -> Report:
        return verify(path, base=base, tensors=tensors)


sys.modules[__name__].__class__ = _CallableModule
