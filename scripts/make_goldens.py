#!/usr/bin/env python
"""Regenerate the golden adapter files in tests/golden/ (offline, CPU, ~20 s).

Each golden is a small ``<name>.safetensors`` written by the real tool where one exists (diffusers, peft,
lycoris-lora) over the tiny seeded models of ``tests/tiny_models.py``, plus ``<name>.json`` with the facts a
reader must recover from it (format family, network type, rank, alpha, components, module counts, sample keys,
metadata, writer and version). What loaders do with a golden is never recorded: the oracle tests load each one
live (tests/test_oracle_*.py).

kohya sd-scripts is not on PyPI, so the ``*_kohya`` files are written by lycoris-lora's kohya writer
(``lycoris.kohya.create_network(...).save_weights``, what sd-scripts runs for ``--network_module lycoris.kohya``)
with presets that target what sd-scripts' ``networks.lora`` targets, and the ss_* metadata sd-scripts writes. No
golden is written by this project's own code. The legacy attention-processor layout has no golden: diffusers 0.42's
``save_attn_procs`` saves Custom Diffusion processors only (LoRA raises "use save_lora_adapter"), so no installed
tool writes it; tests/oracle_cases.py derives that layout from a diffusers-written golden by renaming keys.

Determinism: torch is seeded per golden and metadata dates are fixed. Python's hash seed matters too (peft and
lycoris turn sets of module names into lists), so the script re-executes itself with ``PYTHONHASHSEED=0``
unless the variable is already set.

Usage: python scripts/make_goldens.py [--out DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden"

# Fixed "training" dates so that metadata never changes between runs.
FIXED_EPOCH = "1704067200.0"  # 2024-01-01T00:00:00Z, in kohya's float-seconds spelling
FIXED_EPOCH_END = "1704070800.0"
FIXED_ISO_DATE = "2024-01-01T00:00:00"

# safetensors' Rust writer serializes ``__metadata__`` from a HashMap, in an order that changes per process:
# a file with two or more metadata entries has the same tensors and the same parsed header on every run, but
# not the same bytes. Those goldens are checked by content, the others byte for byte.
NOT_BYTE_REPRODUCIBLE_REASON = ("safetensors writes __metadata__ entries in per-process HashMap order; tensor data "
                                "and the parsed header are reproducible")

_BUILDERS: dict[str, Callable[["Ctx"], dict[str, Any]]] = {}
# SD3 / FLUX goldens live in tests/golden/mmdit/: the tiny SD1/SD2/SDXL bases of tests/tiny_models.py cannot stand
# in for them, so tests that walk tests/golden/*.safetensors with those bases leave them alone.
MMDIT_DIR = "mmdit"
_MMDIT_BUILDERS: dict[str, Callable[["Ctx"], dict[str, Any]]] = {}


def golden(name: str, *, mmdit: bool = False):
    def register(fn):
        (_MMDIT_BUILDERS if mmdit else _BUILDERS)[name] = fn
        return fn

    return register


class Ctx:
    """What a builder needs: the output folder and a scratch folder."""

    def __init__(self, out: Path, scratch: Path):
        self.out = out
        self.scratch = scratch

    def path(self, name: str) -> Path:
        return self.out / f"{name}.safetensors"


# --------------------------------------------------------------------------------------------- helpers


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import safetensors
    import torch
    import transformers
    from importlib.metadata import version

    return {
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "lycoris-lora": version("lycoris-lora"),
    }


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _randomize(params: list[tuple[str, Any]], seed: int, scale: float = 0.05) -> None:
    """Overwrite adapter parameters with seeded noise: tools zero-init one factor, which makes a no-op delta."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(params, key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale
            if "magnitude" in name or "dora_scale" in name:
                p.add_(noise.to(p.dtype))  # keep the DoRA magnitude near the real column norms
            else:
                p.copy_(noise.to(p.dtype))


