"""Sample images from fixed prompts and seeds during training, saved as one grid PNG per step.

Rows are prompts, columns are seeds. Each image has its own seeded generator and the global RNG is forked around
sampling, so taking samples never changes the training run.
"""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig


def render_grid(parts, config: TrainConfig, path: Path):
    import torch
    from PIL import Image

    loop = config.train
    side = config.data.resolution
    images = []
    pipeline = parts.pipeline
    unet_modes = {name: model.training for name, model in parts.trained.items()}
    for model in parts.trained.values():
        model.eval()
    device = parts.unet.device
    half = parts.unet.dtype != torch.float32  # mixed precision: half UNet / text encoders, float32 VAE
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                torch.autocast(device.type, dtype=parts.unet.dtype, enabled=half):
            for prompt in loop.sample_prompts:
                for seed in loop.sample_seeds:
                    generator = torch.Generator("cpu").manual_seed(seed)
                    out = pipeline(prompt, height=side, width=side, num_inference_steps=loop.sample_steps,
                                   guidance_scale=loop.sample_guidance, generator=generator)
                    images.append(out.images[0])
    finally:
        for name, model in parts.trained.items():
            model.train(unet_modes[name])
    columns = len(loop.sample_seeds)
    rows = len(loop.sample_prompts)
    grid = Image.new("RGB", (columns * side, rows * side), "white")
    for n, image in enumerate(images):
        grid.paste(image.resize((side, side)), ((n % columns) * side, (n // columns) * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
