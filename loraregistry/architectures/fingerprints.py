"""Module fingerprints of the base architectures: every Linear/Conv2d a LoRA can patch, with its shape.

The data ships as ``data/<name>.json.gz``, generated on the meta device by ``scripts/gen_fingerprints.py``
from the public configs in ``configs/<name>.json``. This module reads it with the standard library only
(no torch), lazily, and caches what it loads.

Paths are canonical (see ``loraregistry.canonical``): diffusers/transformers module names, CLIP paths
with the ``text_model.`` level, T5 paths as in transformers (``encoder.block.0.layer.0.SelfAttention.q``).
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from ..canonical import ModuleKey
from ..errors import UnknownArchitecture, UsageError
from ..lazy_re import lazy
from . import ids

FORMAT_VERSION = 1
CLIP_PREFIX = "text_model."

# What kohya's networks/lora*.py wrap by default (FORMATS.md "Default kohya targets"), in canonical paths:
# UNet Transformer2DModel blocks, CLIP attention + MLP, SD3/Flux transformer blocks. T5 only on request,
# because kohya trains it only with train_t5xxl=True.
_KOHYA_TARGETS = lazy(
    r"^(?:(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\."
    r"|text_model\.encoder\.layers\.\d+\.(?:self_attn|mlp)\."
    r"|(?:single_)?transformer_blocks\.\d+\.)"
)
_T5_TARGETS = lazy(r"^encoder\.block\.\d+\.layer\.\d+\.(?:SelfAttention|DenseReluDense)\.")


@dataclass(frozen=True)
class ModuleSpec:
    """Kind and shape of one patchable module. ``kernel`` is ``(kh, kw)`` for convs, None for Linear."""

    kind: str  # "linear" or "conv"
    in_features: int
    out_features: int
    kernel: tuple[int, int] | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the base weight: (out, in) or (out, in, kh, kw)."""
        if self.kernel is None:
            return (self.out_features, self.in_features)
        return (self.out_features, self.in_features, *self.kernel)


class Fingerprint:
    """All patchable modules of one base architecture, keyed by ``ModuleKey(component, path)``."""

    def __init__(self, name: str, modules: Mapping[ModuleKey, ModuleSpec]) -> None:
        self.name = name
        self.modules: Mapping[ModuleKey, ModuleSpec] = MappingProxyType(dict(modules))

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted({key.component for key in self.modules}))

    def paths(self, component: str) -> list[str]:
        return sorted(key.path for key in self.modules if key.component == component)

    def lookup(self, component: str, path: str) -> ModuleSpec | None:
        """The module at ``path``; CLIP paths may omit the ``text_model.`` level.

        A fused canonical path (kohya SD3/Flux ``attn.{to_q,to_k,to_v}``, see ``formats.mmdit``) is the Linear
        its targets make when stacked: their shared input, the sum of their outputs."""
        spec = self.modules.get(ModuleKey(component, path))
        if spec is None and not path.startswith(CLIP_PREFIX):
            spec = self.modules.get(ModuleKey(component, CLIP_PREFIX + path))
        if spec is None and "{" in path:
            spec = self._fused(component, path)
        return spec

    def _fused(self, component: str, path: str) -> ModuleSpec | None:
        from ..formats.mmdit import fused_targets  # keys-only module; imported late to keep imports one-way

        parts = [self.modules.get(ModuleKey(component, target)) for target in fused_targets(path)]
        if len(parts) < 2 or any(p is None or p.kind != "linear" for p in parts):
            return None
        if len({p.in_features for p in parts}) != 1:
            return None
        return ModuleSpec("linear", parts[0].in_features, sum(p.out_features for p in parts))

    def __repr__(self) -> str:
        return f"Fingerprint({self.name!r}, {len(self.modules)} modules)"


def _data_dir() -> Path:
    return Path(__file__).with_name("data")  # a plain folder of the package (importlib.resources costs ~10 ms)


