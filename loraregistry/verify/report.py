"""``Report``: everything verify found in one file, and the verdict."""

from __future__ import annotations

from typing import Any

from ..record import Record
from .findings import SEVERITIES, Finding

REPORT_SCHEMA_VERSION = "1"


class Report(Record):
    """The findings for one file and what verify learned on the way.

    Fields (also the keys of ``to_dict()``):

    * ``path``: the file as given.
    * ``findings``: every finding, in check order (integrity, format, architecture, compatibility, metadata,
      health); verify never stops at the first.
    * ``format``: the key format (``kohya``, ``peft``, ``diffusers``, ``attn_procs``, ``mixed``), None when the
      file could not be read as an adapter.
    * ``network_type``: ``lora``, ``locon``, ``loha``, ``lokr``, ``dora``, ``full`` (None as above).
    * ``detected_architecture``: the architecture id the weights are for, from shapes (and declared facts where
      shapes tie); None when none fits or several candidates remain.
    * ``candidates``: every architecture id whose module shapes hold all of the adapter's modules.
    * ``declared_architecture`` / ``declared_source``: what the metadata declares, and the header key it came
      from (the lorareg record first, then modelspec, kohya, diffusers).
    * ``requested_base``: ``--base`` as resolved: an architecture id, or the path of a model folder/checkpoint.
    * ``modules``: number of patched modules; ``components``: modules per component.
    * ``fitted``: modules that fit the base they were checked against (``requested_base``, else the best
      match); None when there was none.
    * ``tensors_checked``: whether tensor values were scanned (False with ``tensors=False``).
    """

    path: str
    findings: list[Finding]
    format: str | None
    network_type: str | None
    detected_architecture: str | None
    candidates: tuple[str, ...]
    declared_architecture: str | None
    declared_source: str | None
    requested_base: str | None
    modules: int
    components: dict[str, int]
    fitted: int | None
    tensors_checked: bool

    def __init__(self, path: str, findings: list[Finding] | None = None, format: str | None = None,
                 network_type: str | None = None, detected_architecture: str | None = None,
                 candidates: tuple[str, ...] = (), declared_architecture: str | None = None,
                 declared_source: str | None = None, requested_base: str | None = None, modules: int = 0,
                 components: dict[str, int] | None = None, fitted: int | None = None,
                 tensors_checked: bool = False) -> None:
        self.path = path
        self.findings = [] if findings is None else findings
        self.format = format
        self.network_type = network_type
        self.detected_architecture = detected_architecture
        self.candidates = candidates
        self.declared_architecture = declared_architecture
        self.declared_source = declared_source
        self.requested_base = requested_base
        self.modules = modules
        self.components = {} if components is None else components
        self.fitted = fitted
        self.tensors_checked = tensors_checked

    @property
    def summary(self) -> dict[str, int]:
        """Number of findings per severity (every severity present, zeros included)."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for f in self.findings:
            counts[f.severity] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings and infos allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    def exit_code(self, strict: bool = False) -> int:
        """0 clean, 1 on errors (and on warnings when ``strict``). Usage and I/O problems (2) raise instead."""
        if not self.ok or (strict and any(f.severity == "warning" for f in self.findings)):
            return 1
        return 0

    def codes(self) -> list[str]:
        """The distinct codes found, sorted."""
        return sorted({f.code for f in self.findings})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "path": self.path,
            "ok": self.ok,
            "summary": self.summary,
            "format": self.format,
            "network_type": self.network_type,
            "detected_architecture": self.detected_architecture,
            "candidates": list(self.candidates),
            "declared_architecture": self.declared_architecture,
            "declared_source": self.declared_source,
            "requested_base": self.requested_base,
            "modules": self.modules,
            "components": dict(self.components),
            "fitted": self.fitted,
            "tensors_checked": self.tensors_checked,
            "findings": [f.to_dict() for f in self.findings],
        }
