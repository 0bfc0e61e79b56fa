"""``network.init_from``: start training from an existing LoRA file (kohya's ``--network_weights``).

The file may be in any key format lorareg reads (kohya, peft, diffusers, ...). Its modules, ranks and alphas become
the run's LoRA: each module gets a peft layer of the file's rank with ``lora_alpha`` = the file's alpha, and the
factors are copied in, so at step 0 the model's delta is the file's, exactly (fp16/bf16 factors widen to fp32
without rounding). Everything is checked against the base before training starts: a module the base lacks, a
component the base has not, a shape that differs, or a module kind peft cannot train from plain factors (LoHa, LoKr,
LoCon's Tucker ``mid``, full diffs) is one error naming the file and the module.

FLUX.1 / SD3 files that name modules after the original model (kohya ``lora_unet_double_blocks_*``, BFL keys) are
read in diffusers' terms first: a fused module (``img_attn.qkv``) becomes one LoRA per target sharing ``down``
with its slice of ``up`` (or, for the block-diagonal files lorareg writes, each target's own block), and
[shift, scale] rows are put in diffusers' order (``ops.fused``), so the delta is still the file's, exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..canonical import ModuleKey
from ..errors import LoraregError
from .errors import ConfigError

TRAINABLE = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_PLAIN = {"down", "up", "alpha", "dora_scale"}


@dataclass
class InitModule:
    """One module of the file, named as the base model names it."""

    name: str  # module name inside its component model
    down: np.ndarray
    up: np.ndarray
    alpha: float
    magnitude: np.ndarray | None = None  # DoRA

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class InitAdapter:
    path: Path
    modules: dict[str, dict[str, InitModule]] = field(default_factory=dict)  # component -> name -> module

    @property
    def use_dora(self) -> bool:
        return any(m.magnitude is not None for mods in self.modules.values() for m in mods.values())

    @property
    def has_conv_kernels(self) -> bool:
        """Whether a module patches a convolution wider than 1x1 (kohya's LoCon)."""
        return any(m.down.ndim == 4 and m.down.shape[2:] != (1, 1) for mods in self.modules.values()
                   for m in mods.values())

    def rank_alpha(self) -> tuple[int, float]:
        """The most common rank and alpha (what metadata records as the network's)."""
        mods = [m for mods in self.modules.values() for m in mods.values()]
        rank = Counter(m.rank for m in mods).most_common(1)[0][0]
        alpha = Counter(m.alpha for m in mods).most_common(1)[0][0]
        return rank, alpha


def read_init_adapter(path: Path) -> InitAdapter:
    """The file's plain-LoRA (or DoRA) modules, by component; ConfigError for anything else."""
    from ..adapter import AdapterFile
    from ..ops.common import by_module
    from ..ops.fused import natively_named, reorder_scale_shift
    from ..ops.io import load_canonical

    try:
        adapter = AdapterFile.open(path)
        canonical = reorder_scale_shift(load_canonical(adapter), natively_named(adapter.mapping))
        tensors = _split_fused(by_module(canonical))
    except LoraregError as exc:
        raise ConfigError(f"network.init_from: {exc.message}", path=path, hint=exc.hint) from None
    if adapter.mapping.unknown:
        raise ConfigError(f"network.init_from: {len(adapter.mapping.unknown)} keys of no known format (first: "
                          f"{adapter.mapping.unknown[0]!r})", path=path, hint="run `lorareg verify` on it")
    result = InitAdapter(path=Path(path))
    for module, roles in tensors.items():
        result.modules.setdefault(module.component, {})[module.path] = _plain_module(module, roles, path)
    if not result.modules:
        raise ConfigError("network.init_from: the file holds no LoRA module", path=path)
    return result


def _split_fused(tensors: dict[ModuleKey, dict[str, np.ndarray]]) -> dict[ModuleKey, dict[str, np.ndarray]]:
    """Fused SD3/Flux modules -> one module per diffusers target (plain LoRA / DoRA only; others fail later)."""
    from ..formats import is_fused
    from ..ops.fused import split_fused

    out: dict[ModuleKey, dict[str, np.ndarray]] = {}
    for module, roles in tensors.items():
        if module.component == "transformer" and is_fused(module.path) and "down" in roles and "up" in roles \
                and not set(roles) - _PLAIN:
            for target, part in split_fused(module, roles).items():
                part = part if "dora_scale" in part else _without_zero_rank(part)
                if part is not None:
                    out[target] = part
        else:
            out[module] = roles
    return out


def _without_zero_rank(roles: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """A split target without the rank components its ``up`` slice never uses (a fused file gives targets it did
    not train zero rows: SD3's last text query, or another file's targets stacked block-diagonally). The delta is
    unchanged: alpha shrinks with the rank so alpha / rank stays. None when nothing is left (no delta at all)."""
    up, down = roles["up"], roles["down"]
    rank = down.shape[0]
    used = np.flatnonzero(np.any(up.reshape(up.shape[0], rank, -1) != 0, axis=(0, 2)))
    if used.size == 0:
        return None
    if used.size == rank:
        return roles
    alpha = float(np.asarray(roles.get("alpha", 0.0), dtype=np.float64)) or float(rank)
    return {**roles, "up": up[:, used], "down": down[used], "alpha": np.array(alpha * used.size / rank)}


def _plain_module(module: ModuleKey, roles: dict[str, np.ndarray], path: Path) -> InitModule:
    other = sorted(set(roles) - _PLAIN)
    if other or "down" not in roles or "up" not in roles:
        kind = ", ".join(other) or "no down/up factors"
        raise ConfigError(f"network.init_from: {module} is not plain LoRA or DoRA ({kind}); training continues "
                          "plain LoRA only", path=path,
                          hint="convert it first: `lorareg convert FILE --to peft -o OUT` lowers LyCORIS modules")
    down, up = roles["down"], roles["up"]
    rank = down.shape[0]
    alpha = float(np.asarray(roles.get("alpha", 0.0), dtype=np.float64)) or float(rank)
    magnitude = roles.get("dora_scale")
    return InitModule(name=module.path, down=down, up=up, alpha=alpha,
                      magnitude=None if magnitude is None else np.asarray(magnitude))


def _model_name(model: Any, canonical: str) -> str | None:
    """The module name ``model`` uses for a canonical path (transformers 5's CLIPTextModel has no ``text_model.``)."""
    names = dict(model.named_modules())
    for name in (canonical, canonical.removeprefix("text_model.")):
        if name in names:
            return name
    return None


def check_against_base(init: InitAdapter, pipeline: Any, architecture: str) -> dict[str, dict[str, InitModule]]:
    """The file's modules keyed by the base's own module names, after checking that each exists with the
    factors' shapes; ConfigError naming the first module that does not fit."""
    import torch

    placed: dict[str, dict[str, InitModule]] = {}
    for component, modules in sorted(init.modules.items()):
        model = getattr(pipeline, component, None) if component in TRAINABLE else None
        if model is None:
            raise ConfigError(f"network.init_from: the file has {component} modules but a {architecture} base "
                              f"{'has no ' + component if component in TRAINABLE else 'is not trained there'}",
                              path=init.path, hint="use an adapter made for this base")
        for canonical, mod in sorted(modules.items()):
            name = _model_name(model, canonical)
            layer = model.get_submodule(name) if name is not None else None
            if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                raise ConfigError(f"network.init_from: {component}:{canonical} is no Linear/Conv2d module of the "
                                  f"{architecture} base", path=init.path, hint="use an adapter made for this base")
            weight = tuple(layer.weight.shape)
            down_ok = mod.down.reshape(mod.rank, -1).shape[1] == int(np.prod(weight[1:]))
            up_ok = mod.up.shape[0] == weight[0] and int(np.prod(mod.up.shape[1:])) == mod.rank
            if not (down_ok and up_ok):
                raise ConfigError(f"network.init_from: {component}:{canonical} has factors {mod.up.shape} x "
                                  f"{mod.down.shape}, the base weight is {weight}", path=init.path,
                                  hint="use an adapter made for this base")
            if mod.magnitude is not None and mod.magnitude.size != weight[0]:
                raise ConfigError(f"network.init_from: {component}:{canonical}: DoRA magnitude {mod.magnitude.shape}"
                                  f" is not per output row ({weight[0]})", path=init.path,
                                  hint="only peft-style (per output) DoRA can be continued")
            placed.setdefault(component, {})[name] = mod
    return placed


def inject_from_file(parts: Any, config: Any) -> None:
    """Attach peft LoRA layers shaped like the file's modules and copy the factors in."""
    import torch
    from peft import LoraConfig

    from .peft_attach import attach_lora

    init = read_init_adapter(config.network.init_from)
    placed = check_against_base(init, parts.pipeline, parts.architecture.id)
    use_dora = init.use_dora
    for component, modules in placed.items():
        model = getattr(parts.pipeline, component)
        ranks = Counter(m.rank for m in modules.values())
        alphas = Counter(m.alpha for m in modules.values())
        r, a = ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]
        # full module names: peft matches a pattern key as a dotted suffix, and no full name ends another one
        lora = LoraConfig(r=r, lora_alpha=a, lora_dropout=config.network.dropout, init_lora_weights=True,
                          use_dora=use_dora, target_modules=sorted(modules),
                          rank_pattern={n: m.rank for n, m in modules.items() if m.rank != r},
                          alpha_pattern={n: m.alpha for n, m in modules.items() if m.alpha != a})
        attach_lora(model, lora)
        with torch.no_grad():
            for name, mod in modules.items():
                layer = model.get_submodule(name)
                # float32 before the copy: peft makes the factors in the base weight's dtype (bf16 for a base
                # loaded for mixed precision), which would round the file's values
                for factors in (layer.lora_A, layer.lora_B, getattr(layer, "lora_magnitude_vector", {})):
                    if "default" in factors:
                        factors["default"].to(dtype=torch.float32)
                a_weight, b_weight = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                a_weight.copy_(torch.from_numpy(mod.down.astype(np.float32).reshape(a_weight.shape)))
                b_weight.copy_(torch.from_numpy(mod.up.astype(np.float32).reshape(b_weight.shape)))
                if mod.magnitude is not None:
                    magnitude = layer.lora_magnitude_vector["default"].weight
                    magnitude.copy_(torch.from_numpy(mod.magnitude.astype(np.float32).reshape(magnitude.shape)))
        parts.trained[component] = model
        parts.target_modules[component] = sorted(modules)
    parts.init_adapter = init
