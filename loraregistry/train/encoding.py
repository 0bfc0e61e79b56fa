"""Images -> VAE latent distributions, captions -> text conditioning, the way each family's pipeline does it.

SD1/SD2 condition on the text encoder's last hidden state. SDXL concatenates the penultimate hidden states of both
encoders, adds the second encoder's pooled projection, and six size/crop numbers per sample ("time ids").
FLUX.1 and SD3.x encode with their pipeline's own ``encode_prompt`` (T5 sequence + CLIP pooled; SD3 also the
CLIP sequences), so training sees exactly what inference feeds the transformer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .buckets import Placement


@dataclass
class TextConditioning:
    hidden: Any  # [B, 77, D] (FLUX: [B, T5 tokens, D]; SD3: [B, 77 + T5 tokens, D])
    pooled: Any | None = None  # [B, P] (SDXL, FLUX, SD3)


def load_pixels(path, placement: Placement):
    """An image file -> a [3, H, W] float tensor in [-1, 1], scaled to cover its bucket and center-cropped."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize(placement.scaled, Image.Resampling.LANCZOS)
    top, left = placement.crop
    width, height = placement.bucket
    im = im.crop((left, top, left + width, top + height))
    array = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def encode_pixels(vae, pixels) -> tuple[Any, Any]:
    """[B, 3, H, W] -> (mean, std) of the latent distribution, float32. Sampling happens per step."""
    import torch

    with torch.no_grad():
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def tokenize(tokenizer, captions: list[str]):
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(parts, captions: list[str]) -> TextConditioning:
    """Conditioning for a batch of captions. Gradients flow when a text encoder carries LoRA."""
    if parts.is_flow:
        return _encode_flow(parts, captions)
    encoders = parts.text_encoders()
    tokenizers = parts.tokenizers()
    if not parts.is_sdxl:
        ids = tokenize(tokenizers[0], captions).to(parts.pipeline.text_encoder.device)
        return TextConditioning(hidden=encoders[0](ids)[0])
    import torch

    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders):
        ids = tokenize(tokenizer, captions).to(parts.pipeline.text_encoder.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder is CLIPTextModelWithProjection: text_embeds
    return TextConditioning(hidden=torch.cat(hidden, dim=-1), pooled=pooled)


def _encode_flow(parts, captions: list[str]) -> TextConditioning:
    pipeline = parts.pipeline
    device = pipeline.text_encoder.device
    if parts.architecture.family == "flux":
        hidden, pooled, _ = pipeline.encode_prompt(captions, prompt_2=None, device=device,
                                                   max_sequence_length=parts.text_max_length)
    else:
        hidden, _, pooled, _ = pipeline.encode_prompt(captions, None, None, device=device,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=parts.text_max_length)
    return TextConditioning(hidden=hidden, pooled=pooled)


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> list[int]:
    """SDXL micro-conditioning: (orig h, orig w, crop top, crop left, target h, target w)."""
    (ow, oh), (top, left), (tw, th) = original, crop, target
    return [oh, ow, top, left, th, tw]
