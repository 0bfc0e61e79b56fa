"""Verify results for machines: the JSON document (with its schema), JUnit XML, GitHub annotations.

The human table lives in the CLI; these are the formats CI systems read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal
from xml.etree import ElementTree as ET

from pydantic import BaseModel, ConfigDict, Field

from .report import REPORT_SCHEMA_VERSION, Report

RUN_SCHEMA_VERSION = "1"


class FindingModel(BaseModel):
    """One finding: a stable code, its severity, and what to do."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^LRG\d{3}$", description="Stable code; see docs/verify-codes.md.")
    name: str = Field(description="Short name of the code, e.g. module-not-in-base.")
    severity: Literal["error", "warning", "info"]
    family: Literal["integrity", "format", "architecture", "compatibility", "health", "metadata", "consumer"]
    message: str = Field(description="What is wrong, with the numbers: got ..., expected ....")
    key: str | None = Field(description="The tensor key or module the finding is about, when there is one.")
    hint: str | None = Field(description="What to do about it.")


class FileReportModel(BaseModel):
    """The report for one file (``Report.to_dict()``)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal["1"] = REPORT_SCHEMA_VERSION
    path: str
    ok: bool = Field(description="No error finding (warnings and infos allowed).")
    summary: dict[str, int] = Field(description="Findings per severity: error, warning, info.")
    format: str | None = Field(description="Key format: kohya, peft, diffusers, attn_procs, mixed; null if unread.")
    network_type: str | None = Field(description="lora, locon, loha, lokr, dora, full.")
    detected_architecture: str | None = Field(description="Architecture id the shapes fit; null if none or ambiguous.")
    candidates: list[str] = Field(description="Every architecture id whose shapes hold all modules.")
    declared_architecture: str | None = Field(description="What the metadata declares.")
    declared_source: str | None = Field(description="The header key the declaration came from.")
    requested_base: str | None = Field(description="--base as resolved: an id, or a model folder/checkpoint path.")
    modules: int = Field(description="Patched modules.")
    components: dict[str, int] = Field(description="Modules per component.")
    fitted: int | None = Field(description="Modules that fit the base checked against.")
    tensors_checked: bool = Field(description="Whether tensor values were scanned.")
    findings: list[FindingModel]


class VerifyRunModel(BaseModel):
    """What ``lorareg verify --json`` prints: one report per file and a summary."""

    model_config = ConfigDict(extra="forbid", title="lorareg verify output")
    schema_version: Literal["1"] = RUN_SCHEMA_VERSION
    strict: bool = Field(description="Whether warnings fail (--strict).")
    ok: bool = Field(description="True when the run exits 0.")
    summary: dict[str, int] = Field(
        description="files, passed, failed, and findings per severity (error, warning, info) over all files.")
    files: list[FileReportModel]


def failed(report: Report, strict: bool) -> bool:
    return report.exit_code(strict) != 0


def run_document(reports: Sequence[Report], *, strict: bool) -> dict[str, Any]:
    """The ``--json`` document (validated against ``VerifyRunModel`` in the tests)."""
    totals = {"error": 0, "warning": 0, "info": 0}
    for report in reports:
        for severity, count in report.summary.items():
            totals[severity] += count
    n_failed = sum(failed(r, strict) for r in reports)
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "strict": strict,
        "ok": n_failed == 0,
        "summary": {"files": len(reports), "passed": len(reports) - n_failed, "failed": n_failed, **totals},
        "files": [r.to_dict() for r in reports],
    }


def junit_xml(reports: Sequence[Report], *, strict: bool) -> str:
    """One <testsuite>, one <testcase> per file; errors (and warnings under strict) become <failure>."""
    suite = ET.Element("testsuite", name="lorareg verify", tests=str(len(reports)),
                       failures=str(sum(failed(r, strict) for r in reports)), errors="0")
    for report in reports:
        case = ET.SubElement(suite, "testcase", classname="lorareg.verify", name=report.path)
        gating = [f for f in report.findings if f.severity == "error" or (strict and f.severity == "warning")]
        if gating:
            failure = ET.SubElement(case, "failure", type=gating[0].code,
                                    message=f"{len(gating)} finding(s): {gating[0].code} {gating[0].message}")
            failure.text = "\n".join(_line(f) for f in gating)
        others = [f for f in report.findings if f not in gating]
        if others:
            ET.SubElement(case, "system-out").text = "\n".join(_line(f) for f in others)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _line(f) -> str:
    where = f" [{f.key}]" if f.key else ""
    hint = f" (hint: {f.hint})" if f.hint else ""
    return f"{f.severity} {f.code}{where}: {f.message}{hint}"


def _escape(text: str, *, property_value: bool = False) -> str:
    # GitHub workflow command escaping: % \r \n always; : and , inside property values.
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _repo_relative(path: str) -> str:
    """Annotations attach to files by their path relative to the checkout (the working directory)."""
    return os.path.relpath(path) if os.path.isabs(path) else path


def github_annotations(reports: Sequence[Report], *, strict: bool) -> str:
    """GitHub Actions workflow commands: one ``::error``/``::warning``/``::notice`` line per finding."""
    level = {"error": "error", "warning": "warning", "info": "notice"}
    lines = []
    for report in reports:
        for f in report.findings:
            kind = "error" if (strict and f.severity == "warning") else level[f.severity]
            title = f"{f.code} {f.name}"
            message = f.message + (f" [{f.key}]" if f.key else "") + (f" Hint: {f.hint}" if f.hint else "")
            where = _escape(_repo_relative(report.path), property_value=True)
            lines.append(f"::{kind} file={where},title={_escape(title, property_value=True)}::{_escape(message)}")
    return "\n".join(lines) + ("\n" if lines else "")


def json_text(reports: Sequence[Report], *, strict: bool) -> str:
    return json.dumps(run_document(reports, strict=strict), indent=2, sort_keys=True)
