"""The goldens written by real tools: format, network type and, against the tiny base they were made for, a
verdict that agrees with what diffusers did when it loaded them (recorded in each golden's JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraregistry.verify import verify
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDENS = sorted(p.stem for p in GOLDEN.glob("*.safetensors"))
TINY_ARCH = {"sd2-512": "sd2", "sdxl-base": "sdxl"}
# Warnings that say why a loader other than diffusers is needed; everything else must be clean.
EXPECTED_WARNINGS = {
    "sd1_attn_procs": {"LRG107"},  # bare keys: diffusers loads nothing
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


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_verdict_against_its_tiny_base_agrees_with_diffusers(name, tiny_pipeline_dir):  # noqa: F811
    facts = _facts(name)
    base = tiny_pipeline_dir(TINY_ARCH.get(facts["arch"], facts["arch"]))
    report = verify(GOLDEN / f"{name}.safetensors", base=str(base))
    assert report.ok and report.fitted == report.modules
    warnings = {f.code for f in report.findings if f.severity == "warning"}
    assert warnings == EXPECTED_WARNINGS.get(name, set())
    loaded = facts["diffusers_load"]
    diffusers_loaded_all = loaded["error"] is None and sum(loaded["modules_patched"].values()) == report.modules
    assert diffusers_loaded_all == (not warnings - {"LRG509"})
