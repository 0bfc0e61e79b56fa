"""The code table: stable, consistent, documented, and every code reachable from a check."""

from __future__ import annotations

import re
from pathlib import Path

from loraregistry.verify.findings import BY_NAME, CODES, FAMILIES, SEVERITIES, codes_markdown, finding

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "verify-codes.md"
VERIFY_SRC = ROOT / "loraregistry" / "verify"


def test_codes_are_well_formed_and_unique():
    assert len(BY_NAME) == len(CODES)
    for code, info in CODES.items():
        assert re.fullmatch(r"LRG\d{3}", code) and info.code == code
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", info.name)
        assert info.severity in SEVERITIES
        assert info.family in FAMILIES
        assert info.title and info.description.endswith(".")


def test_families_own_their_hundreds():
    for info in CODES.values():
        assert list(FAMILIES).index(info.family) == int(info.code[3:]) // 100


def test_every_code_is_raised_somewhere_in_verify():
    source = "\n".join(p.read_text() for p in VERIFY_SRC.rglob("*.py") if p.name != "findings.py")
    unused = [info.name for info in CODES.values() if f'"{info.name}"' not in source]
    assert unused == []


def test_finding_takes_family_and_severity_from_the_table():
    f = finding("module-not-in-base", "got 'x', expected 'y'", key="unet:x", hint="do z")
    assert (f.code, f.family, f.severity) == ("LRG300", "compatibility", "error")
    assert finding("LRG300", "m").name == "module-not-in-base"
    assert f.to_dict()["key"] == "unet:x"


def test_committed_doc_is_current():
    regenerate = "python -c 'from loraregistry.verify import codes_markdown as m; print(m(), end=\"\")' > " + str(DOC)
    assert DOC.read_text() == codes_markdown(), f"docs/verify-codes.md is stale; regenerate it: {regenerate}"
