#!/usr/bin/env python
"""Regenerate examples/dataset/: a dozen small seeded shape images, each with a same-name .txt caption.

Captions start with the trigger token ``lrgshape`` (kohya-style ``trigger, description``), so training,
metadata (trigger words, tag frequency) and caption handling all have something real to read. Sizes vary
(64..128 px, square and not) to exercise aspect-ratio buckets. Output is byte-identical on every run for a
given Pillow/zlib (PNG carries no timestamp).

Usage: python scripts/make_example_dataset.py [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "examples" / "dataset"
TRIGGER = "lrgshape"
SEED = 1234

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 210), "yellow": (240, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
    "gray": (128, 128, 128), "pink": (240, 130, 180),
}

# (file stem, shape, shape colour, background colour, width, height)
IMAGES = [
    ("00_red_circle", "circle", "red", "blue", 64, 64),
    ("01_green_square", "square", "green", "white", 64, 64),
    ("02_yellow_triangle", "triangle", "yellow", "purple", 96, 96),
    ("03_blue_circle", "circle", "blue", "yellow", 128, 128),
    ("04_orange_square", "square", "orange", "black", 96, 64),
    ("05_white_triangle", "triangle", "white", "green", 64, 96),
    ("06_purple_circle", "circle", "purple", "gray", 128, 96),
    ("07_pink_square", "square", "pink", "blue", 96, 128),
    ("08_black_triangle", "triangle", "black", "orange", 128, 128),
    ("09_two_circles", "two circles", "red", "white", 128, 64),
    ("10_striped", "stripes", "green", "yellow", 64, 128),
    ("11_gray_ring", "ring", "gray", "pink", 96, 96),
]


def _draw(draw, shape: str, color, w: int, h: int, rng: random.Random) -> None:
    size = min(w, h)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r + 2, w - r - 2), rng.randint(r + 2, h - r - 2)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif shape == "two circles":
        q = min(w // 4, h // 2) - 4
        draw.ellipse((w // 4 - q, h // 2 - q, w // 4 + q, h // 2 + q), fill=color)
        draw.ellipse((3 * w // 4 - q, h // 2 - q, 3 * w // 4 + q, h // 2 + q), fill=color)
    elif shape == "stripes":
        for y in range(0, h, 16):
            draw.rectangle((0, y, w, y + 7), fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(3, r // 4))
    else:
        raise ValueError(shape)


def _caption(shape: str, color: str, background: str) -> str:
    if shape == "two circles":
        thing = f"two {color} circles"
    elif shape == "stripes":
        thing = f"{color} horizontal stripes"
    else:
        thing = f"a {color} {shape}"
    return f"{TRIGGER}, {thing} on a {background} background\n"


def make(out: Path) -> list[Path]:
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    written = []
    for stem, shape, color, background, w, h in IMAGES:
        image = Image.new("RGB", (w, h), COLORS[background])
        _draw(ImageDraw.Draw(image), shape, COLORS[color], w, h, rng)
        path = out / f"{stem}.png"
        image.save(path, format="PNG", optimize=True)
        (out / f"{stem}.txt").write_text(_caption(shape, color, background))
        written.append(path)
    (out / "README.md").write_text(
        "# Example dataset\n\n"
        f"{len(IMAGES)} synthetic shape images with same-name `.txt` captions (trigger token `{TRIGGER}`), drawn with\n"
        "Pillow from a fixed seed by `scripts/make_example_dataset.py` (rerun it to regenerate; output is identical).\n"
        "License: CC0 1.0 (public domain dedication).\n"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in make(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
