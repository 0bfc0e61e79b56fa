"""Presets matching common practice, and the annotated TOML template ``lorareg train init`` writes.

The template is generated from the config models themselves (descriptions, allowed values, defaults), so it can
never drift from what ``TrainConfig`` accepts: a test loads every preset's template back.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from .config import SECTIONS, TEXT_ENCODER_TARGET_PRESETS, TRANSFORMER_TARGET_PRESETS, UNET_TARGET_PRESETS

# Values that differ from the field defaults. Rank 16 / alpha 8, AdamW 1e-4, cosine with warmup is what
# kohya sd-scripts and the diffusers LoRA scripts users copy converge on for 10-50 images.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "model": {"base": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
        "data": {"folder": "dataset", "resolution": 512},
        "network": {"rank": 16, "alpha": 8.0},
        "optim": {"lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100},
        "train": {"steps": 1500, "batch_size": 2, "mixed_precision": "fp16", "gradient_checkpointing": True,
                  "min_snr_gamma": 5.0, "checkpoint_every": 500, "sample_every": 500,
                  "sample_prompts": ["TRIGGER, a photo"], "sample_seeds": [1, 2]},
        "output": {"dir": "output", "name": "my-lora", "formats": ["kohya", "diffusers"],
                   "trigger_words": ["TRIGGER"]},
    },
    "sdxl": {
        "model": {"base": "stabilityai/stable-diffusion-xl-base-1.0"},
        "data": {"folder": "dataset", "resolution": 1024},
        "network": {"rank": 16, "alpha": 8.0},
        "optim": {"lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100},
        "train": {"steps": 2000, "batch_size": 1, "mixed_precision": "bf16", "gradient_checkpointing": True,
                  "min_snr_gamma": 5.0, "checkpoint_every": 500, "sample_every": 500,
                  "sample_prompts": ["TRIGGER, a photo"], "sample_seeds": [1, 2], "sample_steps": 30},
        "output": {"dir": "output", "name": "my-sdxl-lora", "formats": ["kohya", "diffusers"],
                   "trigger_words": ["TRIGGER"]},
    },
    # FLUX.1 dev on a 24 GB GPU: the 12B transformer stored in float8 (12 GB; bf16 would take 24), bf16 compute,
    # gradient checkpointing, batch 1 at 512 px; latents and T5/CLIP embeddings are cached before the first step.
    # Sampling uses the distilled guidance (3.5), as FluxPipeline does.
    "flux": {
        "model": {"base": "black-forest-labs/FLUX.1-dev", "fp8_base": True},
        "data": {"folder": "dataset", "resolution": 512},
        "network": {"rank": 16, "alpha": 8.0},
        "optim": {"lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100},
        "train": {"steps": 1500, "batch_size": 1, "mixed_precision": "bf16", "gradient_checkpointing": True,
                  "checkpoint_every": 250, "sample_every": 250, "sample_prompts": ["TRIGGER, a photo"],
                  "sample_seeds": [1], "sample_steps": 20, "sample_guidance": 3.5},
        "output": {"dir": "output", "name": "my-flux-lora", "formats": ["kohya", "diffusers"],
                   "trigger_words": ["TRIGGER"]},
    },
    # SD3.5 medium (2.5B) on a 24 GB GPU: bf16 weights, gradient checkpointing, batch 1 at 1024 px, cached latents
    # and text; logit-normal timesteps (flow defaults).
    "sd35": {
        "model": {"base": "stabilityai/stable-diffusion-3.5-medium"},
        "data": {"folder": "dataset", "resolution": 1024},
        "network": {"rank": 16, "alpha": 8.0},
        "optim": {"lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100},
        "train": {"steps": 1500, "batch_size": 1, "mixed_precision": "bf16", "gradient_checkpointing": True,
                  "checkpoint_every": 250, "sample_every": 250, "sample_prompts": ["TRIGGER, a photo"],
                  "sample_seeds": [1], "sample_steps": 28, "sample_guidance": 4.5},
        "output": {"dir": "output", "name": "my-sd35-lora", "formats": ["kohya", "diffusers"],
                   "trigger_words": ["TRIGGER"]},
    },
    # Seconds on a CPU: the tiny seeded SD1 pipeline built offline, 32 px, a high lr so the loss visibly falls.
    "tiny": {
        "model": {"base": "tiny:sd1"},
        "data": {"folder": "dataset", "resolution": 32, "bucket_step": 8},
        "network": {"rank": 4, "alpha": 4.0},
        "optim": {"lr": 1e-2, "scheduler": "constant_with_warmup", "warmup_steps": 5},
        "train": {"steps": 60, "batch_size": 4, "checkpoint_every": 20, "sample_every": 30,
                  "sample_prompts": ["lrgshape, a red circle on a blue background"], "sample_seeds": [1, 2],
                  "sample_steps": 4},
        "output": {"dir": "output", "name": "tiny-lora", "formats": ["kohya", "diffusers"],
                   "trigger_words": ["lrgshape"], "license": "cc0-1.0"},
    },
}

# Optional fields the template shows commented with a value worth trying (and the default named), not the default
# alone: held-out images and their loss, a negative prompt for the sample grids, trackers, a push when done.
SUGGESTED: dict[tuple[str, str], Any] = {
    ("data", "validation_split"): 0.1,
    ("train", "validate_every"): 250,
    ("train", "sample_negative_prompt"): "blurry, low quality",
    ("output", "trackers"): ["tensorboard"],
    ("output", "push_to"): "your-name/my-lora",
}

_INTRO = """\
# lorareg training config ({preset} preset). Run: lorareg train --config {file}
# Override any field from the command line: --set section.field=value (TOML syntax: 8, 1e-4, true, ["unet"]).
# Relative paths are relative to this file. Commented-out lines show optional fields and their default.
"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # str, int, float: JSON spelling is valid TOML


