"""``TrainingSet``: the dataset ready for steps: latents cached, an epoch plan, and batches by position.

An epoch is a function of (seed, epoch number) alone: items repeated per their folder, grouped by bucket,
shuffled, cut into batches, batches shuffled. So a batch is addressed by (epoch, index), which is all a
checkpoint needs to store to resume at the same place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .buckets import Placement, place
from .cache import TensorCache, content_key
from .captions import augment, caption_rng
from .config import TrainConfig
from .data import Dataset
from .encoding import (
    TextConditioning,
    encode_pixels,
    encode_text,
    load_pixels,
    time_ids,
)


@dataclass
class Batch:
    latent_mean: Any  # [B, 4, h, w]
    latent_std: Any
    captions: list[str]
    text: TextConditioning | None  # None when a text encoder trains: encoded in the step, with gradients
    time_ids: Any | None  # [B, 6] (SDXL)


class TrainingSet:
    def __init__(self, dataset: Dataset, parts, config: TrainConfig, cache: TensorCache) -> None:
        self.dataset = dataset
        self.parts = parts
        self.config = config
        self.cache = cache
        data = config.data
        self.placements: list[Placement] = [place(i.size, data.resolution, data.bucket_step, data.buckets)
                                            for i in dataset.items]
        self.latents: list[tuple[Any, Any]] = []
        self._text: dict[str, TextConditioning] = {}
        # init_from may add text encoders
        self.cache_text = not any(name not in ("unet", "transformer") for name in parts.trained)

    # --- caching ---------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Encode (or read back) every latent, and the text of every caption as written."""
        vae_key = self.parts.content_keys["vae"]
        for item, placement in zip(self.dataset.items, self.placements):
            key = content_key("latents", item.sha256, placement.bucket, placement.scaled, placement.crop, vae_key)
            entry = self.cache.get("latents", key)
            if entry is None:
                mean, std = encode_pixels(self.parts.vae, load_pixels(item.image, placement)[None])
                entry = {"mean": mean[0], "std": std[0]}
                self.cache.put("latents", key, entry)
            self.latents.append((entry["mean"], entry["std"]))
        if self.cache_text:
            for caption in sorted({i.caption for i in self.dataset.items} | {""}):
                self.text_for(caption)

    def text_for(self, caption: str) -> TextConditioning:
        """Cached conditioning of one caption (shuffled variants are cached as they appear)."""
        if caption in self._text:
            return self._text[caption]
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        keys = [self.parts.content_keys[n] for n in names if n in self.parts.content_keys]
        # FLUX / SD3: the T5 length changes the sequence (SD keys stay as they were: their caches remain valid)
        key = content_key("text", caption, keys, *([self.parts.text_max_length] if self.parts.is_flow else []))
        entry = self.cache.get("text", key)
        if entry is None:
            import torch

            with torch.no_grad():
                cond = encode_text(self.parts, [caption])
            # FLUX / SD3 keep the encoders' dtype: a T5 sequence is 512 x 4096 per caption, 8 MB in float32
            hidden = cond.hidden[0] if self.parts.is_flow else cond.hidden[0].float()
            entry = {"hidden": hidden}
            if cond.pooled is not None:
                entry["pooled"] = cond.pooled[0].float()
            self.cache.put("text", key, entry)
        result = TextConditioning(hidden=entry["hidden"], pooled=entry.get("pooled"))
        self._text[caption] = result
        return result

    # --- epochs ----------------------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.config.train.seed}:epoch:{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(self.dataset.items):
            by_bucket.setdefault(self.placements[index].bucket, []).extend([index] * item.repeats)
        size = self.config.train.batch_size
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            indices = by_bucket[bucket]
            rng.shuffle(indices)
            batches += [indices[i:i + size] for i in range(0, len(indices), size)]
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def batch(self, epoch: int, index: int, indices: list[int]) -> Batch:
        import torch

        captions = [augment(self.dataset.items[i].caption, self.config.data,
                            caption_rng(self.config.train.seed, epoch, index * 10_000 + n))
                    for n, i in enumerate(indices)]
        mean = torch.stack([self.latents[i][0] for i in indices])
        std = torch.stack([self.latents[i][1] for i in indices])
        text = None
        if self.cache_text:
            conds = [self.text_for(c) for c in captions]
            pooled = torch.stack([c.pooled for c in conds]) if conds[0].pooled is not None else None
            text = TextConditioning(hidden=torch.stack([c.hidden for c in conds]), pooled=pooled)
        ids = None
        if self.parts.is_sdxl:
            ids = torch.tensor([time_ids(self.dataset.items[i].size, self.placements[i].crop,
                                         self.placements[i].bucket) for i in indices], dtype=torch.float32)
        return Batch(latent_mean=mean, latent_std=std, captions=captions, text=text, time_ids=ids)

