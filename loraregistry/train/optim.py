"""Optimizer and learning-rate schedule from the ``[optim]`` section. 8-bit AdamW and Prodigy come from optional
packages; asking for one that is not installed is a one-line error saying what to install."""

from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .errors import MissingDependency


def parameter_groups(config: TrainConfig, models: dict[str, Any]) -> list[dict[str, Any]]:
    groups = []
    for component, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": config.lr_for(component), "name": component})
    return groups


def build_optimizer(config: TrainConfig, groups: list[dict[str, Any]]):
    import torch

    o = config.optim
    common = {"betas": tuple(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, **common)
    if o.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise MissingDependency("optim.optimizer = \"adamw8bit\" needs bitsandbytes",
                                    hint="pip install bitsandbytes (CUDA only), or use adamw") from None
        return bitsandbytes.optim.AdamW8bit(groups, lr=o.lr, **common)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise MissingDependency("optim.optimizer = \"prodigy\" needs prodigyopt",
                                hint="pip install prodigyopt, or use adamw") from None
    return Prodigy(groups, lr=o.lr, **common)  # Prodigy adapts the step size: lr = 1.0 is its usual setting


def build_scheduler(config: TrainConfig, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.optim.scheduler, optimizer, num_warmup_steps=config.optim.warmup_steps,
                         num_training_steps=total_steps)
