"""``lorareg train``: LoRA training for SD1.x, SD2.x and SDXL with diffusers + peft + accelerate.

    from loraregistry.train import TrainConfig, train
    result = train(TrainConfig.load("run.toml", {"train.steps": 100}))

The pieces, each usable alone: ``TrainConfig`` -> ``build_components`` -> ``TrainingSet`` (cached latents and
text) -> ``train_step`` -> ``Trainer.fit`` -> ``export``. Importing this package loads neither torch nor
diffusers; they are imported by the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "TrainConfig": "loraregistry.train.config",
    "train": "loraregistry.train.run",
    "TrainResult": "loraregistry.train.run",
    "build_components": "loraregistry.train.components",
    "Components": "loraregistry.train.components",
    "train_step": "loraregistry.train.step",
    "Trainer": "loraregistry.train.trainer",
    "TrainingSet": "loraregistry.train.batches",
    "scan_dataset": "loraregistry.train.data",
    "export": "loraregistry.train.export",
}

__all__ = ["Components", "TrainConfig", "TrainResult", "Trainer", "TrainingSet", "build_components", "export",
           "scan_dataset", "train", "train_step"]

if TYPE_CHECKING:
    from .batches import TrainingSet
    from .components import Components, build_components
    from .config import TrainConfig
    from .data import scan_dataset
    from .export import export
    from .run import TrainResult, train
    from .step import train_step
    from .trainer import Trainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loraregistry.train' has no attribute {name!r}")