def _allowed(info: FieldInfo) -> str:
    literals = [a for a in _flatten(info.annotation) if typing.get_origin(a) is typing.Literal]
    values = [v for lit in literals for v in typing.get_args(lit)]
    return f" [{' | '.join(str(v) for v in values)}]" if values else ""


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal or not args:
        return [annotation]
    return [a for arg in args for a in _flatten(arg)]


def template(preset: str = "sd15", *, file_name: str = "run.toml") -> str:
    """The annotated TOML for ``preset``: every field, its description and allowed values."""
    values = PRESETS[preset]
    lines = [_INTRO.format(preset=preset, file=file_name)]
    for section, model in SECTIONS.items():
        lines.append(f"[{section}]")
        for name, info in model.model_fields.items():
            note = (info.description or "") + _allowed(info)
            if name == "unet_targets":
                note += f" or a list of module names; presets: {UNET_TARGET_PRESETS}"
            if name == "transformer_targets":
                note += f" or a list of module names; presets: {TRANSFORMER_TARGET_PRESETS}"
            if name == "text_encoder_targets":
                note += f" or a list; presets: {TEXT_ENCODER_TARGET_PRESETS}"
            if note.strip():
                lines.append(f"# {note.strip()}")
            if name in values.get(section, {}):
                lines.append(f"{name} = {toml_value(values[section][name])}")
                continue
            default = info.get_default(call_default_factory=True)
            if (section, name) in SUGGESTED:
                shown = "none" if default is None else toml_value(default)
                lines.append(f"# {name} = {toml_value(SUGGESTED[section, name])}  # e.g.; default: {shown}")
            elif default is None:
                lines.append(f"# {name} =")
            else:
                lines.append(f"# {name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def write_template(path: Path, preset: str, *, force: bool = False) -> Path:
    from ..safetensors_io import atomic_write
    from .errors import ConfigError

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    if path.exists() and not force:
        raise ConfigError("already exists", path=path, hint="pass --force to overwrite")
    with atomic_write(path) as f:
        f.write(template(preset, file_name=path.name).encode())
    return path
