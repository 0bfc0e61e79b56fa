"""The goldens written by real tools: format, network type and, against the tiny base they were made for,
verify's warnings that say diffusers will not load all of a file exactly when the installed diffusers, loading
it now into a fresh tiny pipeline (tests/oracle_diffusers.py), does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraregistry.verify import verify
from tests.oracle_cases import arch_of
from tests.oracle_diffusers import diffusers_load
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDENS = sorted(p.stem for p in GOLDEN.glob("*.safetensors"))
# Warnings that say why a loader other than diffusers is needed; everything else must be clean.
EXPECTED_WARNINGS = {
    "sd1_peft_dora": {"LRG107"},
    "sd1_peft_prefixed": {"LRG107"},
    "sd1_lycoris_loha": {"LRG108"},  # diffusers refuses LoHa/LoKr
    "sd1_lycoris_lokr": {"LRG108", "LRG509"},  # and LoKr stores alpha = dim where both factors are full
    "sd2_kohya_conv_proj": {"LRG308"},  # 1x1-conv factors on SD2's Linear projections
}


def _facts(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_format_and_network(name):
    facts = _facts(name)
    report = verify(GOLDEN / f"{name}.safetensors")
    assert (report.format, report.network_type) == (facts["format"], facts["network_type"])
    # tiny shapes fit no real base: the only error is that no architecture was detected
    assert [f.code for f in report.findings if f.severity == "error"] == ["LRG200"]


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDENS)
def test_golden_warnings_against_its_tiny_base_agree_with_a_live_diffusers_load(name, tiny_pipeline_dir):  # noqa: F811
    arch = arch_of(name)
    path = GOLDEN / f"{name}.safetensors"
    report = verify(path, base=str(tiny_pipeline_dir(arch)))
    assert report.ok and report.fitted == report.modules
    warnings = {f.code for f in report.findings if f.severity == "warning"}
    assert warnings == EXPECTED_WARNINGS.get(name, set())
    real = diffusers_load(path, arch)
    assert (real.outcome == "loads") == (not warnings - {"LRG509"}), (real.outcome, real.refused, warnings)
