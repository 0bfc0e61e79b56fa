"""FLUX.1 / SD3.5 halves of ``benchmarks/train.py``: one code path for the tiny CPU run and full-size CUDA shapes.

Only the transformer is real (tiny seeded config, or the shipped public config with random weights); the VAE is a
stand-in whose config gives the latent scale and shift, and the text encoders are absent: both sides train from
the same random "cached" latents and T5/CLIP embeddings (``RandomCachedSet``), batch by batch as lorareg's
``TrainingSet`` serves them (per-item tensors stacked each step). So on CUDA nothing but the transformer takes
memory, and a CPU run executes every line a GPU run does except the device.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# --arch -> (trained architecture, shipped config or None for the tiny one, default resolution)
FLOW_ARCHES = {
    "tiny-flux": ("flux1-dev", None, 32), "tiny-sd35": ("sd35-medium", None, 32),
    "flux1-dev": ("flux1-dev", "flux1", 1024), "sd35-large": ("sd35-large", "sd35-large", 1024),
    "sd35-medium": ("sd35-medium", "sd35-medium", 1024),
}
FAMILY_ARCHES = {"flux": ("tiny-flux", "flux1-dev"), "sd35": ("tiny-sd35", "sd35-large")}  # (cpu, cuda)
TARGETS = "all"  # lorareg's default FLUX/SD3 set (kohya's lora_flux / lora_sd3 modules)
CLIP_TOKENS = 77


def _dtype(precision: str):
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def build_pipeline(args) -> Any:
    """A FluxPipeline / StableDiffusion3Pipeline holding the transformer (seeded: both sides get the same weights),
    the base's scheduler, a stand-in VAE and the tokenizers; no text encoders."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL

    from loraregistry.train import tiny_mmdit

    arch, shipped, _ = FLOW_ARCHES[args.arch]
    family = tiny_mmdit.family_of(arch)
    if shipped is None:
        cls = "FluxTransformer2DModel" if family == "flux" else "SD3Transformer2DModel"
        config = tiny_mmdit.transformer_config(arch)
        vae_blocks = 2  # the tiny VAE's latent scale
    else:
        spec = json.loads((ROOT / "loraregistry" / "architectures" / "configs" / f"{shipped}.json").read_text())
        cls, config = spec["components"]["transformer"]["class"], spec["components"]["transformer"]["config"]
        vae_blocks = 4  # FLUX.1 / SD3's VAE: 8x
    default = torch.get_default_dtype()
    torch.manual_seed(0)
    try:  # built in the frozen weights' dtype on the device: FLUX.1 is 24 GB in bf16, 48 in float32
        torch.set_default_dtype(_dtype(args.precision) if args.precision != "fp16" else torch.float32)
        with torch.device(args.device):
            transformer = getattr(diffusers, cls).from_config(config)
    finally:
        torch.set_default_dtype(default)
    scale, shift = tiny_mmdit._VAE_FACTORS[family]
    vae = AutoencoderKL(block_out_channels=(8,) * vae_blocks, down_block_types=("DownEncoderBlock2D",) * vae_blocks,
                        up_block_types=("UpDecoderBlock2D",) * vae_blocks, latent_channels=16, norm_num_groups=4,
                        scaling_factor=scale, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = tiny_mmdit.tiny_scheduler(arch)  # the real bases' scheduler configs
    t5 = tiny_mmdit.tiny_t5_tokenizer()
    t5.model_max_length = 512 if shipped else t5.model_max_length
    if family == "flux":
        return diffusers.FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None,
                                      tokenizer=tiny_mmdit.tiny_tokenizer(), text_encoder_2=None, tokenizer_2=t5,
                                      transformer=transformer)
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None,
        tokenizer=tiny_mmdit.tiny_tokenizer(), text_encoder_2=None, tokenizer_2=tiny_mmdit.tiny_tokenizer(),
        text_encoder_3=None, tokenizer_3=t5)


class RandomCachedSet:
    """What ``TrainingSet`` serves the trainer, from random per-item latents and text embeddings of the real
    shapes: one epoch is one batch of every item; ``batch`` stacks the items' tensors as ``TrainingSet`` does."""

    def __init__(self, parts, args) -> None:
        import torch

        from loraregistry.train.encoding import TextConditioning

        gen = torch.Generator().manual_seed(1)
        config = parts.denoiser.config
        factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        side = args.resolution // factor
        tokens = parts.text_max_length + (CLIP_TOKENS if parts.architecture.family == "sd3" else 0)
        hidden_dtype = _dtype(args.precision)
        self.latents = [(torch.randn(16, side, side, generator=gen), torch.rand(16, side, side, generator=gen) * .1)
                        for _ in range(args.batch)]
        self.text = [TextConditioning(
            hidden=torch.randn(tokens, config.joint_attention_dim, generator=gen).to(hidden_dtype),
            pooled=torch.randn(config.pooled_projection_dim, generator=gen)) for _ in range(args.batch)]
        self.size = args.batch

    def batches_per_epoch(self) -> int:
        return 1

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [list(range(self.size))]

    def batch(self, epoch: int, index: int, indices: list[int]):
        import torch

        from loraregistry.train.batches import Batch
        from loraregistry.train.encoding import TextConditioning

        text = TextConditioning(hidden=torch.stack([self.text[i].hidden for i in indices]),
                                pooled=torch.stack([self.text[i].pooled for i in indices]))
        return Batch(latent_mean=torch.stack([self.latents[i][0] for i in indices]),
                     latent_std=torch.stack([self.latents[i][1] for i in indices]),
                     captions=[""] * len(indices), text=text, time_ids=None)


