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


# --- FLUX.1 -------------------------------------------------------------------------------------------------
#
# The LyCORIS-file branch of ``LoRALoader._load_model`` for a FLUX base, in its order: each ``is_state_dict_likely_in_
# flux_<format>_format`` detector, the first that says yes converts (flux2 and control files are not FLUX.1 LoRAs
# and are left out of the chain's answers only by never being made here), else ``ValueError("LoRA model is in
# unsupported FLUX format")``. The patches go onto InvokeAI's own BFL-layout ``Flux`` model (tiny params mirroring
# tests/oracle_diffusers.py's tiny FluxTransformer2DModel, seeded) with the ``lora_transformer-`` prefix, and onto
# the tiny CLIP-L with ``lora_clip-``; the tiny pipeline has no T5, so ``lora_t5-`` layers find no model.
FLUX_CHAIN = (
    ("flux_diffusers_lora_conversion_utils", "is_state_dict_likely_in_flux_diffusers_format",
     "lora_model_from_flux_diffusers_state_dict"),
    ("flux_kohya_lora_conversion_utils", "is_state_dict_likely_in_flux_kohya_format",
     "lora_model_from_flux_kohya_state_dict"),
    ("flux_onetrainer_bfl_lora_conversion_utils", "is_state_dict_likely_in_flux_onetrainer_bfl_format",
     "lora_model_from_flux_onetrainer_bfl_state_dict"),
    ("flux_onetrainer_lora_conversion_utils", "is_state_dict_likely_in_flux_onetrainer_format",
     "lora_model_from_flux_onetrainer_state_dict"),
    ("flux_control_lora_utils", "is_state_dict_likely_flux_control", "lora_model_from_flux_control_state_dict"),
    ("flux_aitoolkit_lora_conversion_utils", "is_state_dict_likely_in_flux_aitoolkit_format",
     "lora_model_from_flux_aitoolkit_state_dict"),
    ("flux_xlabs_lora_conversion_utils", "is_state_dict_likely_in_flux_xlabs_format",
     "lora_model_from_flux_xlabs_state_dict"),
    ("flux_bfl_peft_lora_conversion_utils", "is_state_dict_likely_in_flux_bfl_peft_format",
     "lora_model_from_flux_bfl_peft_state_dict"),
)
_NO_ALPHA = {"lora_model_from_flux_diffusers_state_dict", "lora_model_from_flux_bfl_peft_state_dict"}
# Module attributes of torchvision that InvokeAI's FLUX model imports bind at import time. Read in 6.14.2: they are
# ``import torchvision`` (backend/flux/extensions/regional_prompting_extension.py, used in
# ``_prepare_restricted_attn_mask``'s mask resize only) and ``import torchvision.transforms as T``
# (backend/flux/extensions/kontext_extension.py, used in ``_prepare_kontext`` only): neither runs when a model is
# built or patched. The PyPI torchvision 0.28.0 that matches torch 2.13.0 is a CUDA build whose extension needs
# libtorch_cuda (``import torchvision`` fails on this CPU torch), so a stand-in is registered while InvokeAI's FLUX
# modules import, then removed; any call into it raises.
_TORCHVISION = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _torchvision_stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{name}.{attr} is a stand-in (tests/oracle_invokeai.py): the LoRA path never calls it")

        return unavailable

    module.__getattr__ = __getattr__
    return module


@cache
def invokeai_flux() -> SimpleNamespace:
    import importlib

    invokeai()
    if importlib.util.find_spec("torchvision") is not None:
        from invokeai.backend.flux.model import Flux, FluxParams
        from invokeai.backend.flux.util import get_flux_transformers_params
    else:
        # diffusers and transformers cache "torchvision is missing" before the stand-in exists
        import diffusers.utils
        import transformers.utils

        diffusers.utils.is_torchvision_available()
        transformers.utils.is_torchvision_available()
        sys.modules.update({name: _torchvision_stand_in(name) for name in _TORCHVISION})
        try:
            from invokeai.backend.flux.model import Flux, FluxParams
            from invokeai.backend.flux.util import get_flux_transformers_params
        finally:
            for name in _TORCHVISION:
                sys.modules.pop(name, None)
    from invokeai.backend.patches.lora_conversions import flux_lora_constants

    package = "invokeai.backend.patches.lora_conversions"
    chain = [(importlib.import_module(f"{package}.{module}"), detect, convert)
             for module, detect, convert in FLUX_CHAIN]
    return SimpleNamespace(Flux=Flux, FluxParams=FluxParams, params_of=get_flux_transformers_params, chain=chain,
                           constants=flux_lora_constants)


