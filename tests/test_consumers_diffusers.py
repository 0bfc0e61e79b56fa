"""The diffusers verdict's findings say why; the live oracle (tests/test_oracle_diffusers.py) checks what loads.

No recorded outcomes here: every outcome claim is checked by loading the file into the installed diffusers.
"""

from __future__ import annotations

from loraregistry.verify.consumers import consumer_verdicts
from tests.oracle_cases import DERIVED, GOLDEN, GOLDENS, arch_of, derive  # noqa: F401 - shared with other tests
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture


def verdict_of(path, arch: str, pipeline_dir):
    (verdict,) = consumer_verdicts(path, ["diffusers"], base=str(pipeline_dir(arch)))
    return verdict


def test_the_findings_say_why(tiny_pipeline_dir):
    verdict = verdict_of(GOLDEN / "sd2_kohya_conv_proj.safetensors", "sd2", tiny_pipeline_dir)
    assert [f.code for f in verdict.findings] == ["LRG600"]
    assert "size mismatch" in verdict.findings[0].message and "conv-shaped-linear" in verdict.findings[0].message
    assert "lorareg fix --for diffusers" in verdict.findings[0].hint
    loha = verdict_of(GOLDEN / "sd1_lycoris_loha.safetensors", "sd1", tiny_pipeline_dir)
    assert "loha" in loha.findings[0].message


def test_without_a_base_the_verdict_says_module_existence_was_not_checked():
    (verdict,) = consumer_verdicts(GOLDEN / "sd1_kohya.safetensors", ["diffusers"])
    assert verdict.outcome == "loads"
    assert [f.code for f in verdict.findings] == ["LRG606"]
