"""Oracle tests: the diffusers verdict equals what the installed diffusers really does.

Every golden, and files derived from them (DoRA, foreign keys, mixed formats, reshaped projections, Tucker
LoCon, prefixed peft / attention processors), is loaded with ``pipe.load_lora_weights`` into a fresh tiny
pipeline of its architecture; the verdict's outcome and per-component module counts must match. The goldens'
own records (``diffusers_load``, diffusers 0.42) are checked against the verdict without torch as well.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from loraregistry.verify.consumers import consumer_verdicts
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

GOLDEN = Path(__file__).parent / "golden"
GOLDENS = sorted(p.stem for p in GOLDEN.glob("*.safetensors"))
ADAPTER = "oracle"


def arch_of(name: str) -> str:
    return "sdxl" if name.startswith("sdxl") else "sd2" if name.startswith("sd2") else "sd1"


def read(name: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = GOLDEN / f"{name}.safetensors"
    with safe_open(str(path), "np") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def derive(folder: Path, name: str, source: str, edit) -> Path:
    from safetensors.numpy import save_file

    tensors, metadata = read(source)
    edit(tensors)
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


# --- edits: each names the defect it makes --------------------------------------------------------------------


def add_kohya_dora(t):
    for key in [k for k in t if k.endswith(".lora_up.weight")]:
        t[key.replace("lora_up.weight", "dora_scale")] = np.ones((t[key].shape[0], 1), t[key].dtype)


def add_bundled_embedding(t):
    t["bundle_emb.style.string_to_param.*"] = np.zeros((1, 32), np.float16)


def add_foreign_module(t):
    t["lora_unet_nonexistent_block.lora_down.weight"] = np.zeros((4, 8), np.float16)
    t["lora_unet_nonexistent_block.lora_up.weight"] = np.zeros((8, 4), np.float16)


def add_foreign_suffix(t):
    t["lora_unet_down_blocks_0_attentions_0_proj_in.weird"] = np.zeros((1,), np.float16)


def mix_in_peft_unet(t):
    peft, _ = read("sd1_diffusers_unet_te")
    for key in [k for k in t if k.startswith("lora_unet")]:
        del t[key]
    t.update({k: v for k, v in peft.items() if k.startswith("unet.")})


def unet_prefix_for_peft(t):
    for key in list(t):
        t["unet." + key.removeprefix("base_model.model.")] = t.pop(key)


def unet_prefix(t):
    for key in list(t):
        t["unet." + key] = t.pop(key)


def flatten_projections(t):
    for key in list(t):
        if ("proj_in" in key or "proj_out" in key) and t[key].ndim == 4:
            t[key] = t[key].reshape(t[key].shape[0], t[key].shape[1])


def tucker_conv_in(t):
    key = "lora_unet_conv_in.lora_down.weight"
    r, cin = t[key].shape[:2]
    t[key] = np.zeros((r, cin, 1, 1), t[key].dtype)
    t["lora_unet_conv_in.lora_mid.weight"] = np.zeros((r, r, 3, 3), t[key].dtype)


DERIVED = {
    "sd1_kohya_dora": ("sd1_kohya", add_kohya_dora),
    "sd1_kohya_bundled_embedding": ("sd1_kohya", add_bundled_embedding),
    "sd1_kohya_foreign_module": ("sd1_kohya", add_foreign_module),
    "sd1_kohya_foreign_suffix": ("sd1_kohya", add_foreign_suffix),
    "sd1_mixed_kohya_te_peft_unet": ("sd1_kohya", mix_in_peft_unet),
    "sd1_peft_dora_unet_prefix": ("sd1_peft_dora", unet_prefix_for_peft),
    "sd1_attn_procs_unet_prefix": ("sd1_attn_procs", unet_prefix),
    "sd2_kohya_flat_projections": ("sd2_kohya_conv_proj", flatten_projections),
    "sd1_kohya_flat_projections": ("sd1_kohya", flatten_projections),
    "sd1_locon_tucker_conv_in": ("sd1_lycoris_locon", tucker_conv_in),
}


# --- the real loader ------------------------------------------------------------------------------------------


def diffusers_load(path: Path, arch: str) -> dict:
    """Load ``path`` into a fresh tiny pipeline; what raised and how many modules each component patched."""
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


def verdict_of(path: Path, arch: str, pipeline_dir):
    (verdict,) = consumer_verdicts(path, ["diffusers"], base=str(pipeline_dir(arch)))
    return verdict


def assert_verdict_matches(verdict, real: dict, modules_in_file: dict[str, int]) -> None:
    patched = real["patched"]
    if real["error"] or not any(patched.values()):
        assert verdict.outcome == "fails", verdict.findings
    elif any(patched.get(c, 0) < n for c, n in modules_in_file.items()) or verdict.outcome == "loads_partly":
        assert verdict.outcome == "loads_partly", verdict.findings
    else:
        assert verdict.outcome == "loads", verdict.findings
    for component, count in verdict.loaded.items():
        assert patched.get(component, 0) == count, (component, patched, dict(verdict.loaded))
    for component, count in patched.items():
        assert verdict.loaded.get(component, 0) == count, (component, patched, dict(verdict.loaded))


def modules_per_component(path: Path) -> dict[str, int]:
    from loraregistry.adapter import AdapterFile

    adapter = AdapterFile.open(path)
    return {c: sum(1 for m in adapter.modules if m.component == c) for c in adapter.components}


# --- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDENS)
def test_verdict_matches_the_recorded_diffusers_load(name, tiny_pipeline_dir):
    record = json.loads((GOLDEN / f"{name}.json").read_text())["diffusers_load"]
    verdict = verdict_of(GOLDEN / f"{name}.safetensors", arch_of(name), tiny_pipeline_dir)
    real = {"error": record["error"], "patched": record["modules_patched"]}
    assert_verdict_matches(verdict, real, modules_per_component(GOLDEN / f"{name}.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DERIVED))
def test_verdict_matches_a_real_load(name, tmp_path, tiny_pipeline_dir):
    source, edit = DERIVED[name]
    path = derive(tmp_path, name, source, edit)
    real = diffusers_load(path, arch_of(name))
    assert_verdict_matches(verdict_of(path, arch_of(name), tiny_pipeline_dir), real, modules_per_component(path))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd2_kohya_conv_proj", "sd1_lycoris_loha", "sd1_lycoris_lokr"])
def test_goldens_still_load_as_recorded(name, tiny_pipeline_dir):
    """The installed diffusers still does what the golden records (guards the recorded oracle)."""
    record = json.loads((GOLDEN / f"{name}.json").read_text())["diffusers_load"]
    real = diffusers_load(GOLDEN / f"{name}.safetensors", arch_of(name))
    assert (real["error"] is None) == (record["error"] is None)
    assert real["patched"] == record["modules_patched"]


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
