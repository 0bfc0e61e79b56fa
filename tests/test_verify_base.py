"""--base ID|PATH: architecture ids, diffusers folders and single-file checkpoints, read from headers only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loraregistry.errors import FileAccessError, UnknownArchitecture, UsageError
from loraregistry.safetensors_io import write_safetensors
from loraregistry.verify import load_base, verify
from tests.adapters import write_adapter

# A tiny UNet/CLIP pair: one 1x1-conv attention projection, one Linear, one CLIP q_proj.
PROJ_IN = "down_blocks.0.attentions.0.proj_in"
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
Q_PROJ = "encoder.layers.0.self_attn.q_proj"  # transformers 5 spelling: no text_model level


def _zeros(*shape):
    return np.zeros(shape, np.float16)


def _tiny_adapter(tmp_path, *, te_in: int = 16, name: str = "tiny_adapter"):
    tensors = {}
    for name, down, up in (
        (f"lora_unet_{PROJ_IN.replace('.', '_')}", _zeros(2, 8, 1, 1), _zeros(8, 2, 1, 1)),
        (f"lora_unet_{TO_Q.replace('.', '_')}", _zeros(2, 8), _zeros(8, 2)),
        (f"lora_te_text_model_{Q_PROJ.replace('.', '_')}", _zeros(2, te_in), _zeros(16, 2)),
    ):
        tensors[f"{name}.lora_down.weight"] = down + 0.01
        tensors[f"{name}.lora_up.weight"] = up + 0.01
    return write_adapter(tmp_path / f"{name}.safetensors", tensors)


def _folder(tmp_path, *, shard_text_encoder: bool = False):
    root = tmp_path / "tiny-sd1"
    (root / "unet").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"],
                                                       "text_encoder": ["transformers", "CLIPTextModel"]}))
    write_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors", {
        f"{PROJ_IN}.weight": _zeros(8, 8, 1, 1), f"{PROJ_IN}.bias": _zeros(8), f"{TO_Q}.weight": _zeros(8, 8),
        "conv_in.weight": _zeros(8, 4, 3, 3)})
    text = {f"{Q_PROJ}.weight": _zeros(16, 16), "embeddings.token_embedding.weight": _zeros(10, 16),
            "final_layer_norm.weight": _zeros(16)}
    if shard_text_encoder:
        names = sorted(text)
        write_safetensors(root / "text_encoder" / "model-00001-of-00002.safetensors", {n: text[n] for n in names[:1]})
        write_safetensors(root / "text_encoder" / "model-00002-of-00002.safetensors", {n: text[n] for n in names[1:]})
        weight_map = {n: f"model-0000{1 if i == 0 else 2}-of-00002.safetensors" for i, n in enumerate(names)}
        (root / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        write_safetensors(root / "text_encoder" / "model.safetensors", text)
    return root


def test_id_and_alias_give_the_shipped_fingerprint():
    base = load_base("SDXL 1.0")
    assert base.architecture == "sdxl-base" and base.label == "sdxl-base" and base.path is None
    assert len(base.fingerprint.modules) > 1000


def test_unknown_id_lists_the_known_ids():
    with pytest.raises(UnknownArchitecture) as exc:
        load_base("sd9")
    assert "sd1" in exc.value.hint and "sdxl-base" in exc.value.hint and exc.value.exit_code == 2


def test_missing_path_says_so(tmp_path):
    with pytest.raises(FileAccessError, match="no such file or folder"):
        load_base(str(tmp_path / "nope" / "model"))


def test_folder_that_is_no_model_says_what_was_expected(tmp_path):
    with pytest.raises(UsageError) as exc:
        load_base(str(tmp_path))
    assert "model_index.json" in exc.value.one_line()
    with pytest.raises(UsageError, match="pickle checkpoint"):
        (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04")
        load_base(str(tmp_path / "model.ckpt"))


def test_a_lora_is_no_base_model(tmp_path):
    lora = _tiny_adapter(tmp_path)
    with pytest.raises(UsageError, match="no Linear or Conv weights"):
        load_base(str(lora))


@pytest.mark.parametrize("sharded", [False, True])
def test_diffusers_folder(tmp_path, sharded):
    base = load_base(str(_folder(tmp_path, shard_text_encoder=sharded)))
    modules = {str(k): (s.kind, s.in_features, s.out_features, s.kernel) for k, s in base.fingerprint.modules.items()}
    assert modules[f"unet:{PROJ_IN}"] == ("conv", 8, 8, (1, 1))
    assert modules[f"unet:{TO_Q}"] == ("linear", 8, 8, None)
    assert modules[f"text_encoder:text_model.{Q_PROJ}"] == ("linear", 16, 16, None)
    assert base.architecture is None and base.path


def test_adapter_against_folder(tmp_path):
    folder = str(_folder(tmp_path))
    good = verify(_tiny_adapter(tmp_path), base=folder)
    assert good.ok and good.fitted == 3 and good.requested_base == folder
    assert [f.code for f in good.findings if f.severity != "info"] == []
    bad = verify(_tiny_adapter(tmp_path, te_in=24, name="wide_te"), base=folder)
    assert "LRG301" in bad.codes() and "LRG203" in bad.codes()
    assert f"not the base at {folder}: only 2 of 3 modules fit" in bad.findings[0].message


def test_component_folder_is_accepted(tmp_path):
    base = load_base(str(_folder(tmp_path) / "unet"))
    assert {k.component for k in base.fingerprint.modules} == {"unet"}


def test_sd1_single_file_checkpoint(tmp_path):
    path = tmp_path / "sd1.safetensors"
    write_safetensors(path, {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": _zeros(8, 8, 1, 1),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": _zeros(8, 8),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": _zeros(8, 8, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": _zeros(8, 8, 3, 3),
        f"cond_stage_model.transformer.text_model.{Q_PROJ}.weight": _zeros(16, 16),
        "first_stage_model.decoder.conv_in.weight": _zeros(8, 4, 3, 3),
    })
    modules = {str(k) for k in load_base(str(path)).fingerprint.modules}
    assert modules == {f"unet:{PROJ_IN}", f"unet:{TO_Q}", "unet:down_blocks.0.resnets.0.conv1",
                       "unet:up_blocks.0.upsamplers.0.conv", f"text_encoder:text_model.{Q_PROJ}"}
    assert verify(_tiny_adapter(tmp_path), base=str(path)).ok


@pytest.mark.parametrize("prefix, component", [
    ("cond_stage_model.model.", "text_encoder"),  # SD2 OpenCLIP-H
    ("conditioner.embedders.1.model.", "text_encoder_2"),  # SDXL OpenCLIP-bigG
])
def test_openclip_text_encoders_map_to_clip_paths(tmp_path, prefix, component):
    path = tmp_path / "ckpt.safetensors"
    block = f"{prefix}transformer.resblocks.3."
    write_safetensors(path, {
        f"{block}attn.in_proj_weight": _zeros(48, 16), f"{block}attn.in_proj_bias": _zeros(48),
        f"{block}attn.out_proj.weight": _zeros(16, 16), f"{block}mlp.c_fc.weight": _zeros(64, 16),
        f"{block}mlp.c_proj.weight": _zeros(16, 64), "conditioner.embedders.0.transformer.text_model."
        "encoder.layers.0.mlp.fc1.weight": _zeros(64, 16),
    })
    modules = {str(k): (s.in_features, s.out_features) for k, s in load_base(str(path)).fingerprint.modules.items()}
    layer = f"{component}:text_model.encoder.layers.3."
    assert modules[layer + "self_attn.q_proj"] == (16, 16) and modules[layer + "self_attn.v_proj"] == (16, 16)
    assert modules[layer + "self_attn.out_proj"] == (16, 16)
    assert modules[layer + "mlp.fc1"] == (16, 64) and modules[layer + "mlp.fc2"] == (64, 16)
    assert modules["text_encoder:text_model.encoder.layers.0.mlp.fc1"] == (16, 64)
