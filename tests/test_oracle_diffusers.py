"""Oracle: the diffusers and peft verdicts equal what the installed diffusers / peft do, module for module.

Every case of tests/oracle_cases.py (goldens, derived edits, ``fix --for diffusers`` outputs), the SD3 / FLUX.1
goldens (tests/golden/mmdit: written by diffusers' own ``save_lora_weights`` from peft-injected tiny transformers)
and files derived from those (converted to kohya keys, stripped of their prefix) is loaded for real; the verdict's
outcome, applied modules and unused keys must be exactly what happened. No recorded outcomes: the load runs every
time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraregistry.verify.consumers import consumer_verdicts
from tests.oracle_cases import (
    DERIVED,
    GOLDENS,
    MMDIT_GOLDENS,
    arch_of,
    assert_agrees,
    modules_of,
    path_of,
)
from tests.oracle_diffusers import diffusers_load, peft_load, pipeline_dir

pytestmark = pytest.mark.slow

# Derived from the SD3/FLUX goldens (tests/golden/mmdit, written by diffusers): converted to kohya keys by
# lorareg, or stripped of their prefix. No kohya Flux case: diffusers' _convert_kohya_flux_lora_to_diffusers splits
# fused qkv/linear1 by FLUX.1-dev's hard-coded widths (3072, 12288) and asserts on any other model, so a tiny Flux
# cannot stand in for it.
MMDIT_DERIVED = ("sd3_kohya", "flux_peft_bare")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oracle-diffusers")


def mmdit_file(name: str, root: Path) -> Path:
    """SD3/Flux files derived from the diffusers-written goldens by lorareg convert / a prefix strip."""
    from safetensors.numpy import load_file, save_file

    from loraregistry.ops.convert import convert

    family = arch_of(name)
    path = root / f"{name}.safetensors"
    if path.exists():
        return path
    if name.endswith("_kohya"):
        convert(path_of(f"{family}_diffusers", root), path, to="kohya", base=str(pipeline_dir(family, str(root))),
                dialect={"transformer_names": family})
        return path
    source = path_of(f"{family}_diffusers_transformer_only", root)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(source)).items()}
    save_file(tensors, str(path))
    return path


def case_path(name: str, tmp_path: Path, root: Path) -> Path:
    return mmdit_file(name, root) if name in MMDIT_DERIVED else path_of(name, tmp_path)


def verdict_of(path: Path, arch: str, root: Path, consumer: str = "diffusers"):
    (verdict,) = consumer_verdicts(path, [consumer], base=str(pipeline_dir(arch, str(root))))
    return verdict


CASES = sorted(GOLDENS + list(DERIVED) + MMDIT_GOLDENS) + list(MMDIT_DERIVED)


@pytest.mark.parametrize("name", CASES)
def test_diffusers_verdict_equals_a_real_load(name, tmp_path, root):
    path = case_path(name, tmp_path, root)
    arch = arch_of(name)
    assert_agrees(verdict_of(path, arch, root), diffusers_load(path, arch))


@pytest.mark.parametrize("name", sorted(GOLDENS + MMDIT_GOLDENS) + list(MMDIT_DERIVED))
def test_fix_for_diffusers_output_loads(name, tmp_path, root):
    """``fix --for diffusers`` leaves alone what diffusers loads, and writes what it loads in full otherwise."""
    from loraregistry.fix import FixLosesInformation, fix

    arch = arch_of(name)
    source = case_path(name, tmp_path, root)
    out = tmp_path / f"{name}.fixed.safetensors"
    try:
        result = fix(source, out, targets="diffusers", base=str(pipeline_dir(arch, str(root))))
    except FixLosesInformation as exc:  # DoRA without the base weights: refused, nothing written
        assert "DoRA" in str(exc) or "max-error" in str(exc)
        assert not out.exists()
        return
    if result.output is None:
        assert diffusers_load(source, arch).outcome == "loads"
        return
    real = diffusers_load(out, arch)
    assert_agrees(verdict_of(out, arch, root), real)
    assert real.outcome == "loads"


@pytest.mark.parametrize("name", CASES)
def test_peft_verdict_equals_a_real_load(name, tmp_path, root):
    """peft wraps one model: single-component files load into that component; for files with several
    components, each component's share is loaded into its own model and the union compared."""
    from tests.oracle_cases import RealLoad

    path = case_path(name, tmp_path, root)
    arch = arch_of(name)
    components = sorted({m.component for m in modules_of(path).values()})
    loads = [peft_load(path, arch, c) for c in components]
    applied = frozenset().union(*(r.applied for r in loads))
    unused = frozenset.intersection(*(r.unused_keys for r in loads))
    refused = next((r.refused for r in loads if r.refused), None)
    real = RealLoad(refused, applied, unused, loads[0].modules)
    verdict = verdict_of(path, arch, root, "peft")
    assert verdict.outcome == real.outcome, (verdict.outcome, real, [f.message for f in verdict.findings])
    assert verdict.applied == real.applied


@pytest.mark.parametrize("bad", __import__("tests.known_bad", fromlist=["KNOWN_BAD"]).KNOWN_BAD, ids=lambda b: b.name)
def test_known_bad_files(bad, tmp_path):
    """diffusers reads the file with safetensors: what that refuses fails the load; what it reads (the last of
    duplicate metadata keys wins, and so on) patches no module of the tiny SD1 pipeline. Either way: fails."""
    from loraregistry.verify.consumers import target_verdicts
    from tests.oracle_diffusers import ADAPTER, pipeline

    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    verdicts = target_verdicts(path, ["diffusers", "peft"])
    assert [v.outcome for v in verdicts] == ["fails", "fails"]
    pipe = pipeline("sd1")
    try:
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER)
    except Exception:  # noqa: BLE001 - any refusal ends the load: safetensors, diffusers or peft raised
        return
    assert not any(hasattr(m, "lora_A") and ADAPTER in m.lora_A
                   for c in ("unet", "text_encoder") for m in getattr(pipe, c).modules())
