"""The canonical key form every key format maps to.

A tensor of an adapter is addressed as ``(component, module_path, role)``:

* ``component``: ``unet``, ``text_encoder``, ``text_encoder_2``, ``text_encoder_3`` or ``transformer``;
* ``module_path``: the diffusers/transformers module name, dotted. SDXL SGM block names are mapped to
  diffusers ``down_blocks``/``mid_block``/``up_blocks``. CLIP text encoder paths always carry the
  ``text_model.`` level (``text_model.encoder.layers.0.self_attn.q_proj``), whichever spelling the file used;
* ``role``: which factor of the module's delta the tensor is (see ``ROLES``).

Conversions go through this form, so N key formats need N mappers, not N squared.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

from .record import FrozenRecord, Record

Component = Literal["unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer"]
COMPONENTS: tuple[str, ...] = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")

# role -> what it is. Shapes follow kohya conventions: Linear down [r, in], up [out, r];
# Conv down [r, in, kh, kw], up [out, r, 1, 1]; alpha is a 0-dim scalar.
ROLES: dict[str, str] = {
    "down": "LoRA down / A factor",
    "up": "LoRA up / B factor",
    "alpha": "LoRA alpha (scalar); scale = alpha / rank",
    "mid": "LoCon Tucker middle factor (lora_mid)",
    "up_bias": "bias of the up / B factor (peft lora_bias)",
    "dora_scale": "DoRA magnitude (kohya dora_scale / peft lora_magnitude_vector)",
    "hada_w1_a": "LoHa factor",
    "hada_w1_b": "LoHa factor",
    "hada_w2_a": "LoHa factor",
    "hada_w2_b": "LoHa factor",
    "hada_t1": "LoHa Tucker factor",
    "hada_t2": "LoHa Tucker factor",
    "lokr_w1": "LoKr full left factor",
    "lokr_w1_a": "LoKr left factor, low-rank A",
    "lokr_w1_b": "LoKr left factor, low-rank B",
    "lokr_w2": "LoKr full right factor",
    "lokr_w2_a": "LoKr right factor, low-rank A",
    "lokr_w2_b": "LoKr right factor, low-rank B",
    "lokr_t2": "LoKr Tucker factor",
    "diff": "full weight difference (LyCORIS full)",
    "diff_b": "full bias difference (LyCORIS full)",
}

NETWORK_TYPES: tuple[str, ...] = ("lora", "locon", "loha", "lokr", "dora", "full")


class ModuleKey(NamedTuple):
    """One module of a base model that an adapter patches. (A NamedTuple: adapters have thousands of these
    as dict keys, and tuples hash and compare in C.)"""

    component: str
    path: str

    def __str__(self) -> str:
        return f"{self.component}:{self.path}"


class CanonicalKey(NamedTuple):
    """One tensor of an adapter in canonical form."""

    component: str
    path: str
    role: str

    @property
    def module(self) -> ModuleKey:
        return _module_key(self[:2])  # a file's every key asks: ModuleKey(component, path) without its Python __new__

    def __str__(self) -> str:
        return f"{self.component}:{self.path}:{self.role}"


_module_key = functools.partial(tuple.__new__, ModuleKey)  # ModuleKey((component, path)), built in C


class KeyMapping(Record):
    """The result of mapping one file's tensor keys to the canonical form.

    ``mapped`` holds every key the format understood; ``unknown`` every key it did not (kept and
    reported, never dropped). ``dialect`` records the spelling choices of this file (prefixes, SGM vs
    diffusers block names, ``text_model.`` level, ...) so that writing the same format back with the
    same dialect reproduces the original key names exactly.
    """

    format: str
    mapped: dict[str, CanonicalKey]
    unknown: list[str]
    dialect: dict[str, str]

    def __init__(self, format: str, mapped: dict[str, CanonicalKey] | None = None, unknown: list[str] | None = None,
                 dialect: dict[str, str] | None = None) -> None:
        self.format = format
        self.mapped = {} if mapped is None else mapped
        self.unknown = [] if unknown is None else unknown
        self.dialect = {} if dialect is None else dialect


class WeightFacts(FrozenRecord):
    """What the weights alone tell about an adapter; input to metadata inference.

    ``rank``/``alpha`` are the most common values over Linear modules (``None`` when there are none),
    ``rank_pattern``/``alpha_pattern`` map module paths (``component:path``) that differ from them.
    """

    format: str
    network_type: str
    components: tuple[str, ...]
    module_count: int
    rank: int | None
    alpha: float | None
    conv_rank: int | None
    conv_alpha: float | None
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    target_modules: tuple[str, ...]
    architecture: str | None
    tensor_sha256: str | None
    conv_modules: tuple[str, ...]  # modules (component:path) whose rank is conv_rank: kernels wider than 1x1

    def __init__(self, format: str, network_type: str, components: tuple[str, ...], module_count: int,
                 rank: int | None = None, alpha: float | None = None, conv_rank: int | None = None,
                 conv_alpha: float | None = None, rank_pattern: dict[str, int] | None = None,
                 alpha_pattern: dict[str, float] | None = None, target_modules: tuple[str, ...] = (),
                 architecture: str | None = None, tensor_sha256: str | None = None,
                 conv_modules: tuple[str, ...] = ()) -> None:
        self._set(format=format, network_type=network_type, components=components, module_count=module_count,
                  rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=conv_alpha,
                  rank_pattern={} if rank_pattern is None else rank_pattern,
                  alpha_pattern={} if alpha_pattern is None else alpha_pattern, target_modules=target_modules,
                  architecture=architecture, tensor_sha256=tensor_sha256, conv_modules=conv_modules)