def _lora_params(model) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def _unet_targets_all() -> list[str]:
    # every Linear/Conv of a Transformer2DModel: kohya's default target set, written as peft module suffixes
    return ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


_TE_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]

_TE_LAYOUT_NOTE = ("transformers 5 CLIPTextModel has no 'text_model.' level, so its keys read "
                   "'text_encoder.encoder.layers.N...'; CLIPTextModelWithProjection (text_encoder_2) keeps "
                   "'text_model.'. diffusers 0.42 loads both spellings.")


def tensor_data_sha256(path: Path) -> str:
    """sha256 of the bytes after the header (= AutoV3 = kohya sshs_model_hash without a prefix)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n :]).hexdigest()


# --------------------------------------------------------------------------------------------- key facts

# Suffixes that end a module path, per key style; group 1 (if any) is a module-path tail to keep.
_SUFFIX_PATTERNS = [
    re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$"),  # attn-procs
    re.compile(r"\.lora_linear_layer\.(down|up)\.weight$"),  # diffusers text encoder
    re.compile(r"\.lora\.(down|up)\.weight$"),  # diffusers unet
    re.compile(r"\.lora_[AB](\.[^.]+)?\.(weight|bias)$"),  # peft
    re.compile(r"\.lora_magnitude_vector(\.[^.]+)?(\.weight)?$"),  # peft DoRA
]

_KOHYA_COMPONENTS = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                     "lora_te2_": "text_encoder_2"}


def module_of(key: str, default_component: str) -> tuple[str, str]:
    """(component, module) of one tensor key, in the file's own spelling (no canonicalization)."""
    for prefix, component in _KOHYA_COMPONENTS.items():
        if key.startswith(prefix):
            return component, key.split(".", 1)[0]
    if key.startswith("lora_te1.") or key.startswith("lora_te2.") or key.startswith("lora_unet."):
        raise ValueError(f"unexpected dotted kohya prefix in {key}")
    component = default_component
    for prefix in ("unet.", "transformer.", "text_encoder_2.", "text_encoder."):
        if key.startswith(prefix):
            component, key = prefix[:-1], key[len(prefix) :]
            break
    if key.startswith("base_model.model."):
        key = key[len("base_model.model.") :]
    for pat in _SUFFIX_PATTERNS:
        m = pat.search(key)
        if m:
            base = key[: m.start()]
            if pat is _SUFFIX_PATTERNS[0]:
                base += "." + ("to_out.0" if m.group(1) == "to_out" else m.group(1))
            return component, base
    raise ValueError(f"cannot find the module of key {key}")


def key_facts(path: Path, default_component: str) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        keys = sorted(f.keys())
        metadata = f.metadata() or {}
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in keys})
    modules: dict[str, set[str]] = {}
    for k in keys:
        component, module = module_of(k, default_component)
        modules.setdefault(component, set()).add(module)
    samples: list[str] = [keys[0], keys[-1]]
    for component in sorted(modules):
        first = next(k for k in keys if module_of(k, default_component)[0] == component)
        samples.append(first)
    samples += [k for k in keys if k.endswith(".alpha")][:1]
    samples += [k for k in keys if re.search(r"(conv|proj_in)", k)][:1]
    facts: dict[str, Any] = {}
    alpha_keys = [k for k in keys if k.endswith(".alpha")]
    if alpha_keys:
        with safe_open(str(path), framework="numpy") as f:
            values = [float(f.get_tensor(k)) for k in alpha_keys]
        facts["alpha_values"] = {repr(v): values.count(v) for v in sorted(set(values))}
    return facts | {
        "key_count": len(keys),
        "sample_keys": sorted(dict.fromkeys(samples)),
        "components": sorted(modules),
        "modules_per_component": {c: len(m) for c, m in sorted(modules.items())},
        "dtypes": dtypes,
        "metadata": metadata,
        "file_size": path.stat().st_size,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "tensor_sha256": tensor_data_sha256(path),
    }


