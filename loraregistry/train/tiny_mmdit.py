"""Tiny, seeded FLUX.1 and SD3.x pipelines built offline from configs: ``tiny:flux1-dev``, ``tiny:flux1-schnell``,
``tiny:sd3-medium``, ``tiny:sd35-medium`` and ``tiny:sd35-large``.

Each keeps the structure its family is recognised and trained by, at widths a CPU trains in seconds: FLUX's
guidance embedding (dev only) and 2x2-packed 16-channel latents, SD3.5 medium's dual attention (``attn2``) and
RMS q/k norms, SD3.5 large's q/k norms without dual attention; a 16-channel VAE with the family's scaling and
shift factors; a gated-GELU T5 (as T5 v1.1 XXL) with a byte-level Unigram tokenizer; the CLIP encoders of
``tiny.py``. Every component seeds its own construction, so two builds are bit-identical.
"""

from __future__ import annotations

from typing import Any

from .tiny import _seeded, text_encoder_config, tiny_text_encoder, tiny_tokenizer

ARCHES = ("flux1-dev", "flux1-schnell", "sd3-medium", "sd35-medium", "sd35-large")

SEED_TRANSFORMER = 10
SEED_T5 = 11
SEED_VAE = 12
SEED_CLIP_L = 13
SEED_CLIP_G = 14

T5_MAX_LENGTH = 64  # the tiny tokenizer's model_max_length: caps the family's max_sequence_length (512 / 256 / 77)
_T5_WIDTH = 96  # >= the two SD3 CLIPs side by side (32 + 64): SD3 pads the CLIP embeddings to the T5 width
_CLIP_L_WIDTH = 32  # tiny.py's SD1 / SDXL CLIP-L
_CLIP_G_WIDTH = 64  # tiny.py's SDXL CLIP-bigG

# The real VAEs' latent normalisation (diffusers configs of black-forest-labs/FLUX.1-dev and
# stabilityai/stable-diffusion-3.5-medium): latents = (mean - shift) * scale.
_VAE_FACTORS = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609)}
# The real schedulers (FlowMatchEulerDiscreteScheduler configs of the same repos).
_SCHEDULERS = {
    "flux1-dev": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096),
    "flux1-schnell": dict(shift=1.0, use_dynamic_shifting=False),
    "sd3": dict(shift=3.0),
}


def family_of(arch: str) -> str:
    return "flux" if arch.startswith("flux") else "sd3"


def canonical_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHES}")
    return arch


# --------------------------------------------------------------------------------------------- T5


def _t5_vocab() -> list[tuple[str, float]]:
    """pad, eos, unk, then one piece per byte-level symbol (with and without sentencepiece's word marker): every
    text tokenizes without merges. Scores are equal; ids are what the model embeds."""
    from .tiny import _byte_level_alphabet

    chars = _byte_level_alphabet()
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in chars] + \
        [("\u2581" + c, -1.0) for c in chars]


def tiny_t5_tokenizer():
    """A ``T5TokenizerFast`` built in memory (no sentencepiece model file)."""
    from transformers import T5TokenizerFast

    try:
        return T5TokenizerFast(vocab=_t5_vocab(), extra_ids=0, model_max_length=T5_MAX_LENGTH)
    except TypeError:  # transformers 4.x: wants a file or a tokenizers object
        from tokenizers import Tokenizer, models, pre_tokenizers

        backend = Tokenizer(models.Unigram(_t5_vocab(), unk_id=2))
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        return T5TokenizerFast(tokenizer_object=backend, extra_ids=0, model_max_length=T5_MAX_LENGTH,
                               pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(_t5_vocab()), d_model=_T5_WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                      relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with _seeded(SEED_T5):
        return T5EncoderModel(config).eval()


def _clip_with_projection(width: int, seed: int):
    """SD3's CLIP encoders (``CLIPTextModelWithProjection``; the pooled embedding is the projection)."""
    from transformers import CLIPTextModelWithProjection

    kind = "sdxl" if width == _CLIP_L_WIDTH else "sdxl_2"
    config = text_encoder_config(kind)
    config.projection_dim = width
    with _seeded(seed):
        return CLIPTextModelWithProjection(config).eval()


# --------------------------------------------------------------------------------------------- transformer, vae


def transformer_config(arch: str) -> dict[str, Any]:
    arch = canonical_arch(arch)
    if family_of(arch) == "flux":
        return dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=8,
                    num_attention_heads=2, joint_attention_dim=_T5_WIDTH, pooled_projection_dim=_CLIP_L_WIDTH,
                    guidance_embeds=arch == "flux1-dev", axes_dims_rope=(2, 2, 4))
    extra: dict[str, Any] = {}
    if arch in ("sd35-medium", "sd35-large"):
        extra["qk_norm"] = "rms_norm"
    if arch == "sd35-medium":
        extra["dual_attention_layers"] = (0,)
    return dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=_T5_WIDTH, caption_projection_dim=16,
                pooled_projection_dim=_CLIP_L_WIDTH + _CLIP_G_WIDTH, pos_embed_max_size=16, **extra)


def tiny_transformer(arch: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if family_of(arch) == "flux" else SD3Transformer2DModel
    with _seeded(SEED_TRANSFORMER):
        return cls(**transformer_config(arch)).eval()


def tiny_vae(family: str):
    from diffusers import AutoencoderKL

    scale, shift = _VAE_FACTORS[family]
    with _seeded(SEED_VAE):
        vae = AutoencoderKL(
            block_out_channels=(8, 16), in_channels=3, out_channels=3,  # 2 blocks -> vae_scale_factor 2
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=scale, shift_factor=shift,
            use_quant_conv=False, use_post_quant_conv=False)
    return vae.eval()


def tiny_scheduler(arch: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **_SCHEDULERS.get(arch, _SCHEDULERS["sd3"]))


# --------------------------------------------------------------------------------------------- pipelines


def tiny_mmdit_pipeline(arch: str):
    """A complete ``FluxPipeline`` / ``StableDiffusion3Pipeline`` from tiny parts."""
    arch = canonical_arch(arch)
    if family_of(arch) == "flux":
        from diffusers import FluxPipeline

        return FluxPipeline(scheduler=tiny_scheduler(arch), vae=tiny_vae("flux"),
                            text_encoder=tiny_text_encoder("sd1"), tokenizer=tiny_tokenizer(),
                            text_encoder_2=tiny_t5(), tokenizer_2=tiny_t5_tokenizer(),
                            transformer=tiny_transformer(arch))
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=tiny_transformer(arch), scheduler=tiny_scheduler(arch), vae=tiny_vae("sd3"),
        text_encoder=_clip_with_projection(_CLIP_L_WIDTH, SEED_CLIP_L), tokenizer=tiny_tokenizer(),
        text_encoder_2=_clip_with_projection(_CLIP_G_WIDTH, SEED_CLIP_G), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5(), tokenizer_3=tiny_t5_tokenizer())
