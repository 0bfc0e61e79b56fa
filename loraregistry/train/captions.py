"""Caption augmentation: shuffle the comma-separated tags after the first ``keep_tokens``, drop whole captions.

The randomness comes from a seed per (run seed, epoch, sample position), never from global state, so a resumed
run sees exactly the captions the uninterrupted one did.
"""

from __future__ import annotations

import random

from .config import DataConfig


def caption_rng(seed: int, epoch: int, position: int) -> random.Random:
    return random.Random(f"{seed}:{epoch}:{position}")


def augment(caption: str, config: DataConfig, rng: random.Random) -> str:
    drop = rng.random() < config.caption_dropout  # always drawn, so shuffling sees the same stream either way
    if drop:
        return ""
    if not config.shuffle_captions:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    kept, rest = tags[: config.keep_tokens], tags[config.keep_tokens:]
    rng.shuffle(rest)
    return ", ".join(kept + rest)