# --------------------------------------------------------------------------------------------- diffusers / peft


def _peft_sd1_components(rank: int, alpha: int, unet_targets: list[str], te_targets: list[str], seed: int,
                         arch: str = "sd1"):
    """Tiny unet + text encoder(s) with a peft LoRA injected the diffusers way (``add_adapter`` on the unet, peft's
    ``inject_adapter_in_model`` on text encoders, as diffusers does), randomized."""
    from peft import LoraConfig

    from loraregistry.train.peft_attach import attach_lora

    from tests.tiny_models import tiny_text_encoder, tiny_unet

    _seed(seed)
    unet = tiny_unet(arch)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=unet_targets, init_lora_weights=True))
    encoders = {}
    kinds = {"text_encoder": "sdxl", "text_encoder_2": "sdxl_2"} if arch == "sdxl" else {"text_encoder": arch}
    for component, kind in kinds.items():
        te = tiny_text_encoder(kind)
        attach_lora(te, LoraConfig(r=rank, lora_alpha=alpha, target_modules=te_targets, init_lora_weights=True))
        encoders[component] = te
    _randomize(_lora_params(unet), seed + 100)
    for i, te in enumerate(encoders.values()):
        _randomize(_lora_params(te), seed + 200 + i)
    return unet, encoders


def _write_with_pipeline(cls, ctx: Ctx, name: str, layers: dict[str, Any], metadata: dict[str, Any] | None):
    tmp = ctx.scratch / name
    kwargs = {f"{c}_lora_layers": sd for c, sd in layers.items()}
    if metadata:
        kwargs.update({f"{c}_lora_adapter_metadata": md for c, md in metadata.items()})
    cls.save_lora_weights(str(tmp), weight_name=f"{name}.safetensors", **kwargs)
    shutil.copyfile(tmp / f"{name}.safetensors", ctx.path(name))


@golden("sd1_diffusers_unet_te")
def sd1_diffusers_unet_te(ctx: Ctx) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    unet, encoders = _peft_sd1_components(4, 8, _unet_targets_all(), _TE_ATTN, seed=10)
    te = encoders["text_encoder"]
    # As diffusers' own LoRA tests and its newer training scripts call it: peft state dicts + LoraConfig dicts.
    _write_with_pipeline(
        StableDiffusionPipeline, ctx, "sd1_diffusers_unet_te",
        {"unet": get_peft_model_state_dict(unet), "text_encoder": get_peft_model_state_dict(te)},
        {"unet": unet.peft_config["default"].to_dict(), "text_encoder": te.peft_config["default"].to_dict()},
    )
    return dict(
        arch="sd1", format="peft", key_prefix="component (unet. / text_encoder.)", network_type="lora",
        rank=4, alpha=8.0, default_component="unet",
        writer={"tool": "diffusers", "call": "StableDiffusionPipeline.save_lora_weights(unet_lora_layers="
                "get_peft_model_state_dict(unet), ..., unet_lora_adapter_metadata=peft_config.to_dict(), ...)"},
        notes="save_lora_weights only prefixes keys with the component name; the key style is whatever it is "
              "given (here peft lora_A/lora_B). alpha survives only in lora_adapter_metadata "
              "(keys 'unet.lora_alpha', 'text_encoder.lora_alpha', ...). " + _TE_LAYOUT_NOTE,
    )


