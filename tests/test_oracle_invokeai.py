"""Oracle: the InvokeAI verdict equals what InvokeAI 6.14.2's own LoRA code does, module for module.

tests/oracle_invokeai.py runs InvokeAI's conversion and patching functions on the tiny SD1/SD2/SDXL models; the
verdict's outcome, applied modules and unused keys must be exactly what happened, for every golden, derived
edit, ``fix --for a1111`` output (kohya keys, what InvokeAI reads) and known-bad container.
"""

from __future__ import annotations

import pytest

from loraregistry.verify.consumers import consumer_verdicts, target_verdicts
from tests.known_bad import KNOWN_BAD
from tests.oracle_cases import DERIVED, GOLDENS, arch_of, assert_agrees, fixed, path_of
from tests.oracle_invokeai import invokeai_load, invokeai_patch
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

CASES = sorted(n for n in GOLDENS + list(DERIVED) if arch_of(n) in ("sd1", "sd2", "sdxl"))


def verdict_of(path, arch, pipeline_dir):
    (verdict,) = consumer_verdicts(path, ["invokeai"], base=str(pipeline_dir(arch)))
    return verdict


@pytest.mark.parametrize("name", CASES)
def test_invokeai_verdict_equals_its_code(name, tmp_path, tiny_pipeline_dir):
    path = path_of(name, tmp_path)
    arch = arch_of(name)
    assert_agrees(verdict_of(path, arch, tiny_pipeline_dir), invokeai_load(path, arch))


@pytest.mark.parametrize("name", ["sd1_peft_prefixed", "sd1_diffusers_unet_te", "sd1_attn_procs", "sd1_lycoris_loha"])
def test_fixed_for_kohya_keys_agrees_too(name, tmp_path, tiny_pipeline_dir):
    arch = arch_of(name)
    out = fixed(name, "a1111", tmp_path, tiny_pipeline_dir(arch)) or path_of(name, tmp_path)
    assert_agrees(verdict_of(out, arch, tiny_pipeline_dir), invokeai_load(out, arch))


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_known_bad_files(bad, tmp_path):
    """InvokeAI reads the file with safetensors: what that refuses fails; what it reads has no module."""
    from safetensors.torch import load_file

    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    (v,) = target_verdicts(path, ["invokeai"])
    assert v.outcome == "fails"
    try:
        load_file(str(path))
    except Exception:  # noqa: BLE001 - any refusal ends the load
        return
    assert not invokeai_patch(path, "sd1")[1]
