"""What every consumer's rules look at, worked out once per file from verify's ``Context``.

Rules see plain data (``AdapterFacts``), never torch or the file: per module its keys as spelled in the
file, their key format, algorithm, DoRA, LoCon Tucker ``mid``, and how its delta fits the base module;
per file the unknown keys, the base family and the header metadata. Tests and the generated loader table
build ``AdapterFacts`` by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...canonical import ModuleKey

# How a module's delta sits in the base: loads as is, or the one reshaping some loaders do and others refuse.
FITS, ABSENT, CONV_SHAPED_LINEAR, LINEAR_SHAPED_CONV, MISMATCH, UNCHECKED = (
    "fits", "absent", "conv-shaped-linear", "linear-shaped-conv", "mismatch", "unchecked")
# The families consumer rules can cover (each consumer lists its own); anything else is "other".
FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")


@dataclass(frozen=True)
class ModuleFacts:
    module: ModuleKey
    keys: tuple[str, ...]  # the file's keys of this module, alpha included
    key_format: str  # kohya / peft / diffusers / attn_procs
    algo: str  # lora / loha / lokr / full / other
    fit: str = UNCHECKED
    dora: bool = False
    mid: bool = False  # LoCon Tucker (lora_mid)
    base_shape: tuple[int, ...] | None = None  # the base module's weight shape; None when unchecked or absent

    @property
    def component(self) -> str:
        return self.module.component


@dataclass(frozen=True)
class AdapterFacts:
    format: str  # the file's format: one name, or "mixed"
    modules: Mapping[ModuleKey, ModuleFacts]
    unknown_keys: tuple[str, ...] = ()
    family: str | None = None  # sd1 / sd2 / sdxl / sd3 / flux / other; None when nothing tells
    base_known: bool = False  # module existence and shapes were checked against a base
    metadata: Mapping[str, str] = field(default_factory=dict)
    dialect: Mapping[str, str] = field(default_factory=dict)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted({m.component for m in self.modules}))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for m in self.modules.values() for k in m.keys) + self.unknown_keys


def _key_format(key: str) -> str:
    from ...formats import FORMATS

    return next((name for name, fmt in FORMATS.items() if fmt.parse(key) is not None), "unknown")


def _base_shape(ctx, module: ModuleKey) -> tuple[int, ...] | None:
    target = ctx.target
    if target is None or module.component not in target.components:
        return None
    spec = target.lookup(module.component, module.path)
    return tuple(spec.weight_shape) if spec is not None else None


def _fit(ctx, module: ModuleKey, info) -> str:
    from ..shapes import fit_problems

    target = ctx.target
    if target is None:
        return UNCHECKED
    spec = target.lookup(module.component, module.path) if module.component in target.components else None
    if spec is None:
        return ABSENT
    delta = ctx.deltas.get(module)
    if delta is None:
        return MISMATCH
    names = {p.name for p in fit_problems(info, delta, spec)}
    for name in (CONV_SHAPED_LINEAR, LINEAR_SHAPED_CONV):
        if names == {name}:
            return name
    return MISMATCH if names else FITS


def family_of(ctx) -> str | None:
    """sd1 / sd2 / sdxl / sd3 / flux / other from the requested base, the detected architecture, the base's modules, the
    declared architecture; None when nothing tells."""
    from ...architectures.ids import ARCHITECTURES

    for arch in (getattr(ctx.base, "architecture", None), ctx.detection.architecture):
        if arch in ARCHITECTURES:
            return _family(ARCHITECTURES[arch].family)
    families = {_family(ARCHITECTURES[a].family) for a in ctx.detection.candidates if a in ARCHITECTURES}
    if len(families) == 1:
        return families.pop()
    if ctx.target is not None:
        return _family_of_modules(ctx.target)
    declared = ctx.declaration.architecture
    return _family(ARCHITECTURES[declared].family) if declared in ARCHITECTURES else None


def _family(family: str) -> str:
    return family if family in FAMILIES else "other"


def _family_of_modules(fp) -> str:
    """Tell the family from a base's modules alone (a model folder has no id): Flux has single-stream
    blocks, SD3 a joint transformer without them; SDXL has a second text encoder; SD1's transformer
    projections are 1x1 convs, SD2's are Linear."""
    if "transformer" in fp.components:
        paths = [key.path for key in fp.modules if key.component == "transformer"]
        if any(p.startswith("single_transformer_blocks.") for p in paths):
            return "flux"
        return "sd3" if any(".attn.add_q_proj" in p for p in paths) else "other"
    if "text_encoder_2" in fp.components:
        return "sdxl"
    proj = next((spec for key, spec in fp.modules.items() if key.path.endswith(".proj_in")), None)
    return "sd1" if proj is not None and proj.kind == "conv" else "sd2"


def adapter_facts(ctx) -> AdapterFacts:
    """The facts consumer rules need, from a verify ``Context``."""
    adapter = ctx.adapter
    modules = {}
    for module, info in adapter.modules.items():
        keys = tuple(sorted(info.keys.values()))
        modules[module] = ModuleFacts(
            module=module, keys=keys, key_format=_key_format(keys[0]), algo=info.algo,
            fit=_fit(ctx, module, info), dora=info.dora, mid="mid" in info.tensors,
            base_shape=_base_shape(ctx, module))
    return AdapterFacts(format=adapter.format, modules=modules, unknown_keys=tuple(adapter.unknown_keys),
                        family=family_of(ctx), base_known=ctx.target is not None,
                        metadata=dict(adapter.header.metadata), dialect=dict(adapter.mapping.dialect))