@golden("sd1_diffusers_train_script")
def sd1_diffusers_train_script(ctx: Ctx) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    # examples/dreambooth/train_dreambooth_lora.py: r == lora_alpha, attention-only targets, then
    # convert_state_dict_to_diffusers before save_lora_weights and no adapter metadata.
    unet, encoders = _peft_sd1_components(4, 4, ["to_k", "to_q", "to_v", "to_out.0"], _TE_ATTN, seed=20)
    layers = {
        "unet": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        "text_encoder": convert_state_dict_to_diffusers(get_peft_model_state_dict(encoders["text_encoder"])),
    }
    _write_with_pipeline(StableDiffusionPipeline, ctx, "sd1_diffusers_train_script", layers, None)
    return dict(
        arch="sd1", format="diffusers", key_prefix="component (unet. / text_encoder.)", network_type="lora",
        rank=4, alpha=4.0, alpha_stored=False, default_component="unet",
        writer={"tool": "diffusers", "call": "StableDiffusionPipeline.save_lora_weights(unet_lora_layers="
                "convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), ...) as in "
                "examples/dreambooth/train_dreambooth_lora.py"},
        notes="unet keys '.lora.down/.lora.up', text encoder keys '.lora_linear_layer.down/up'. No alpha anywhere: "
              "readers must assume alpha == rank (the script trains with lora_alpha == rank). " + _TE_LAYOUT_NOTE,
    )


@golden("sdxl_diffusers")
def sdxl_diffusers(ctx: Ctx) -> dict[str, Any]:
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    unet, encoders = _peft_sd1_components(4, 8, ["to_k", "to_q", "to_v", "to_out.0"], _TE_ATTN, seed=30, arch="sdxl")
    layers = {"unet": get_peft_model_state_dict(unet)}
    metadata = {"unet": unet.peft_config["default"].to_dict()}
    for component, te in encoders.items():
        layers[component] = get_peft_model_state_dict(te)
        metadata[component] = te.peft_config["default"].to_dict()
    _write_with_pipeline(StableDiffusionXLPipeline, ctx, "sdxl_diffusers", layers, metadata)
    return dict(
        arch="sdxl", format="peft", key_prefix="component (unet. / text_encoder. / text_encoder_2.)",
        network_type="lora", rank=4, alpha=8.0, default_component="unet",
        writer={"tool": "diffusers", "call": "StableDiffusionXLPipeline.save_lora_weights(peft state dicts + "
                "*_lora_adapter_metadata)"},
        notes=_TE_LAYOUT_NOTE,
    )


def _peft_model_save(ctx: Ctx, name: str, use_dora: bool, seed: int) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    from tests.tiny_models import tiny_unet

    _seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=_unet_targets_all(), use_dora=use_dora)
    model = get_peft_model(tiny_unet("sd1"), config)
    _randomize(_lora_params(model), seed + 100)
    tmp = ctx.scratch / name
    model.save_pretrained(str(tmp))
    shutil.copyfile(tmp / "adapter_model.safetensors", ctx.path(name))
    adapter_config = json.loads((tmp / "adapter_config.json").read_text())
    return dict(
        arch="sd1", format="peft", key_prefix="base_model.model.", network_type="dora" if use_dora else "lora",
        rank=4, alpha=8.0, default_component="unet", adapter_config=adapter_config,
        writer={"tool": "peft", "call": "get_peft_model(tiny_unet, LoraConfig(...)).save_pretrained() -> "
                "adapter_model.safetensors (adapter_config.json is recorded here as adapter_config)"},
        notes="The .safetensors alone carries no rank/alpha/target info (only format: pt); a reader needs the "
              "sibling adapter_config.json, or must infer rank from shapes and assume alpha == rank.",
    )


@golden("sd1_peft_prefixed")
def sd1_peft_prefixed(ctx: Ctx) -> dict[str, Any]:
    return _peft_model_save(ctx, "sd1_peft_prefixed", use_dora=False, seed=40)


@golden("sd1_peft_dora")
def sd1_peft_dora(ctx: Ctx) -> dict[str, Any]:
    return _peft_model_save(ctx, "sd1_peft_dora", use_dora=True, seed=50)


