"""Run InvokeAI 6.14.2's own LoRA code on an adapter file: what it really applies to SD1/SD2/SDXL models.

The steps of ``invokeai.backend.model_manager.load.model_loaders.lora.LoRALoader._load_model`` for a LyCORIS-format
file (drop ``bundle_emb``, ``normalize_peft_adapter_names``, ``convert_sdxl_keys_to_diffusers_format`` for SDXL,
``lora_model_from_sd_state_dict``) run in order, calling InvokeAI's functions; then
``LayerPatcher.apply_smart_model_patches`` patches the tiny diffusers UNet and transformers CLIP encoders with the
prefixes InvokeAI's invocations use (``denoise_latents``: ``lora_unet_``; ``compel``: ``lora_te_`` for SD1/SD2,
``lora_te1_``/``lora_te2_`` for SDXL). A module counts as applied when its weight changed. The CLIP encoders get
the module layout of the transformers InvokeAI pins (``pinned_clip_layout``).

InvokeAI is installed without its dependencies (requirements/no-deps.txt), so the harness stands in for three
import-time dependencies the LoRA path never calls: ``onnxruntime`` (a type alias in the model taxonomy), the model
cache module (only its ``MODEL_LOAD_LOCK`` is used, as a read lock) and the ``__init__`` of the model-loader
package (which imports every loader); every other module is InvokeAI's own, unchanged.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from contextlib import nullcontext
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.oracle_cases import RealLoad, modules_of

INVOKEAI_VERSION = "6.14.2"
# component -> prefix the invocations patch it with (compel.py, denoise_latents.py)
PREFIXES = {"sd1": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
            "sd2": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
            "sdxl": {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}


def _bare_package(name: str, folder: Path) -> None:
    """Register package ``name`` without running its ``__init__`` (submodules still import from ``folder``)."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = [str(folder)]
    sys.modules.setdefault(name, module)


class _Lock:
    def read_lock(self):
        return nullcontext()

    def write_lock(self):
        return nullcontext()


@cache
def invokeai() -> SimpleNamespace:
    spec = importlib.util.find_spec("invokeai")
    if spec is None:
        pytest.skip("invokeai is not installed: pip install --no-deps -r requirements/no-deps.txt")
    root = Path(next(iter(spec.submodule_search_locations)))
    if "onnxruntime" not in sys.modules and importlib.util.find_spec("onnxruntime") is None:
        ort = types.ModuleType("onnxruntime")
        ort.__spec__ = importlib.machinery.ModuleSpec("onnxruntime", None)
        ort.InferenceSession = type("InferenceSession", (), {})
        ort.SessionOptions = type("SessionOptions", (), {})
        sys.modules["onnxruntime"] = ort
    load = "invokeai.backend.model_manager.load"
    _bare_package(load, root / "backend" / "model_manager" / "load")
    _bare_package(f"{load}.model_cache", root / "backend" / "model_manager" / "load" / "model_cache")
    cache_module = types.ModuleType(f"{load}.model_cache.model_cache")
    cache_module.MODEL_LOAD_LOCK = _Lock()
    sys.modules.setdefault(cache_module.__name__, cache_module)

    from invokeai.backend.patches.layer_patcher import LayerPatcher
    from invokeai.backend.patches.lora_conversions.peft_adapter_utils import normalize_peft_adapter_names
    from invokeai.backend.patches.lora_conversions.sd_lora_conversion_utils import lora_model_from_sd_state_dict
    from invokeai.backend.patches.lora_conversions.sdxl_lora_conversion_utils import (
        convert_sdxl_keys_to_diffusers_format,
    )

    return SimpleNamespace(LayerPatcher=LayerPatcher, normalize=normalize_peft_adapter_names,
                           from_sd=lora_model_from_sd_state_dict, sdxl_keys=convert_sdxl_keys_to_diffusers_format)


def pinned_clip_layout(text_encoder):
    """The CLIP module layout of the transformers InvokeAI 6.14 pins (>=5.5,<5.6): ``CLIPTextModel`` still has its
    ``text_model`` level there (transformers 5.6 folded it away, huggingface/transformers#44431), so give the
    installed, newer one that level back. ``CLIPTextModelWithProjection`` has it in every version."""
    import torch

    if any(name == "text_model" for name, _ in text_encoder.named_children()):
        return text_encoder

    class PinnedLayout(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.text_model = inner

    return PinnedLayout(text_encoder)


def invokeai_patch(path: Path, arch: str) -> tuple[str | None, set[tuple[str, str]]]:
    """(the exception InvokeAI raised or None, the (component, module) pairs whose weight it changed)."""
    import torch
    from safetensors.torch import load_file

    from tests.tiny_models import tiny_pipeline

    inv = invokeai()
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("bundle_emb")}
    try:
        state = inv.normalize(state)
        if arch == "sdxl":
            state = inv.sdxl_keys(state)
        patch = inv.from_sd(state_dict=state)
    except (ValueError, KeyError) as exc:
        return type(exc).__name__, set()
    pipe = tiny_pipeline(arch)
    changed = set()
    for component, prefix in PREFIXES[arch].items():
        model = getattr(pipe, component)
        if component.startswith("text_encoder"):
            model = pinned_clip_layout(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        try:
            # direct patching (what InvokeAI does on the GPU; its sidecar path needs its custom-layer wrappers)
            with inv.LayerPatcher.apply_smart_model_patches(model=model, patches=[(patch, 1.0)], prefix=prefix,
                                                            dtype=torch.float32, force_direct_patching=True):
                for name, param in model.named_parameters():
                    if not torch.equal(before[name], param.detach()):
                        changed.add((component, name.rsplit(".", 1)[0]))
        except RuntimeError as exc:  # a delta that does not fit: the generation fails
            return type(exc).__name__, set()
    return None, changed


def invokeai_load(path: Path, arch: str) -> RealLoad:
    from safetensors import safe_open

    from loraregistry.canonical import ModuleKey

    owner = modules_of(path)
    with safe_open(str(path), "np") as f:
        keys = set(f.keys())
    refused, changed = invokeai_patch(path, arch)
    if refused:
        return RealLoad(refused, frozenset(), frozenset(keys), frozenset(owner.values()))
    # transformers 5 CLIPTextModel has no text_model level; canonical CLIP paths always have it
    applied = {ModuleKey(c, p) for c, p in changed} | {ModuleKey(c, f"text_model.{p}") for c, p in changed}
    applied &= set(owner.values())
    used = {k for k, m in owner.items() if m in applied}
    return RealLoad(None, frozenset(applied), frozenset(keys - used), frozenset(owner.values()))
