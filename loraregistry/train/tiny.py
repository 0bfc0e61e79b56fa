"""Tiny, seeded Stable Diffusion pipelines built offline from configs: the ``tiny:<arch>`` base spec.

``lorareg train`` accepts ``model.base = "tiny:sd1"`` (or ``sd2``, ``sd2-v``, ``sdxl``; FLUX.1 and SD3.x come from
``tiny_mmdit``) so that the example config,
the tests and the benchmark train a real diffusers pipeline in seconds on a CPU without downloading anything. Every
builder seeds its own construction, so two builds give bit-identical weights (the package twin of
``tests/tiny_models.py``; the dimensions and the structural signals of each family are the same).
"""

from __future__ import annotations

import contextlib
from typing import Any

ARCHES = ("sd1", "sd2", "sd2-v", "sdxl")
_ALIASES = {"sd2-512": "sd2", "sd2-768-v": "sd2-v", "sdxl-base": "sdxl"}

# Fixed seeds per component so that changing one builder never changes another's weights.
SEED_UNET = 0
SEED_TEXT_ENCODER = 1
SEED_TEXT_ENCODER_2 = 2
SEED_VAE = 3

# Tokenizer: 256 byte-level symbols, the same with the end-of-word suffix, then the two CLIP specials.
_SOT = "<|startoftext|>"
_EOT = "<|endoftext|>"
MODEL_MAX_LENGTH = 77  # = CLIP max_position_embeddings; the pipelines pad prompts to this length


def canonical_arch(arch: str) -> str:
    arch = _ALIASES.get(arch, arch)
    if arch not in ARCHES:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHES}")
    return arch


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch for one construction without disturbing the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------- tokenizer


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's byte -> printable-unicode table, in byte order (what the ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_vocab() -> dict[str, int]:
    """A complete byte-level BPE vocabulary with no merges: every text tokenizes, one token per byte."""
    chars = _byte_level_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + [_SOT, _EOT]
    return {t: i for i, t in enumerate(tokens)}


def tiny_tokenizer():
    """A ``CLIPTokenizer`` built offline: transformers >= 5 takes the vocab and merges in memory; 4.x reads them
    from files, written to a temporary folder for the call."""
    import inspect

    from transformers import CLIPTokenizer

    if "vocab_file" not in inspect.signature(CLIPTokenizer.__init__).parameters:
        return CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=MODEL_MAX_LENGTH)
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="lorareg-tokenizer-") as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps(tiny_vocab()), encoding="utf-8")
        merges.write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(vocab_file=str(vocab), merges_file=str(merges), model_max_length=MODEL_MAX_LENGTH)


# --------------------------------------------------------------------------------------------- text encoders

# kind -> CLIPTextConfig fields. Hidden sizes differ per family so that tests can tell the encoders apart.
_TEXT_ENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    # SD1: OpenAI CLIP-L (quick_gelu, 12 layers, 768) -> 2 layers, 32 wide.
    "sd1": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, hidden_act="quick_gelu"),
    # SD2: OpenCLIP-H (gelu, 23 layers used, 1024) -> 3 layers, 48 wide.
    "sd2": dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, num_hidden_layers=3, hidden_act="gelu"),
    # SDXL text_encoder: CLIP-L as in SD1 (SDXL reads the penultimate layer, so >= 2 layers).
    "sdxl": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, hidden_act="quick_gelu"),
    # SDXL text_encoder_2: OpenCLIP-bigG (gelu, 32 layers, 1280, projection 1280) -> 3 layers, 64 wide.
    "sdxl_2": dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3, hidden_act="gelu",
        projection_dim=64,
    ),
}


def text_encoder_config(kind: str):
    from transformers import CLIPTextConfig

    kind = {"sd2-v": "sd2", **_ALIASES}.get(kind, kind)
    vocab = tiny_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=vocab[_SOT],
        eos_token_id=vocab[_EOT],  # != 2, so pooling looks for this id rather than argmax (the legacy rule)
        pad_token_id=vocab[_EOT],
        layer_norm_eps=1e-5,
        **_TEXT_ENCODER_CONFIGS[kind],
    )