@golden("sd1_kohya_from_diffusers")
def sd1_kohya_from_diffusers(ctx: Ctx) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    # The documented route: read a diffusers LoRA (peft keys) with lora_state_dict, convert, save_file.
    source = ctx.scratch / "kohya_src"
    source.mkdir(exist_ok=True)
    src_ctx = Ctx(source, ctx.scratch)
    sd1_diffusers_unet_te(src_ctx)
    state_dict, network_alphas = StableDiffusionPipeline.lora_state_dict(str(src_ctx.path("sd1_diffusers_unet_te")))
    kohya = convert_state_dict_to_kohya(state_dict)
    save_file(kohya, str(ctx.path("sd1_kohya_from_diffusers")))
    return dict(
        arch="sd1", format="kohya", network_type="lora", rank=4, alpha=4.0, source_alpha=8.0,
        default_component="unet",
        writer={"tool": "diffusers", "call": "convert_state_dict_to_kohya(StableDiffusionPipeline.lora_state_dict("
                "sd1_diffusers_unet_te.safetensors)[0]) then safetensors.torch.save_file (no metadata)"},
        notes="convert_state_dict_to_kohya writes alpha = rank (int64 0-dim tensors), so the source's "
              "lora_alpha 8 (scale 2.0) silently becomes scale 1.0; text encoder keys get 'lora_te1_' even "
              "for SD1 and, from a transformers-5 source, no 'text_model_' ('lora_te1_encoder_layers_N_...'); no metadata "
              "at all. diffusers 0.42 loads it back (lora_te1_ -> text_encoder).",
    )


# --------------------------------------------------------------------------------------------- kohya layout


