"""The diffusers verdict's findings say why; the live oracle (tests/test_oracle_diffusers.py) checks what loads.

No recorded outcomes here: every outcome claim is checked by loading the file into the installed diffusers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from loraregistry.verify.consumers import consumer_verdicts
from tests.oracle_cases import (  # noqa: F401 - shared with other tests
    DERIVED,
    GOLDEN,
    GOLDENS,
    add_kohya_dora,
    arch_of,
    derive,
)
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

ADAPTER = "oracle"


def diffusers_load(path: Path, arch: str) -> dict:
    """Load ``path`` into a fresh tiny pipeline: the exception class it raised (or None), how many modules each
    component patched, and the pipeline (tests/test_fix.py compares weights with it)."""
    from diffusers.utils import logging as dlogging

    from tests.tiny_models import tiny_pipeline

    pipe = tiny_pipeline(arch)
    dlogging.get_logger("diffusers").setLevel(logging.ERROR)
    error = None
    try:
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER)
    except (ValueError, RuntimeError, KeyError) as exc:
        error = type(exc).__name__
    patched = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            patched[component] = sum(1 for _, m in model.named_modules()
                                     if hasattr(m, "lora_A") and ADAPTER in m.lora_A)
    return {"error": error, "patched": patched, "pipe": pipe}


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
