"""diffusers ``lora_adapter_metadata``: the peft LoraConfig(s) an adapter was saved with, as one JSON string.

Three shapes occur (diffusers ``loaders/lora_base.py``): a flat config (``save_lora_adapter`` of one
model), one config per component packed with a dotted prefix (``{"unet.r": 4, "text_encoder.r": 8}``,
``_pack_dict_with_prefix`` in the pipelines' ``save_lora_weights``), and nested per component
(``{"unet": {...}}``). lorareg reads all three and does not write this key: it describes a peft
model's config, which only matches files in peft/diffusers key format (the converters own that).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..alphas import split_components
from ..canonical import COMPONENTS
from ._foreign import Findings, parse_json

if TYPE_CHECKING:
    from .foreign_models import PeftConfig

KEY = "lora_adapter_metadata"
_PEFT_TYPES = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}


def read_diffusers(header: Mapping[str, str]) -> Findings:
    """What ``lora_adapter_metadata`` says about the canonical record."""
    found = Findings("diffusers")
    if KEY not in header:
        return found
    try:
        data = parse_json(header[KEY])
    except ValueError:
        found.warnings.append(f"{KEY}: not valid JSON; ignored")
        return found
    if not isinstance(data, dict):
        found.warnings.append(f"{KEY}: expected a JSON object, got {type(data).__name__}; ignored")
        return found
    from .foreign_models import PeftConfig  # pydantic: only files that carry this key load it

    configs = {
        component: PeftConfig.read(raw, where=f"{KEY}.{component + '.' if component else ''}", warnings=found.warnings)
        for component, raw in split_components(data).items()
    }
    _read_network(configs, found)
    return found


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def _read_network(configs: dict[str | None, PeftConfig], found: Findings) -> None:
    # Components with different r / lora_alpha (a text encoder at a lower rank is common) declare per-module
    # facts, which AdapterFile reads from this same config with the weights: record rank/alpha only when all agree.
    ranks = {cfg.r for cfg in configs.values() if cfg.r is not None}
    alphas = {cfg.lora_alpha or cfg.alpha for cfg in configs.values() if (cfg.lora_alpha or cfg.alpha)}
    if len(ranks) == 1:
        found.put("network.rank", ranks.pop(), KEY)
    if len(alphas) == 1:
        found.put("network.alpha", alphas.pop(), KEY)

    types = {_PEFT_TYPES.get((cfg.peft_type or "LORA").upper()) for cfg in configs.values()}
    if any(cfg.use_dora for cfg in configs.values()):
        types = {"dora"}
    if None in types:
        found.warnings.append(f"{KEY}.peft_type: not a network type lorareg records; network.type left unset")
    elif types != {"lora"} and len(types) == 1:  # peft's LORA is LoRA or LoCon: its targets decide, not the config
        found.put("network.type", types.pop(), KEY)

    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    targets: list[str] = []
    for component, cfg in sorted(configs.items(), key=lambda item: COMPONENTS.index(item[0]) if item[0] else 99):
        prefix = f"{component}:" if component else ""
        rank_pattern.update({prefix + k: v for k, v in (cfg.rank_pattern or {}).items()})
        alpha_pattern.update({prefix + k: v for k, v in (cfg.alpha_pattern or {}).items()})
        targets += [t for t in cfg.target_modules or [] if t not in targets]
    found.put("network.rank_pattern", rank_pattern, KEY)
    found.put("network.alpha_pattern", alpha_pattern, KEY)
    found.put("network.target_modules", targets, KEY)
    found.put("network.components", [c for c in COMPONENTS if c in configs], KEY)

    base = next((cfg for cfg in configs.values() if cfg.base_model_name_or_path), None)
    if base is not None:
        name = base.base_model_name_or_path
        if looks_like_repo_id(name):
            found.put("base.model_id", name, KEY)
            found.put("base.revision", base.revision, KEY)
        else:
            found.put("base.model_name", name, KEY)


def looks_like_repo_id(name: str) -> bool:
    """'owner/name' with Hub-legal characters, and not a file path or a checkpoint file name."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name)) and not name.endswith(
        (".safetensors", ".ckpt", ".pt", ".bin")
    ) and len(name) <= 200
