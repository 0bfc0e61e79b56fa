"""``flow_step(batch, parts, config, generator) -> loss``: one flow-matching loss for FLUX.1 and SD3.x.

Rectified flow as both families train: ``x_t = (1 - s) x0 + s noise`` and the transformer predicts the velocity
``noise - x0``. The noise level ``s`` is drawn the way diffusers' train_dreambooth_lora_flux.py / _sd3.py draw it: ``u``
from a density (uniform, logit-normal or mode, ``flow.timestep_sampling``), then the base scheduler's sigma for
``u`` (its static shift included: 3.0 for SD3, none for FLUX, whose shift is resolution-dependent at
inference only); ``flow.shift`` instead shifts ``u`` itself (kohya's ``discrete_flow_shift``).

FLUX packs the 16-channel latents into 2x2 patches (64 features per token) with per-patch position ids, takes the
T5 sequence with zero text ids, CLIP's pooled embedding and, for dev, the distilled guidance scale; its timestep
input is ``s`` (the model scales by 1000). SD3 takes unpacked latents, the CLIP+T5 sequence, the two CLIPs' pooled
projections and the timestep ``1000 s``. Every random draw comes from ``generator`` (the trainer checkpoints it).
"""

from __future__ import annotations

import math
from typing import Any

from .batches import Batch
from .config import TrainConfig
from .encoding import encode_text
from .errors import ConfigError

# Per-family defaults of the diffusers training scripts.
DEFAULT_SAMPLING = {"flux": "uniform", "sd3": "logit_normal"}
DEFAULT_TEXT_LENGTH = {"flux1-dev": 512, "flux1-schnell": 256}  # FluxPipeline's limits; SD3's script: 77
SD3_TEXT_LENGTH = 77


def text_length(parts, config: TrainConfig) -> int:
    """T5 tokens per caption: ``flow.max_sequence_length``, else the family's default capped by the tokenizer."""
    tokenizer = parts.tokenizers()[-1]  # the T5 tokenizer is the last one of both families
    limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
    limit = min(limit, 512)  # tokenizers without a limit report ~1e30; FLUX and SD3 pipelines refuse > 512
    wanted = config.flow.max_sequence_length
    if wanted is None:
        return min(DEFAULT_TEXT_LENGTH.get(parts.architecture.id, SD3_TEXT_LENGTH), limit)
    if wanted > limit:
        raise ConfigError(f"flow.max_sequence_length {wanted} is more than the base's T5 tokenizer takes ({limit})",
                          hint=f"use at most {limit}")
    return wanted


def check_flow_config(parts, config: TrainConfig) -> None:
    """Settings that mean nothing under flow matching, and image sizes the transformer cannot patch."""
    loop = config.train
    for name, value in (("min_snr_gamma", loop.min_snr_gamma), ("noise_offset", loop.noise_offset)):
        if value:
            raise ConfigError(f"train.{name} is set but a {parts.architecture.id} base is trained with flow matching "
                              "(no noise schedule to reweight or offset)", hint=f"drop train.{name}")
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    patch = 2 if parts.architecture.family == "flux" else int(parts.denoiser.config.patch_size)
    step = vae_factor * patch
    data = config.data
    sizes = [("resolution", data.resolution)] + ([("bucket_step", data.bucket_step)] if data.buckets else [])
    for name, value in sizes:
        if value % step:
            raise ConfigError(f"data.{name} must be a multiple of {step} for {parts.architecture.id} (VAE "
                              f"{vae_factor}x, {patch}x{patch} patches), got {value}",
                              hint=f"use a multiple of {step}")


def sample_sigmas(parts, config: TrainConfig, count: int, generator: Any):
    """``count`` noise levels in (0, 1], float32 on the CPU."""
    import torch

    flow = config.flow
    scheme = flow.timestep_sampling or DEFAULT_SAMPLING[parts.architecture.family]
    if scheme == "logit_normal":
        u = torch.sigmoid(flow.logit_mean + flow.logit_std * torch.randn((count,), generator=generator))
    else:
        u = torch.rand((count,), generator=generator)
        if scheme == "mode":  # diffusers' compute_density_for_timestep_sampling("mode")
            u = 1 - u - flow.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    if flow.shift is not None:
        u = u.clamp(1e-6, 1.0)
        return flow.shift * u / (1 + (flow.shift - 1) * u)
    sigmas = parts.noise_scheduler.sigmas.float().cpu()  # descending from 1
    steps = parts.noise_scheduler.config.num_train_timesteps
    # u is the noise level before the shift, as in the SD3 paper and kohya (a positive logit_mean means more noise);
    # diffusers' scripts index the descending sigmas with u itself, which only differs when logit_mean != 0
    index = ((1 - u) * steps).long().clamp(0, steps - 1)
    return sigmas[index]


def flow_step(batch: Batch, parts, config: TrainConfig, generator: Any) -> Any:
    import torch
    import torch.nn.functional as F

    transformer = parts.model("transformer")
    device, dtype = parts.denoiser_io()

    def randn(*shape: int):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    vae = parts.vae.config
    mean, std = batch.latent_mean.to(device), batch.latent_std.to(device)
    latents = (mean + std * randn(*mean.shape) - (vae.shift_factor or 0.0)) * vae.scaling_factor
    noise = randn(*latents.shape)
    count = latents.shape[0]
    sigmas = sample_sigmas(parts, config, count, generator).to(device)
    s = sigmas.view(count, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    target = noise - latents

    text = batch.text if batch.text is not None else encode_text(parts, batch.captions)
    hidden, pooled = text.hidden.to(device, dtype), text.pooled.to(device, dtype)
    if parts.architecture.family == "flux":
        pred, target = _flux_forward(transformer, noisy, target, sigmas, hidden, pooled, config, dtype)
    else:
        pred = transformer(hidden_states=noisy.to(dtype), timestep=(sigmas * 1000).to(dtype),
                           encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


def pack_latents(latents):
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: FLUX's 2x2 patches, row-major (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(height: int, width: int, device, dtype):
    """[H/2 * W/2, 3] position ids of the packed patches: (0, row, column) (FluxPipeline's latent image ids)."""
    import torch

    rows = torch.arange(height // 2, device=device).view(-1, 1).expand(height // 2, width // 2)
    cols = torch.arange(width // 2, device=device).view(1, -1).expand(height // 2, width // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1)
    return ids.reshape(-1, 3).to(dtype)


def _flux_forward(transformer, noisy, target, sigmas, hidden, pooled, config: TrainConfig, dtype):
    import torch

    count, _, height, width = noisy.shape
    device = noisy.device
    module = getattr(transformer, "module", transformer)  # DDP wraps it
    guidance = None
    if module.config.get("guidance_embeds"):
        guidance = torch.full((count,), config.flow.guidance_scale, device=device, dtype=dtype)
    pred = transformer(hidden_states=pack_latents(noisy).to(dtype), timestep=sigmas.to(dtype), guidance=guidance,
                       pooled_projections=pooled, encoder_hidden_states=hidden,
                       txt_ids=torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype),
                       img_ids=image_ids(height, width, device, dtype), return_dict=False)[0]
    return pred, pack_latents(target)  # the loss is a mean: comparing packed tensors is the same
