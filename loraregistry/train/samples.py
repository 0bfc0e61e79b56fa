"""Sample images from fixed prompts and seeds during training, saved as one labelled grid PNG per step.

Rows are ``train.sample_prompts`` (each with its negative prompt and seeds), columns their seeds. Each image has its
own seeded generator and the global RNG is forked around sampling, so taking samples never changes the training
run. The grid carries its labels twice: drawn (step; prompt and negative prompt above each row; seed under each
image) and as data (PNG text chunk ``lorareg.samples``: every cell's prompt, negative prompt, seed and box). A
same-name ``.txt`` holds the prompts, which is where ``lorareg push`` reads a sample's prompt from.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SamplePrompt, TrainConfig

METADATA_KEY = "lorareg.samples"
_PROMPT_LINES = 4  # at most, per prompt / negative prompt: a grid stays a grid, the full text is in the metadata
_BACKGROUND, _BAND, _INK = (255, 255, 255), (236, 236, 236), (20, 20, 20)


@dataclass
class SampleGrid:
    path: Path
    image: Any  # PIL.Image
    cells: list[dict[str, Any]] = field(default_factory=list)


def render_grid(parts, config: TrainConfig, path: Path, *, step: int) -> SampleGrid:
    rows = config.train.sample_rows()
    images = generate(parts, config, rows)
    negative_used = negative_prompt_used(parts.pipeline, config)
    image, cells = compose_grid(images, rows, step=step, side=config.data.resolution, negative_used=negative_used)
    save_grid(image, cells, step, path)
    return SampleGrid(path=path, image=image, cells=cells)


def generate(parts, config: TrainConfig, rows: list[SamplePrompt]) -> list[list[Any]]:
    """One image per (row, seed), the trained models in eval mode, the global RNG untouched."""
    import torch

    loop = config.train
    side = config.data.resolution
    pipeline = parts.pipeline
    modes = {name: model.training for name, model in parts.trained.items()}
    for model in parts.trained.values():
        model.eval()
    device = (getattr(pipeline, "unet", None) or pipeline.transformer).device
    # mixed precision: half denoiser / text encoders (float8-stored under model.fp8_base), float32 VAE
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(loop.mixed_precision)
    negative_used = negative_prompt_used(pipeline, config)
    images: list[list[Any]] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for row in rows:
                extra = {"negative_prompt": row.negative_prompt} if row.negative_prompt and negative_used else {}
                images.append([])
                for seed in row.seeds:
                    generator = torch.Generator("cpu").manual_seed(seed)
                    out = pipeline(row.prompt, height=side, width=side, num_inference_steps=loop.sample_steps,
                                   guidance_scale=loop.sample_guidance, generator=generator, **extra)
                    images[-1].append(out.images[0])
    finally:
        for name, model in parts.trained.items():
            model.train(modes[name])
    return images


def negative_prompt_used(pipeline, config: TrainConfig) -> bool:
    """Whether a negative prompt changes the samples: the pipeline takes one and runs classifier-free guidance
    with it (guidance above 1; FLUX's pipeline only with a ``true_cfg_scale`` lorareg does not set)."""
    parameters = inspect.signature(pipeline.__call__).parameters
    return ("negative_prompt" in parameters and "true_cfg_scale" not in parameters
            and config.train.sample_guidance > 1)


def compose_grid(images: list[list[Any]], rows: list[SamplePrompt], *, step: int, side: int,
                 negative_used: bool = True):
    """The labelled grid of ``images`` (one list per row) and its cells' data. Pillow only."""
    from PIL import Image, ImageDraw

    columns = max(len(r) for r in images)
    width = columns * side
    font = _font(side)
    pad = max(2, font.size // 4)
    line = font.size + pad
    layout: list[tuple[str, Any]] = [("text", _wrap(f"step {step}", font, width - 2 * pad, 1))]
    for row in rows:
        header = _wrap(f"prompt: {row.prompt}", font, width - 2 * pad, _PROMPT_LINES)
        if row.negative_prompt:
            note = "" if negative_used else " (not used: needs guidance > 1 and a pipeline that takes one)"
            header += _wrap(f"negative: {row.negative_prompt}{note}", font, width - 2 * pad, _PROMPT_LINES)
        layout += [("band", header), ("images", None), ("seeds", None)]
    height = sum(len(lines) * line + pad if kind in ("text", "band") else side if kind == "images" else line + pad
                 for kind, lines in layout)
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    cells: list[dict[str, Any]] = []
    y, row_index = 0, -1
    for kind, lines in layout:
        if kind in ("text", "band"):
            block = len(lines) * line + pad
            if kind == "band":
                row_index += 1
                draw.rectangle((0, y, width - 1, y + block - 1), fill=_BAND)
            for n, text in enumerate(lines):
                draw.text((pad, y + pad + n * line), text, fill=_INK, font=font)
            y += block
        elif kind == "images":
            row = rows[row_index]
            for column, (image, seed) in enumerate(zip(images[row_index], row.seeds)):
                box = (column * side, y, column * side + side, y + side)
                grid.paste(image.convert("RGB").resize((side, side)), box[:2])
                cells.append({"row": row_index, "column": column, "prompt": row.prompt,
                              "negative_prompt": row.negative_prompt if negative_used else "", "seed": seed,
                              "step": step, "box": list(box)})
            y += side
        else:
            for column, seed in enumerate(rows[row_index].seeds):
                text = f"seed {seed}"
                if font.getlength(text) > side - 2 * pad:  # a narrow cell: the number alone
                    text = _wrap(str(seed), font, side - 2 * pad, 1)[0]
                draw.text((column * side + pad, y + pad // 2), text, fill=_INK, font=font)
            y += line + pad
    return grid, cells


def save_grid(image, cells: list[dict[str, Any]], step: int, path: Path) -> Path:
    """The PNG (labels in its ``lorareg.samples`` text chunk) and the prompts in a same-name ``.txt``, each written
    under a temporary name and renamed: a killed run leaves no half image."""
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_itxt(METADATA_KEY, json.dumps({"step": step, "cells": cells}, ensure_ascii=False))
    prompts = list(dict.fromkeys(c["prompt"] for c in cells))
    _write_atomic(path, lambda tmp: image.save(tmp, format="png", pnginfo=info))
    caption = path.with_suffix(".txt")
    _write_atomic(caption, lambda tmp: tmp.write_text(" | ".join(prompts) + "\n", encoding="utf-8"))
    return path


def read_cells(path: Path) -> dict[str, Any]:
    """What ``save_grid`` stored in a grid: {"step": N, "cells": [...]}."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _font(side: int):
    from PIL import ImageFont

    size = max(10, min(28, side // 16))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
        font.size = 11
        return font


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """``text`` greedily wrapped to ``width`` pixels (long words broken), at most ``max_lines`` lines, the last
    one ending in an ellipsis when text was left out."""
    text = " ".join(text.split())[:2000]  # far more than max_lines can show; bounds the work on a huge prompt
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        if len(lines) > max_lines:
            break
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > width and len(current) > 1 and len(lines) <= max_lines:
            cut = _fitting_prefix(current, font, width)  # a word wider than the line: break it
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines or [""]


def _fitting_prefix(text: str, font, width: int) -> int:
    """The length of the longest prefix of ``text`` that fits ``width`` (at least 1), by bisection."""
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid]) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo
