"""Verify results for machines: the JSON document (with its schema), JUnit XML, GitHub annotations.

The human table lives in the CLI; these are the formats CI systems read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .report import Report

RUN_SCHEMA_VERSION = "1"


def __getattr__(name: str):
    """The pydantic models of the JSON document live in ``output_models`` (pydantic is slow to import and
    only the schema export and the tests need them); ``outputs.VerifyRunModel`` keeps working."""
    if name in ("FindingModel", "FileReportModel", "VerifyRunModel"):
        from . import output_models

        return getattr(output_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from xml.etree import ElementTree as ET  # only --junit writes XML

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