def transformers4_layout(text_encoder):
    """Give a transformers-5 ``CLIPTextModel`` back its ``text_model.`` level, as sd-scripts sees it.

    transformers 5 folded ``CLIPTextTransformer`` into ``CLIPTextModel``: module paths are now
    ``encoder.layers.N...`` (``CLIPTextModelWithProjection`` still has ``text_model.``). sd-scripts pins
    transformers 4, so every kohya/LyCORIS file in the wild says ``lora_te_text_model_encoder_layers_N_...``;
    the kohya-style goldens are written through this wrapper to match them.
    """
    import torch

    if any(name == "text_model" for name, _ in text_encoder.named_children()):
        return text_encoder

    class CLIPTextModelV4Layout(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.text_model = inner

    return CLIPTextModelV4Layout(text_encoder)


_KOHYA_TE_NOTE = ("Text encoder keys are 'lora_te_text_model_encoder_layers_N_...' as sd-scripts (transformers 4) "
                  "writes them; the text encoder was wrapped to restore that level (see transformers4_layout).")


def kohya_metadata(*, v2: bool, base_version: str, dim: int, alpha: float, network_args: dict | None,
                   resolution: str, arch_id: str, title: str, prediction: str) -> dict[str, str]:
    """The ss_* / modelspec.* set sd-scripts train_network.py writes (values fixed; all str)."""
    md = {
        "ss_session_id": "1234567890",
        "ss_training_started_at": FIXED_EPOCH,
        "ss_training_finished_at": FIXED_EPOCH_END,
        "ss_output_name": title,
        "ss_learning_rate": "0.0001",
        "ss_text_encoder_lr": "5e-05",
        "ss_unet_lr": "0.0001",
        "ss_num_train_images": "12",
        "ss_num_reg_images": "0",
        "ss_num_batches_per_epoch": "12",
        "ss_num_epochs": "1",
        "ss_epoch": "1",
        "ss_steps": "12",
        "ss_max_train_steps": "12",
        "ss_batch_size_per_device": "1",
        "ss_total_batch_size": "1",
        "ss_gradient_checkpointing": "False",
        "ss_gradient_accumulation_steps": "1",
        "ss_lr_warmup_steps": "0",
        "ss_lr_scheduler": "constant",
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(float(alpha)),
        "ss_network_dropout": "None",
        "ss_mixed_precision": "fp16",
        "ss_full_fp16": "False",
        "ss_v2": str(v2),
        "ss_base_model_version": base_version,
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_cache_latents": "True",
        "ss_seed": "42",
        "ss_noise_offset": "None",
        "ss_min_snr_gamma": "None",
        "ss_training_comment": "None",
        "ss_sd_model_name": "tiny-" + base_version,
        "ss_new_sd_model_hash": "0" * 64,
        "ss_resolution": f"({resolution.replace('x', ', ')})",
        "ss_dataset_dirs": json.dumps({"1_lrgshape": {"n_repeats": 1, "img_count": 12}}),
        "ss_tag_frequency": json.dumps({"1_lrgshape": {"lrgshape": 12, "a red circle": 1}}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch_id,
        "modelspec.implementation": "diffusers",  # sd-scripts: SD1/SD2 -> "diffusers", SDXL -> Stability's repo URL
        "modelspec.title": title,
        "modelspec.resolution": resolution,
        "modelspec.date": FIXED_ISO_DATE,
        "modelspec.prediction_type": prediction,
    }
    if network_args:
        md["ss_network_args"] = json.dumps(network_args)
    return md


# --------------------------------------------------------------------------------------------- lycoris


# lycoris-lora 4.1.3's built-in "full" preset fails on a diffusers UNet ("duplicated lora name:
# lora_unet_time_embedding_linear_1": its module list now holds "TimestepEmbedding" and its name list
# "time_embedding.linear_1"), so LoCon uses the classic full preset (LyCORIS <= 2.x) from a preset file.
_CLASSIC_FULL_PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


# sd-scripts' networks.lora targets, as LyCORIS presets: LoRA on every Linear/1x1 Conv2d of the UNet's
# Transformer2DModel blocks and of CLIP attention/MLP; "LoRA-C3Lier" (conv_dim) adds ResnetBlock2D, Downsample2D and
# Upsample2D, whose 3x3 convs take conv_dim and 1x1 ones the linear dim (lycoris.kohya does the same split).
_KOHYA_PRESETS = {
    "kohya-lora": """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
""",
    "kohya-c3lier": """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
""",
    "classic-full": _CLASSIC_FULL_PRESET,
}


def preset_arg_text(preset: str) -> str:
    return f"<{preset} preset file: scripts/make_goldens.py>" if preset.startswith("kohya-") else repr(preset)


def _lycoris(ctx: Ctx, name: str, algo: str, preset: str, seed: int, *, arch: str = "sd1", unet=None,
             **kwargs) -> dict[str, Any]:
    import torch
    from lycoris import kohya as lycoris_kohya

    from tests.tiny_models import tiny_text_encoder, tiny_unet

    _seed(seed)
    te, unet = transformers4_layout(tiny_text_encoder(arch)), unet if unet is not None else tiny_unet(arch)
    preset_arg = preset
    if preset in _KOHYA_PRESETS:
        preset_arg = str(ctx.scratch / f"{preset}.toml")
        Path(preset_arg).write_text(_KOHYA_PRESETS[preset])
    # What sd-scripts does with --network_module lycoris.kohya --network_args algo=... preset=...
    network = lycoris_kohya.create_network(1.0, 4, 1.0, None, te, unet, algo=algo, preset=preset_arg, **kwargs)
    network.apply_to(te, unet, apply_text_encoder=True, apply_unet=True)
    _randomize([(n, p) for n, p in network.named_parameters()], seed + 100)
    args = {"algo": algo, "preset": preset, **{k: str(v) for k, v in kwargs.items()}}
    v2 = arch == "sd2"
    md = kohya_metadata(v2=v2, base_version="sd_v2" if v2 else "sd_v1", dim=4, alpha=1.0, network_args=args,
                        resolution="512x512", arch_id=f"stable-diffusion-{'v2-512' if v2 else 'v1'}/lora",
                        title=name, prediction="epsilon")
    md["ss_network_module"] = "lycoris.kohya"
    network.save_weights(str(ctx.path(name)), torch.float16, md)
    conv = {"conv_rank": int(kwargs["conv_dim"]), "conv_alpha": float(kwargs["conv_alpha"])} if "conv_dim" in kwargs else {}
    network_type = "locon" if algo == "lora" and conv else algo
    return dict(
        arch=arch, format="kohya", network_type=network_type, rank=4, alpha=1.0, default_component="unet", **conv,
        lycoris={"algo": algo, "preset": preset, **kwargs},
        notes="Keys use kohya prefixes (lycoris.kohya); every module has an fp16 0-dim '.alpha'. save_weights adds "
              "only 'sshs_model_hash' = '0x' + sha256 of the tensors serialized one by one in state-dict order: it "
              "does NOT equal the file's tensor-data sha256 (AutoV3). The ss_* keys are what sd-scripts passes in. "
              "LoKr stores alpha = dim (scale 1) on modules where both factors are full matrices, the configured "
              "alpha where a factor is decomposed (see alpha_values). " + _KOHYA_TE_NOTE,
        writer={"tool": "lycoris-lora", "call": f"lycoris.kohya.create_network(1.0, 4, 1.0, None, te, unet, "
                f"algo={algo!r}, preset={preset_arg_text(preset)}, ...).save_weights(path, torch.float16, "
                "ss_metadata)"},
    )


@golden("sd1_kohya")
def sd1_kohya(ctx: Ctx) -> dict[str, Any]:
    """A kohya LoRA on sd-scripts' networks.lora targets, written by lycoris-lora's kohya writer (sd-scripts is not
    on PyPI): the keys, shapes, fp16 0-dim alphas and SD1's 1x1-conv proj_in/proj_out of an sd-scripts file."""
    return _lycoris(ctx, "sd1_kohya", "lora", "kohya-lora", seed=60)


@golden("sd2_kohya_conv_proj")
def sd2_kohya_conv_proj(ctx: Ctx) -> dict[str, Any]:
    """sd-scripts' SD2 LoRA-C3Lier (conv_dim 2): sd-scripts builds SD2's UNet with use_linear_projection=False, so
    its proj_in/proj_out are 1x1 convs and their factors 4-D; the tiny SD2 UNet is built the same way and
    lycoris-lora's kohya writer saves the network."""
    from diffusers import UNet2DConditionModel

    from tests.tiny_models import unet_config

    _seed(70)
    unet = UNet2DConditionModel(**{**unet_config("sd2"), "use_linear_projection": False}).eval()
    facts = _lycoris(ctx, "sd2_kohya_conv_proj", "lora", "kohya-c3lier", seed=70, arch="sd2", unet=unet,
                     conv_dim=2, conv_alpha=1)
    facts["notes"] = ("proj_in/proj_out stored as 1x1 conv [r, C, 1, 1] / [C, r, 1, 1] although the diffusers SD2 "
                      "UNet has Linear projections (sd-scripts, like this tiny UNet, builds SD2 with "
                      "use_linear_projection=False). ResnetBlock2D conv1/conv2 and Down/Upsample conv use conv rank "
                      "2 with 3x3 down factors; time_emb_proj and 1x1 conv_shortcut use the linear rank 4. diffusers "
                      "refuses this file (size mismatch [r, C, 1, 1] vs Linear [r, C]); with the projections "
                      "flattened to 2-D it loads. " + _KOHYA_TE_NOTE)
    return facts


@golden("sd1_lycoris_loha")
def sd1_lycoris_loha(ctx: Ctx) -> dict[str, Any]:
    return _lycoris(ctx, "sd1_lycoris_loha", "loha", "attn-mlp", seed=80)


@golden("sd1_lycoris_lokr")
def sd1_lycoris_lokr(ctx: Ctx) -> dict[str, Any]:
    return _lycoris(ctx, "sd1_lycoris_lokr", "lokr", "attn-mlp", seed=90)


@golden("sd1_lycoris_locon")
def sd1_lycoris_locon(ctx: Ctx) -> dict[str, Any]:
    return _lycoris(ctx, "sd1_lycoris_locon", "locon", "classic-full", seed=100, conv_dim=2, conv_alpha=1)


# --------------------------------------------------------------------------------------------- SD3 / FLUX


def _mmdit(ctx: Ctx, name: str, family: str, *, text_encoders: bool) -> dict[str, Any]:
    from tests.oracle_diffusers import TRANSFORMER_CONFIGS, write_with_diffusers

    pipeline = "FluxPipeline" if family == "flux" else "StableDiffusion3Pipeline"
    encoders = ("text_encoder",) if family == "flux" else ("text_encoder", "text_encoder_2")
    write_with_diffusers(family, ctx.path(name), text_encoders=text_encoders)
    layers = "transformer_lora_layers=get_peft_model_state_dict(inject_adapter_in_model(LoraConfig(r=4, " \
             "lora_alpha=4, init_lora_weights=False), tiny transformer))"
    if text_encoders:
        layers += "".join(f", {c}_lora_layers=... (tiny CLIP, q/k/v/out_proj)" for c in encoders)
    return dict(
        arch=family, format="peft", key_prefix="component (transformer. / text_encoder.)", network_type="lora",
        rank=4, alpha=4.0, default_component="transformer",
        writer={"tool": "diffusers", "call": f"{pipeline}.save_lora_weights({layers})"},
        notes=f"tiny {family} transformer {TRANSFORMER_CONFIGS[family]} with the tiny CLIP encoders of "
              "tests/tiny_models.py, seeded (tests/oracle_diffusers.py builds the same models to load it).",
    )


@golden("sd3_diffusers", mmdit=True)
def sd3_diffusers(ctx: Ctx) -> dict[str, Any]:
    return _mmdit(ctx, "sd3_diffusers", "sd3", text_encoders=True)


@golden("flux_diffusers", mmdit=True)
def flux_diffusers(ctx: Ctx) -> dict[str, Any]:
    return _mmdit(ctx, "flux_diffusers", "flux", text_encoders=True)


@golden("flux_diffusers_transformer_only", mmdit=True)
def flux_diffusers_transformer_only(ctx: Ctx) -> dict[str, Any]:
    return _mmdit(ctx, "flux_diffusers_transformer_only", "flux", text_encoders=False)


# --------------------------------------------------------------------------------------------- driver


def build(names: list[str], out: Path) -> list[Path]:
    """Write ``names`` (SD1/SD2/SDXL builders into ``out``, SD3/FLUX ones into ``out/mmdit``)."""
    written = []
    for folder, registry in ((out, _BUILDERS), (out / MMDIT_DIR, _MMDIT_BUILDERS)):
        chosen = [n for n in names if n in registry]
        if chosen:
            written += _build(chosen, registry, folder)
    return written


def _build(names: list[str], registry, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    versions = _versions()
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        ctx = Ctx(out, Path(scratch))
        for name in names:
            facts = registry[name](ctx)
            path = ctx.path(name)
            default_component = facts.pop("default_component")
            tool = facts["writer"]["tool"]
            facts["writer"]["version"] = versions.get(tool, "")
            record = {"name": name, "file": path.name, **facts, **key_facts(path, default_component)}
            record["library_versions"] = versions
            record["byte_reproducible"] = len(record["metadata"]) <= 1
            if not record["byte_reproducible"]:
                record["not_byte_reproducible_because"] = NOT_BYTE_REPRODUCIBLE_REASON
            (out / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", choices=sorted(_BUILDERS) + sorted(_MMDIT_BUILDERS), default=None)
    args = parser.parse_args(argv)
    if "PYTHONHASHSEED" not in os.environ:
        # peft and lycoris build lists from sets of module names; fix their order for reproducible output
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    names = args.only or [*_BUILDERS, *_MMDIT_BUILDERS]
    for path in build(names, args.out):
        print(f"{path.stat().st_size:>8}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