@lru_cache(maxsize=None)
def fingerprint_names() -> tuple[str, ...]:
    """Names of the shipped fingerprints (``sd1``, ``sdxl-base``, ...)."""
    suffix = ".json.gz"
    return tuple(sorted(p.name[: -len(suffix)] for p in _data_dir().iterdir() if p.name.endswith(suffix)))


@lru_cache(maxsize=None)
def _load(name: str) -> Fingerprint:
    doc = json.loads(gzip.decompress(_data_dir().joinpath(f"{name}.json.gz").read_bytes()))
    if doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"fingerprint {name}: unsupported data format {doc.get('format')!r}")
    # Thousands of rows per base, read at the start of every verify: built with C-level maps, and each of the few
    # dozen distinct shapes made into a ModuleSpec once.
    modules: dict[ModuleKey, ModuleSpec] = {}
    specs: dict[tuple, ModuleSpec] = {}
    for component, rows in doc["components"].items():
        shapes = list(map(tuple, map(_ROW_SHAPE, rows)))
        for kind, in_features, out_features, *kernel in set(shapes) - specs.keys():
            specs[(kind, in_features, out_features, *kernel)] = ModuleSpec(
                kind, in_features, out_features, tuple(kernel) if kernel else None)
        keys = map(_new_module_key, zip(itertools.repeat(component), map(_ROW_PATH, rows)))
        modules.update(zip(keys, map(specs.__getitem__, shapes)))
    return Fingerprint(doc["name"], modules)


_ROW_PATH, _ROW_SHAPE = operator.itemgetter(0), operator.itemgetter(slice(1, None))  # [path, kind, in, out, *kernel]
_new_module_key = functools.partial(tuple.__new__, ModuleKey)  # ModuleKey((component, path)) without a Python call


def fingerprint(name_or_arch_id: str) -> Fingerprint:
    """The fingerprint named ``sd1``/``sdxl-base``/..., or the one of any architecture id or alias."""
    if name_or_arch_id in fingerprint_names():
        return _load(name_or_arch_id)
    arch = ids.resolve(name_or_arch_id)
    if arch is None or arch.fingerprint not in fingerprint_names():
        known = ", ".join(fingerprint_names())
        raise UnknownArchitecture(
            f"no module fingerprint for {name_or_arch_id!r}", hint=f"known: {known}, or any architecture id/alias"
        )
    return _load(arch.fingerprint)


def flatten(path: str) -> str:
    """kohya's spelling of a module path: every "." becomes "_"."""
    return path.replace(".", "_")


@lru_cache(maxsize=None)
def _flat_index(component: str) -> Mapping[str, str]:
    index: dict[str, str] = {}
    for name in fingerprint_names():
        for path in _load(name).paths(component):
            flat = flatten(path)
            if index.setdefault(flat, path) != path:  # the flattening would be ambiguous
                raise ValueError(f"{component}: {index[flat]!r} and {path!r} both flatten to {flat!r}")
    return MappingProxyType(index)


def flat_name_index(component: str) -> dict[str, str]:
    """kohya-flattened name -> canonical dotted path, over every module of ``component`` in all fingerprints.

    ``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` -> ``down_blocks.0.attentions.0....to_q``.
    Names are diffusers names: SDXL SGM names (``input_blocks_4_1_...``) and SD3/Flux kohya names
    (``joint_blocks_0_x_block_attn_qkv``) must be mapped by the key format first. Returns a fresh dict.
    """
    return dict(_flat_index(component))


def kohya_default_targets(fingerprint_name: str, component: str, *, include_t5: bool = False) -> list[str]:
    """Sorted module paths kohya's LoRA wraps by default (Linear and 1x1 Conv in the target blocks)."""
    fp = fingerprint(fingerprint_name)
    if component not in fp.components:
        raise UsageError(f"fingerprint {fp.name} has no component {component!r}", hint=f"has: {fp.components}")
    targets = []
    for path in fp.paths(component):
        spec = fp.modules[ModuleKey(component, path)]
        if spec.kind == "conv" and spec.kernel != (1, 1):
            continue
        if _KOHYA_TARGETS.match(path) or (include_t5 and _T5_TARGETS.match(path)):
            targets.append(path)
    return targets
