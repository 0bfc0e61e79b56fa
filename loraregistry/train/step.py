"""``train_step(batch, components, config, generator) -> loss``: one denoising loss, nothing else.

Noise (with optional offset), timesteps and the latent sample come from ``generator``, so the trainer owns every
random draw and can checkpoint it. The target is the noise (epsilon) or the velocity (v-prediction); min-SNR-gamma
reweights per sample (Hang et al. 2023; the v-prediction form divides by SNR + 1). FLUX.1 and SD3.x bases take
the flow-matching step instead (``flow.flow_step``).
"""

from __future__ import annotations

from typing import Any

from .batches import Batch
from .config import TrainConfig
from .encoding import encode_text


def train_step(batch: Batch, parts, config: TrainConfig, generator: Any) -> Any:
    if parts.is_flow:
        from .flow import flow_step

        return flow_step(batch, parts, config, generator)
    import torch
    import torch.nn.functional as F

    unet = parts.model("unet")
    device, dtype = parts.denoiser_io()
    scheduler = parts.noise_scheduler

    def randn(*shape: int):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    mean, std = batch.latent_mean.to(device), batch.latent_std.to(device)
    latents = (mean + std * randn(*mean.shape)) * parts.vae.config.scaling_factor
    noise = randn(*latents.shape)
    if config.train.noise_offset:
        noise = noise + config.train.noise_offset * randn(latents.shape[0], latents.shape[1], 1, 1)
    count = latents.shape[0]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)

    text = batch.text if batch.text is not None else encode_text(parts, batch.captions)
    kwargs: dict[str, Any] = {}
    if parts.is_sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": text.pooled.to(device, dtype),
                                       "time_ids": batch.time_ids.to(device, dtype)}
    pred = unet(noisy.to(dtype), timesteps, text.hidden.to(device, dtype), **kwargs).sample.float()

    target = scheduler.get_velocity(latents, noise, timesteps) if parts.prediction_type == "v" else noise
    per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.train.min_snr_gamma:
        per_sample = per_sample * snr_weights(scheduler, timesteps, config.train.min_snr_gamma,
                                              parts.prediction_type)
    return per_sample.mean()


def snr_weights(scheduler, timesteps, gamma: float, prediction_type: str):
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if prediction_type == "v" else clipped / snr