def flow_config(args, work: Path):
    from loraregistry.train.config import from_dict

    return from_dict({
        "model": {"base": f"benchmark:{args.arch}", "fp8_base": args.fp8_base},
        "data": {"folder": str(work / "data"), "resolution": args.resolution, "buckets": False},
        "network": {"rank": args.rank, "alpha": float(args.rank), "components": ["transformer"],
                    "transformer_targets": TARGETS},
        "optim": {"lr": 1e-4, "scheduler": "constant", "max_grad_norm": 1.0},
        "train": {"steps": args.warmup + args.steps, "batch_size": args.batch, "seed": 0,
                  "mixed_precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing},
        "output": {"dir": str(work / "out"), "add_to_registry": False},
    })


def run_lorareg(args, work: Path, memory) -> tuple[list[float], float | None]:
    """Steps through ``Trainer.fit`` as ``lorareg train`` runs them (build_components, frozen-weight casts)."""
    from loraregistry.train import Trainer, build_components
    from loraregistry.train.run import _cast_frozen_weights, make_accelerator

    config = flow_config(args, work)
    accelerator = make_accelerator(config)
    parts = build_components(config, pipeline=build_pipeline(args))
    parts.pipeline.to(accelerator.device)
    args.flow_targets = list(parts.target_modules["transformer"])  # the bare loop adapts the same modules
    data = RandomCachedSet(parts, args)
    args.flow_data = data
    _cast_frozen_weights(parts, config)
    memory.reset()
    fit = Trainer(config, parts, data, run_dir=work / "run", accelerator=accelerator, quiet=True).fit()
    peak = memory.peak()
    accelerator.free_memory()  # accelerate keeps the prepared model: 24 GB of FLUX.1 in the bare side's peak else
    del parts, fit.losses, accelerator
    return fit.step_seconds[args.warmup:], peak


def run_bare(args, work: Path, memory) -> tuple[list[float], float | None]:
    """diffusers' train_dreambooth_lora_flux.py / _sd3.py step on the same transformer, targets, rank and batches:
    ``add_adapter(LoraConfig)``, sigmas from the scheduler, ``(1 - s) x + s noise``, velocity target, AdamW."""
    import torch
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from loraregistry.train.flow import image_ids, pack_latents

    pipe = build_pipeline(args)
    device, dtype = torch.device(args.device), _dtype(args.precision)
    transformer, vae = pipe.transformer, pipe.vae.config
    flux = type(transformer).__name__.startswith("Flux")
    transformer.requires_grad_(False)
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights=True,
                                       target_modules=args.flow_targets))
    if args.precision != "no":
        cast_training_params(transformer, dtype=torch.float32)
    if args.fp8_base:
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype,
                                             skip_modules_pattern=(*DEFAULT_SKIP_MODULES_PATTERN, "lora_"))
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    lr_scheduler = get_scheduler("constant", optimizer)
    sigmas_table = pipe.scheduler.sigmas.float()
    gen = torch.Generator().manual_seed(0)
    data = args.flow_data
    transformer.train()
    times = []
    memory.reset()
    for _ in range(args.warmup + args.steps):
        tick = time.perf_counter()
        batch = data.batch(0, 0, list(range(args.batch)))
        mean, std = batch.latent_mean.to(device), batch.latent_std.to(device)
        latents = (mean + std * torch.randn(mean.shape, generator=gen).to(device) - vae.shift_factor) \
            * vae.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device)
        count = latents.shape[0]
        u = torch.rand((count,), generator=gen) if flux else torch.sigmoid(torch.randn((count,), generator=gen))
        sigmas = sigmas_table[((1 - u) * 1000).long().clamp(0, 999)].to(device)
        s = sigmas.view(count, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        target = noise - latents
        hidden, pooled = batch.text.hidden.to(device, dtype), batch.text.pooled.to(device, dtype)
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "no"):
            if flux:
                height, width = noisy.shape[-2:]
                guidance = torch.full((count,), 3.5, device=device, dtype=dtype)
                pred = transformer(hidden_states=pack_latents(noisy).to(dtype), timestep=sigmas.to(dtype),
                                   guidance=guidance if transformer.config.guidance_embeds else None,
                                   pooled_projections=pooled, encoder_hidden_states=hidden,
                                   txt_ids=torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype),
                                   img_ids=image_ids(height, width, device, dtype), return_dict=False)[0]
                target = pack_latents(target)
            else:
                pred = transformer(hidden_states=noisy.to(dtype), timestep=(sigmas * 1000).to(dtype),
                                   encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # logged every step by the scripts (and a device sync)
        times.append(time.perf_counter() - tick)
    peak = memory.peak()
    del pipe, transformer, optimizer, params
    return times[args.warmup:], peak
