"""Validation loss on held-out images: the training objective, measured the same way every time.

``split`` holds out ``data.validation_split`` images (a count or a fraction), picked by a hash of the run seed and
each image's content, so the same dataset and seed always hold out the same images, whatever order they are
listed in. ``Validator.loss`` runs the training step on each held-out image with its captions as written (no
shuffle, no dropout) under ``no_grad``, for ``train.validation_draws`` fixed (noise, timestep) draws per image, each
from a generator seeded by (seed, image, draw): the same draws at every validation, so the values compare across
steps and differ only because the weights did. Processes of a multi-GPU run take every n-th image and the sums are
reduced, so the value does not depend on the number of processes. The global RNG is forked around it, so
validating never changes the training run.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from .batches import TrainingSet
from .cache import TensorCache
from .config import TrainConfig
from .data import Dataset
from .errors import DatasetError
from .step import train_step


def held_out_count(config: TrainConfig, images: int) -> int:
    split = config.data.validation_split
    if isinstance(split, float):
        return max(1, round(split * images)) if split else 0
    return split


def split(dataset: Dataset, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """(training images, held-out images or None). DatasetError when no training image would be left."""
    count = held_out_count(config, len(dataset.items))
    if not count:
        return dataset, None
    if count >= len(dataset.items):
        raise DatasetError(f"data.validation_split holds out {count} of {len(dataset.items)} images, leaving none to "
                           "train on", path=dataset.folder, hint="lower data.validation_split or add images")
    seed = config.train.seed

    def rank(n: int) -> tuple[str, int]:
        item = dataset.items[n]
        return hashlib.sha256(f"{seed}:validation:{item.sha256}".encode()).hexdigest(), n

    held = set(sorted(range(len(dataset.items)), key=rank)[:count])
    keep = [item for n, item in enumerate(dataset.items) if n not in held]
    out = [item for n, item in enumerate(dataset.items) if n in held]
    return (Dataset(items=keep, skipped=dataset.skipped, folder=dataset.folder),
            Dataset(items=out, folder=dataset.folder))


@dataclass
class ValidationResult:
    loss: float
    images: int
    draws: int


class Validator:
    def __init__(self, held_out: Dataset, parts, config: TrainConfig, cache: TensorCache) -> None:
        plain = config.data.model_copy(update={"shuffle_captions": False, "caption_dropout": 0.0})
        self.config = config
        self.parts = parts
        self.images = TrainingSet(held_out, parts, config.model_copy(update={"data": plain}), cache)

    def prepare(self) -> None:
        """Latents (and text) of the held-out images, encoded or read back from the cache."""
        self.images.prepare()

    def draw_seed(self, index: int, draw: int) -> int:
        item = self.images.dataset.items[index]
        digest = hashlib.sha256(f"{self.config.train.seed}:validation:{item.sha256}:{draw}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    def loss(self, accelerator) -> ValidationResult:
        import torch

        acc, config = accelerator, self.config
        draws = config.train.validation_draws
        count = len(self.images.dataset.items)
        total = torch.zeros(2, dtype=torch.float64)  # sum of losses, number of (image, draw) pairs
        modes = {name: model.training for name, model in self.parts.trained.items()}
        for model in self.parts.trained.values():
            model.eval()  # no LoRA dropout (it would also draw from the global RNG)
        device = acc.device
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                for index in range(acc.process_index, count, acc.num_processes):
                    batch = self.images.batch(0, index, [index])
                    for draw in range(draws):
                        generator = torch.Generator().manual_seed(self.draw_seed(index, draw))
                        with acc.autocast():
                            value = train_step(batch, self.parts, config, generator)
                        total += torch.tensor([float(value), 1.0], dtype=torch.float64)
        finally:
            for name, model in self.parts.trained.items():
                model.train(modes[name])
        if acc.num_processes > 1:
            total = acc.reduce(total.to(device), reduction="sum").cpu()
        mean = float(total[0] / total[1]) if total[1] else math.nan
        return ValidationResult(loss=mean, images=count, draws=draws)