def tiny_invokeai_flux():
    """InvokeAI's ``Flux`` with the tiny FluxTransformer2DModel's sizes (tests/oracle_diffusers.py)."""
    import torch

    from tests.oracle_diffusers import SEED, TRANSFORMER_CONFIGS

    c = TRANSFORMER_CONFIGS["flux"]
    inv = invokeai_flux()
    params = inv.FluxParams(in_channels=c["in_channels"], vec_in_dim=c["pooled_projection_dim"],
                            context_in_dim=c["joint_attention_dim"],
                            hidden_size=c["num_attention_heads"] * c["attention_head_dim"], mlp_ratio=4.0,
                            num_heads=c["num_attention_heads"], depth=c["num_layers"],
                            depth_single_blocks=c["num_single_layers"], axes_dim=list(c["axes_dims_rope"]),
                            theta=10000, qkv_bias=True, guidance_embed=False)
    torch.manual_seed(SEED)
    return inv.Flux(params).eval()


def flux1_width_invokeai_flux():
    """InvokeAI's ``Flux`` at FLUX.1-dev's own params (InvokeAI's preset) but one double and one single block, all
    weights zero (built on the meta device, then given zeroed memory: ~2 GB): a model the diffusers conversion's
    fixed widths fit, small enough to patch on a CPU."""
    import dataclasses

    import torch

    inv = invokeai_flux()  # first: it registers the import-time stand-ins the taxonomy module needs
    from invokeai.backend.model_manager.taxonomy import FluxVariantType

    dev = inv.params_of(FluxVariantType.Dev)
    with torch.device("meta"):
        model = inv.Flux(dataclasses.replace(dev, depth=1, depth_single_blocks=1))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    return model.eval()


def invokeai_flux_convert(state: dict):
    """The converter the loader's chain picks, and its ModelPatchRaw (exceptions propagate)."""
    for module, detect, convert in invokeai_flux().chain:
        if getattr(module, detect)(state_dict=state):
            converter = getattr(module, convert)
            return converter(state_dict=state, alpha=None) if convert in _NO_ALPHA else converter(state_dict=state)
    raise ValueError("LoRA model is in unsupported FLUX format")


def invokeai_flux_patch(path: Path, transformer=None) -> tuple[str | None, set[str]]:
    """(the exception InvokeAI raised or None, the file keys whose tensors changed a model weight). ``transformer``:
    an all-zero InvokeAI ``Flux`` to patch instead of the tiny one (a weight changed = it is no longer zero)."""
    import torch
    from safetensors.torch import load_file

    from tests.tiny_models import tiny_text_encoder

    inv = invokeai()
    flux = invokeai_flux()
    file_state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("bundle_emb")}
    by_tensor = {id(v): k for k, v in file_state.items()}
    try:
        patch = invokeai_flux_convert(inv.normalize(dict(file_state)))
    except (ValueError, KeyError, AssertionError) as exc:
        return type(exc).__name__, set()
    # which file keys each layer holds, taken before patching (which may cast the tensors to new objects)
    sources = {key: {by_tensor[id(t)] for t in _tensors_of(layer) if id(t) in by_tensor}
               for key, layer in patch.layers.items()}
    used: set[str] = set()
    models = {flux.constants.FLUX_LORA_TRANSFORMER_PREFIX: transformer or tiny_invokeai_flux(),
              flux.constants.FLUX_LORA_CLIP_PREFIX: pinned_clip_layout(tiny_text_encoder("sd1"))}
    for prefix, model in models.items():
        zero = model is transformer
        before = {} if zero else {n: p.detach().clone() for n, p in model.named_parameters()}
        try:
            with inv.LayerPatcher.apply_smart_model_patches(model=model, patches=[(patch, 1.0)], prefix=prefix,
                                                            dtype=torch.float32, force_direct_patching=True):
                changed = {n.rsplit(".", 1)[0] for n, p in model.named_parameters()
                           if (bool(p.detach().any()) if zero else not torch.equal(before[n], p.detach()))}
        except RuntimeError as exc:  # a delta that does not fit: the generation fails
            return type(exc).__name__, set()
        used |= {k for key, keys in sources.items() if key.startswith(prefix) and key[len(prefix):] in changed
                 for k in keys}
    return None, used


def _tensors_of(layer) -> list:
    """The file's tensors a layer holds (merged q/k/v layers hold one sub-layer per file module)."""
    found = []
    for value in vars(layer).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if hasattr(item, "shape"):
                found.append(item)
            elif hasattr(item, "__dict__") and not isinstance(item, type):
                found += _tensors_of(item)
    return found


def invokeai_flux_load(path: Path, transformer=None) -> RealLoad:
    from safetensors import safe_open

    owner = modules_of(path)
    with safe_open(str(path), "np") as f:
        keys = set(f.keys())
    refused, used = invokeai_flux_patch(path, transformer)
    if refused:
        return RealLoad(refused, frozenset(), frozenset(keys), frozenset(owner.values()))
    applied = {owner[k] for k in used if k in owner}
    used_by_applied = {k for k, m in owner.items() if m in applied}
    return RealLoad(None, frozenset(applied), frozenset(keys - used_by_applied), frozenset(owner.values()))
