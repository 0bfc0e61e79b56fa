"""Load an adapter with the installed diffusers (and peft) into fresh tiny pipelines: what they really apply.

SD1/SD2/SDXL pipelines come from tests/tiny_models.py; SD3 and FLUX.1 pipelines are built here from tiny
transformer configs (seeded) with the tiny CLIP text encoders; T5, VAE, tokenizers and scheduler are left out
(``load_lora_weights`` never touches them). Files for SD3/Flux are written by the real writers: peft injects
LoRA into the tiny transformer / text encoders and ``<Pipeline>.save_lora_weights`` writes the file.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path

from tests.oracle_cases import RealLoad, modules_of

ADAPTER = "oracle"
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
TRANSFORMER_CONFIGS = {
    "flux": dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(2, 2, 4)),
    "sd3": dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=96, out_channels=4,
                pos_embed_max_size=16),
}
SEED = 1234


def tiny_transformer(family: str):
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    torch.manual_seed(SEED)
    return cls(**TRANSFORMER_CONFIGS[family]).eval()


def tiny_mmdit_pipeline(family: str):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from tests.tiny_models import tiny_text_encoder

    if family == "flux":
        return FluxPipeline(scheduler=None, vae=None, text_encoder=tiny_text_encoder("sd1"), tokenizer=None,
                            text_encoder_2=None, tokenizer_2=None, transformer=tiny_transformer(family))
    return StableDiffusion3Pipeline(
        scheduler=None, vae=None, text_encoder=_clip_l_with_projection(), tokenizer=None,
        text_encoder_2=tiny_text_encoder("sdxl_2"), tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        transformer=tiny_transformer(family))


def _clip_l_with_projection():
    """SD3's first text encoder: CLIP-L as ``CLIPTextModelWithProjection`` (it keeps the ``text_model`` level that
    transformers 5's ``CLIPTextModel`` drops), the tiny CLIP-L config, seeded."""
    import torch
    from transformers import CLIPTextModelWithProjection

    from loraregistry.train.tiny import text_encoder_config

    torch.manual_seed(SEED)
    return CLIPTextModelWithProjection(text_encoder_config("sdxl")).eval()


def pipeline(arch: str):
    from tests.tiny_models import tiny_pipeline

    return tiny_mmdit_pipeline(arch) if arch in ("sd3", "flux") else tiny_pipeline(arch)


@cache
def pipeline_dir(arch: str, root: str) -> Path:
    """A saved tiny pipeline: the base folder verify checks module names and shapes against."""
    folder = Path(root) / f"tiny-{arch}"
    if not folder.exists():
        logging.getLogger("diffusers").setLevel(logging.ERROR)
        pipeline(arch).save_pretrained(folder)
    return folder


def write_with_diffusers(family: str, path: Path, *, text_encoders: bool = True, dora: bool = False) -> Path:
    """peft LoRA (rank 4, seeded non-zero init) on the tiny transformer (+ CLIP encoders), saved by the pipeline
    class's own ``save_lora_weights``."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = tiny_mmdit_pipeline(family)
    torch.manual_seed(SEED)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2"] + (["proj_mlp", "proj_out"] if family == "flux" else [])
    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False, use_dora=dora)
    layers = {"transformer_lora_layers": get_peft_model_state_dict(inject_adapter_in_model(config,
                                                                                           pipe.transformer))}
    if text_encoders:
        clip = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                          init_lora_weights=False)
        names = ("text_encoder", "text_encoder_2") if family == "sd3" else ("text_encoder",)
        for name in names:
            layers[f"{name}_lora_layers"] = get_peft_model_state_dict(inject_adapter_in_model(clip,
                                                                                           getattr(pipe, name)))
    type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, **layers)
    return path


def diffusers_load(path: Path, arch: str) -> RealLoad:
    """``pipe.load_lora_weights(path)`` on a fresh tiny pipeline: which modules got the adapter (and their DoRA
    magnitude), or which exception it raised."""
    from diffusers.utils import logging as dlogging

    from loraregistry.canonical import ModuleKey

    pipe = pipeline(arch)
    dlogging.get_logger("diffusers").setLevel(logging.ERROR)
    owner = modules_of(path)
    refused = None
    try:
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER)
    except (ValueError, RuntimeError, KeyError) as exc:
        refused = type(exc).__name__
    applied, magnitude = set(), set()
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None or refused:
            continue
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and ADAPTER in module.lora_A:
                key = ModuleKey(component, name)
                if ModuleKey(component, f"text_model.{name}") in owner.values():
                    key = ModuleKey(component, f"text_model.{name}")  # transformers 5 CLIP drops the level
                applied.add(key)
                if ADAPTER in getattr(module, "lora_magnitude_vector", {}):
                    magnitude.add(key)
    unused = {k for k, m in owner.items() if m not in applied}
    unused |= {k for k, m in owner.items() if m in applied - magnitude and _is_dora(k)}
    keys = _keys(path)
    unused |= keys - set(owner)  # keys of no module: dropped, or the load failed
    return RealLoad(refused, frozenset(applied & set(owner.values())), frozenset(unused if not refused else keys),
                    frozenset(owner.values()))


def peft_load(path: Path, arch: str, component: str) -> RealLoad:
    """``set_peft_model_state_dict`` into one component of a fresh tiny pipeline, after injecting the LoRA
    config the file implies (peft needs one: the targets are the file's module names, rank from the file)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from loraregistry.canonical import ModuleKey

    model = getattr(pipeline(arch), component)
    owner = modules_of(path)
    state = load_file(str(path))
    modules = {m for m in owner.values() if m.component == component}
    refused = None
    applied: set = set()
    if modules:
        names = sorted({m.path for m in modules})
        existing = {n for n, _ in model.named_modules()}
        targets = [n for n in names if n in existing]
        if targets:
            dora = any("lora_magnitude_vector" in k for k in state)
            # per-module ranks, as the rank_pattern of the adapter_config.json PeftModel.from_pretrained reads
            ranks = {m.path: state[k].shape[0] for k, m in owner.items()
                     if m.component == component and ("lora_A" in k or "lora_down" in k)}
            pattern = {re.escape(path): r for path, r in ranks.items() if path in targets and r != _rank(state)}
            inject_adapter_in_model(LoraConfig(r=_rank(state), lora_alpha=_rank(state), target_modules=targets,
                                               rank_pattern=pattern, alpha_pattern=pattern, use_dora=dora),
                                    model, adapter_name=ADAPTER)
            before = {n: p.detach().clone() for n, p in model.named_parameters() if ADAPTER in n}
            try:
                result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
            except RuntimeError as exc:
                refused = type(exc).__name__
            else:
                del result
                for name, param in model.named_parameters():
                    if ADAPTER in name and not torch.equal(before[name], param.detach()):
                        applied.add(ModuleKey(component, name.split(".lora_")[0]))
    applied &= set(owner.values())
    keys = _keys(path)
    used = {k for k, m in owner.items() if m in applied}
    return RealLoad(refused, frozenset(applied), frozenset(keys if refused else keys - used),
                    frozenset(owner.values()))


def _rank(state) -> int:
    """The rank of the file's first peft/kohya down factor; files without one carry no name peft reads, so the
    injected rank cannot matter (their keys match no parameter)."""
    return next((v.shape[0] for k, v in state.items() if "lora_A" in k or "lora_down" in k), 4)


def _is_dora(key: str) -> bool:
    return "dora_scale" in key or "lora_magnitude_vector" in key


def _keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return set(f.keys())