def tiny_text_encoder(kind: str = "sd1"):
    """``CLIPTextModel`` for kind sd1/sd2/sdxl; ``CLIPTextModelWithProjection`` for ``sdxl_2``."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = text_encoder_config(kind)
    cls = CLIPTextModelWithProjection if kind == "sdxl_2" else CLIPTextModel
    seed = SEED_TEXT_ENCODER_2 if kind == "sdxl_2" else SEED_TEXT_ENCODER
    with _seeded(seed):
        model = cls(config)
    return model.eval()


# --------------------------------------------------------------------------------------------- unet

_SDXL_TIME_EMBED_DIM = 8  # real 256


def unet_config(arch: str) -> dict[str, Any]:
    arch = canonical_arch(arch)
    common = dict(
        sample_size=16,  # latent 16x16 -> 32x32 pixels with the 2-block tiny VAE
        in_channels=4,
        out_channels=4,
        layers_per_block=2,  # as SD1/SD2/SDXL: gives attentions.0/.1 and up-block attentions.2
        block_out_channels=(8, 16),
        norm_num_groups=4,  # real 32; must divide every channel count
    )
    if arch == "sd1":
        return dict(
            common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
            cross_attention_dim=_TEXT_ENCODER_CONFIGS["sd1"]["hidden_size"],
            use_linear_projection=False,
        )
    if arch in ("sd2", "sd2-v"):
        return dict(
            common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4),
            cross_attention_dim=_TEXT_ENCODER_CONFIGS["sd2"]["hidden_size"],
            use_linear_projection=True,
        )
    te1 = _TEXT_ENCODER_CONFIGS["sdxl"]["hidden_size"]
    te2 = _TEXT_ENCODER_CONFIGS["sdxl_2"]
    return dict(
        common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=te1 + te2["hidden_size"],
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED_DIM,
        # 6 micro-conditioning numbers (original size, crop, target size) + the pooled text_encoder_2 embedding
        projection_class_embeddings_input_dim=6 * _SDXL_TIME_EMBED_DIM + te2["projection_dim"],
    )


def tiny_unet(arch: str = "sd1"):
    from diffusers import UNet2DConditionModel

    config = unet_config(arch)
    with _seeded(SEED_UNET):
        model = UNet2DConditionModel(**config)
    return model.eval()


# --------------------------------------------------------------------------------------------- vae, scheduler


def tiny_vae():
    from diffusers import AutoencoderKL

    with _seeded(SEED_VAE):
        vae = AutoencoderKL(
            block_out_channels=(8, 16),  # 2 blocks -> vae_scale_factor 2
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
        )
    return vae.eval()


def tiny_scheduler(arch: str = "sd1"):
    from diffusers import DDIMScheduler

    arch = canonical_arch(arch)
    # SD's training schedule; v-prediction only for the 768-v SD2 variant.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if arch == "sd2-v" else "epsilon",
    )


# --------------------------------------------------------------------------------------------- pipelines


def tiny_pipeline(arch: str = "sd1"):
    """A complete ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` from tiny parts (no safety checker)."""
    arch = canonical_arch(arch)
    if arch == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=tiny_vae(),
            text_encoder=tiny_text_encoder("sdxl"),
            text_encoder_2=tiny_text_encoder("sdxl_2"),
            tokenizer=tiny_tokenizer(),
            tokenizer_2=tiny_tokenizer(),
            unet=tiny_unet("sdxl"),
            scheduler=tiny_scheduler("sdxl"),
        )
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(arch),
        tokenizer=tiny_tokenizer(),
        unet=tiny_unet(arch),
        scheduler=tiny_scheduler(arch),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


TINY_PREFIX = "tiny:"


def is_tiny(spec: str) -> bool:
    return spec.startswith(TINY_PREFIX)


def tiny_pipeline_from_spec(spec: str):
    """``tiny:sd1`` -> ``tiny_pipeline("sd1")``, ``tiny:flux1-dev`` -> ``tiny_mmdit.tiny_mmdit_pipeline``; raises
    ValueError naming the known arches."""
    from . import tiny_mmdit

    arch = spec[len(TINY_PREFIX):]
    if arch in tiny_mmdit.ARCHES:
        return tiny_mmdit.tiny_mmdit_pipeline(arch)
    if _ALIASES.get(arch, arch) not in ARCHES:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHES + tiny_mmdit.ARCHES}")
    return tiny_pipeline(arch)
