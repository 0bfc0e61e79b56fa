"""Convert an adapter between key formats (kohya, peft, diffusers) through the canonical form.

What is kept exactly: every tensor a target can hold keeps its bytes (only keys change, and a 1x1-conv
factor may be re-shaped to the Linear it patches); ``--dtype`` is the only thing that changes values.
Alpha moves to where the target keeps it (``writer``): kohya alpha tensors, or the peft config's
``lora_alpha``/``alpha_pattern``. Alpha = rank is left implicit in kohya when the input had no alpha tensor.

What is lowered: peft and diffusers hold plain LoRA only, so LoCon (``mid``), LoHa, LoKr and full modules
become plain LoRA through ``delta.lowrank_factors``: exact where the rank allows (LoHa r1*r2, LoKr
rank(W1)*rank(W2)), else the best rank-``rank`` approximation with its relative error reported per module;
their scale is folded into ``up`` and alpha = rank. DoRA survives into peft (per-output magnitude) and
kohya. With ``dora_to_lora`` (and always into diffusers, which lorareg writes without DoRA) DoRA modules become
plain LoRA on the base weights ``base`` names (``ops.dora``: exact at rank r + k where that stays small, else
SVD to ``rank``, default the module's rank, its error reported and held to ``max_error``); without base
weights that is refused (DoraNeedsBase, exit 2).

SD3/Flux: kohya's fused modules (``img_attn.qkv``) are split into their diffusers targets for peft and
diffusers; split targets are fused back when writing kohya with original module names (``targets``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..adapter import AdapterFile
from ..canonical import CanonicalKey, ModuleKey
from ..errors import UsageError
from ..formats import FORMATS, is_fused
from .common import alpha_array, by_module, flatten_modules, numpy_dtype, storage_dtype
from .delta import algorithm, lowrank_factors, scale_rank
from .dora import lower_dora, open_base_weights
from .errors import DoraNeedsBase, TooLossy, UnsupportedModule
from .progress import progress
from .fused import fuse_split, natively_named, reorder_scale_shift, split_foreign_fused, split_fused
from .targets import fused_path_of, layout, peft_text_model_defaults

TARGET_FORMATS = ("kohya", "peft", "diffusers", "bfl")
NATIVE_NAMED = ("kohya", "bfl")  # formats that name SD3/Flux modules after the original model (fused, see ops.fused)
DEFAULT_MAX_ERROR = 0.01  # relative Frobenius error per module a lossy lowering may cost without --force


@dataclass(frozen=True)
class ModuleConversion:
    """A module whose tensors had to change form (lowered to plain LoRA, split or fused)."""

    module: str
    change: str  # lowered / split / fused
    algorithm: str  # what it was: lora, locon, loha, lokr, full
    rank: int
    exact: bool = True
    rel_error: float = 0.0


@dataclass
class ConvertResult:
    format_from: str
    format_to: str
    modules: int = 0
    changed: list[ModuleConversion] = field(default_factory=list)
    output: Any = None
    max_error: float = DEFAULT_MAX_ERROR

    @property
    def over_max_error(self) -> list[ModuleConversion]:
        return [c for c in self.changed if c.rel_error > self.max_error]

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "from": self.format_from, "to": self.format_to, "modules": self.modules,
            "lowered": sum(c.change == "lowered" for c in self.changed),
            "approximate": sum(not c.exact for c in self.changed),
            "max_rel_error": max((c.rel_error for c in self.changed), default=0.0),
            "max_error": self.max_error, "over_max_error": len(self.over_max_error),
            "changed": [asdict(c) for c in self.changed],
        }
        if self.output is not None:
            data.update(output=str(self.output.path), sha256=self.output.sha256, verify_ok=self.output.report.ok)
        return data


def _plain_lora(roles: Mapping[str, np.ndarray]) -> bool:
    return algorithm(roles) == "lora" and "mid" not in roles


def _natural_shape(roles: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    up, down = roles["up"], roles["down"]
    return (up.shape[0], *down.shape[1:])


def _lowered_dora(module: ModuleKey, roles: dict[str, np.ndarray], lowering: DoraLowering, *, rank: int | None,
                  dtype, base: tuple[int, ...] | None, rows: list[ModuleConversion]) -> dict[str, np.ndarray]:
    """A DoRA module as plain LoRA on the base weights (``ops.dora``), its error in ``rows``."""
    algo = "dora" if algorithm(roles) == "lora" else f"dora {algorithm(roles)}"
    lr = lower_dora(module, roles, lowering.weights, source_format=lowering.source_format, max_rank=rank)
    lr = replace(lr, shape=layout(lr.shape, base, follow_base=True))
    rows.append(ModuleConversion(str(module), "lowered", algo, lr.rank, exact=lr.rel_error == 0.0,
                                 rel_error=lr.rel_error))
    return {**lr.lora_tensors(dtype), "alpha": alpha_array(lr.rank)}


def _to_plain(module: ModuleKey, roles: dict[str, np.ndarray], *, to: str, rank: int | None, dtype,
              base: tuple[int, ...] | None, rows: list[ModuleConversion]) -> dict[str, np.ndarray]:
    """One module in a form peft/diffusers hold: plain LoRA (bytes kept where it already is), DoRA for peft."""
    if "dora_scale" in roles:
        if to != "peft" or not _plain_lora(roles):
            raise DoraNeedsBase(f"{module}: DoRA becomes plain LoRA for {to} only with the base weights",
                                hint="pass --base MODEL (the model folder or checkpoint it was trained on), or "
                                     "convert to peft or kohya, which keep DoRA")
        out = roles["up"].shape[0]
        magnitude = roles["dora_scale"]
        if magnitude.size != out:  # LyCORIS' default per-input magnitude; peft's is per output row
            raise UnsupportedModule(f"{module}: DoRA magnitude {magnitude.shape} is per input channel; peft's is "
                                    "per output row", hint="keep this adapter in kohya format")
        roles = {**roles, "dora_scale": magnitude.reshape(out)}
    if _plain_lora(roles):
        shape = layout(_natural_shape(roles), base, follow_base=True)
        r = roles["down"].shape[0]
        return {**roles, "down": roles["down"].reshape(r, *shape[1:]),
                "up": roles["up"].reshape(shape[0], r, *([1] * (len(shape) - 2)))}
    algo = "locon" if "mid" in roles else algorithm(roles)
    lr = lowrank_factors(roles, max_rank=rank)
    lr = replace(lr, shape=layout(lr.shape, base, follow_base=True))
    rows.append(ModuleConversion(str(module), "lowered", algo, lr.rank, exact=lr.rel_error == 0.0,
                                 rel_error=lr.rel_error))
    return {**lr.lora_tensors(dtype), "alpha": alpha_array(lr.rank)}


@dataclass(frozen=True)
class DoraLowering:
    """DoRA modules become plain LoRA: the base weights (``dora.open_base_weights``, None: refused with a hint)
    and the input's format (it tells peft's [1, out, 1, 1] conv magnitude from LyCORIS' [1, in, 1, 1])."""

    weights: Any
    source_format: str | None


def convert_tensors(tensors: Mapping[CanonicalKey, np.ndarray], *, to: str, stored: set[CanonicalKey] | None = None,
                    rank: int | None = None, dtype=None, shapes: Mapping[ModuleKey, tuple[int, ...]] | None = None,
                    fuse: bool = False, show_progress: bool | None = None, dora: DoraLowering | None = None,
                    ) -> tuple[dict[CanonicalKey, np.ndarray], list[ModuleConversion]]:
    """Canonical tensors (``io.load_canonical``) -> canonical tensors that format ``to`` can write.

    ``stored``: the keys the input file really had (synthesized alphas equal to the rank are dropped again
    for kohya). ``dtype``: cast every factor (None: keep). ``shapes``: base weight shapes. ``fuse``: fuse
    SD3/Flux split targets (kohya with original names). ``dora``: write DoRA modules as plain LoRA (``rank``
    then bounds their rank too).
    """
    if to not in TARGET_FORMATS:
        raise UsageError(f"cannot convert to {to!r}", hint=f"one of: {', '.join(TARGET_FORMATS)}")
    storage = storage_dtype(tensors)
    rows: list[ModuleConversion] = []
    out: dict[ModuleKey, dict[str, np.ndarray]] = {}
    modules = by_module(tensors)
    for module, roles in progress(modules.items(), total=len(modules), description="convert",
                                  enabled=show_progress):
        roles = dict(roles)
        if dora is not None and "dora_scale" in roles:
            roles = _lowered_dora(module, roles, dora, rank=rank, dtype=dtype or storage,
                                  base=(shapes or {}).get(module), rows=rows)
        if to in NATIVE_NAMED:
            alpha_key = CanonicalKey(module.component, module.path, "alpha")
            rank_of = scale_rank({r: a.shape for r, a in roles.items()})
            if stored is not None and alpha_key not in stored and "alpha" in roles \
                    and float(roles["alpha"]) == rank_of:
                del roles["alpha"]
            out[module] = roles
            continue
        roles = _to_plain(module, roles, to=to, rank=rank, dtype=dtype or storage,
                          base=(shapes or {}).get(module), rows=rows)
        if module.component == "transformer" and is_fused(module.path):
            out.update(split_fused(module, roles))
            rows.append(ModuleConversion(str(module), "split", "lora", roles["down"].shape[0]))
        else:
            out[module] = roles
    if fuse:
        out = fuse_targets(split_foreign_fused(out), rows)
    unsupported = sorted({r for roles in out.values() for r in roles} - FORMATS[to].roles - {"alpha"})
    if unsupported:
        hint = "convert to kohya, which holds every LyCORIS role" if to != "kohya" else "convert to peft"
        raise UnsupportedModule(f"{to} cannot hold role(s) {', '.join(unsupported)}", hint=hint)
    result = flatten_modules(out)
    if dtype is not None:
        result = {k: a if k.role == "alpha" else a.astype(dtype) for k, a in result.items()}
    return result, rows


def fuse_targets(modules: dict[ModuleKey, dict[str, np.ndarray]],
              rows: list[ModuleConversion]) -> dict[ModuleKey, dict[str, np.ndarray]]:
    groups: dict[tuple[str, str], dict[str, dict[str, np.ndarray]]] = {}
    kept: dict[ModuleKey, dict[str, np.ndarray]] = {}
    for module, roles in modules.items():
        fused = fused_path_of(module.path) if module.component == "transformer" else None
        if fused is None:
            kept[module] = roles
        elif not _plain_lora(roles) or "dora_scale" in roles:
            raise UnsupportedModule(f"{module}: only plain LoRA targets can be fused into {fused}",
                                    hint="write with dialect transformer_names=diffusers instead")
        else:
            groups.setdefault((module.component, fused), {})[module.path] = roles
    for (component, fused), parts in groups.items():
        roles = fuse_split(fused, component, parts)
        kept[ModuleKey(component, fused)] = roles
        rows.append(ModuleConversion(f"{component}:{fused}", "fused", "lora", roles["down"].shape[0]))
    return dict(sorted(kept.items()))


def native_names_dialect(adapter: AdapterFile, dialect: Mapping[str, str]) -> dict[str, str]:
    """The kohya dialect for transformer modules: original names (fuse) unless told diffusers names; the
    family from the dialect, else from the declared architecture, else from the input's own original names."""
    full = dict(dialect)
    if any(m.component == "transformer" for m in adapter.modules) and "transformer_names" not in full:
        arch = adapter.metadata.base.architecture or ""
        family = "flux" if arch.startswith("flux") else "sd3" if arch.startswith("sd3") else None
        spelled = adapter.mapping.dialect.get("transformer_names")  # kohya / bfl input: names only one family has
        family = family or (spelled if spelled in ("flux", "sd3") else None) or _detected_family(adapter)
        if family:
            full["transformer_names"] = family
    return full


def _detected_family(adapter: AdapterFile) -> str | None:
    """flux or sd3 from the base the module shapes fit best (verify's detection), or None."""
    from ..verify.context import Context

    best = Context.build(adapter, None).detection.best
    name = best.fingerprint if best is not None else ""
    return "flux" if name.startswith("flux") else "sd3" if name.startswith("sd3") else None


def convert(input: str | os.PathLike[str], output: str | os.PathLike[str], *, to: str, dtype: str | None = None,
            rank: int | None = None, max_error: float | None = None, dialect: Mapping[str, str] | None = None,
            force: bool = False, base: str | None = None, show_progress: bool | None = None,
            dora_to_lora: bool = False) -> ConvertResult:
    """Convert the adapter at ``input`` to format ``to`` and write it to ``output`` (verified, atomic).

    ``rank``: the rank of modules lowered to plain LoRA (peft/diffusers hold nothing else); an adapter with
    no module to lower, or a kohya target (which keeps every LyCORIS module), is refused with it rather than
    ignoring it. ``max_error``: the relative Frobenius error a lowered module may have (default
    ``DEFAULT_MAX_ERROR``); beyond it TooLossy (exit 1) and nothing is written, unless ``force``.
    ``dora_to_lora``: DoRA modules become plain LoRA on the weights of ``base`` (a model folder or checkpoint);
    into diffusers they always do.
    """
    from .io import carried_header, check_output_path, load_canonical, op_metadata, parent_record, write_op_output
    from .targets import base_shapes

    if to not in TARGET_FORMATS:
        raise UsageError(f"cannot convert to {to!r}", hint=f"one of: {', '.join(TARGET_FORMATS)}")
    if rank is not None and rank < 1:
        raise UsageError(f"rank must be at least 1, got {rank}")
    if rank is not None and to == "kohya" and not dora_to_lora:
        raise UsageError(f"--rank {rank} does nothing when converting to kohya: kohya keeps LoCon, LoHa and LoKr "
                         "modules as they are", path=input, hint="change ranks with `lorareg resize`")
    limit = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
    if not limit >= 0 or limit == float("inf"):
        raise UsageError(f"--max-error must be a number >= 0, got {max_error}")
    check_output_path(output, [input])
    adapter = AdapterFile.open(input)
    same_format = adapter.format == to
    defaults = peft_text_model_defaults(adapter) if to not in NATIVE_NAMED and not same_format else {}
    out_dialect = {**defaults, **(adapter.mapping.dialect if same_format else {}), **(dialect or {})}
    if to in NATIVE_NAMED:
        out_dialect = native_names_dialect(adapter, out_dialect)
    fuse = to in NATIVE_NAMED and out_dialect.get("transformer_names", "") != "diffusers"
    tensors = load_canonical(adapter)
    has_dora = any(key.role == "dora_scale" for key in tensors)
    lowering = None
    if has_dora and (dora_to_lora or to == "diffusers"):
        lowering = DoraLowering(weights=open_base_weights(base), source_format=adapter.format)
    native = natively_named(adapter.mapping)  # [shift, scale] rows move where the other naming keeps them
    moved = {m for m in adapter.modules if m.component == "transformer"} - native if fuse else native
    tensors = reorder_scale_shift(tensors, moved)
    converted, rows = convert_tensors(
        tensors, to=to, stored=set(adapter.mapping.mapped.values()), rank=rank, dtype=numpy_dtype(dtype),
        shapes=base_shapes(adapter, base) if to != "kohya" or lowering else None, fuse=fuse,
        show_progress=show_progress, dora=lowering)
    lowered = [r for r in rows if r.change == "lowered"]
    if rank is not None and not lowered:
        raise UsageError(f"--rank {rank} does nothing here: no module of this adapter has to become plain LoRA "
                         f"for {to}", path=input, hint="change ranks with `lorareg resize`")
    result = ConvertResult(format_from=adapter.format, format_to=to, modules=len(adapter.modules), changed=rows,
                           max_error=limit)
    if result.over_max_error and not force:
        over = sorted(result.over_max_error, key=lambda r: -r.rel_error)
        listed = ", ".join(f"{r.module} ({r.rel_error:.3g})" for r in over[:5])
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        raise TooLossy(f"{len(over)} lowered modules would change by more than --max-error {limit:g} (relative "
                       f"Frobenius error): {listed}{more}; nothing written", path=input,
                       hint="raise --rank, allow a larger --max-error, or --force to write it anyway")
    params = {"to": to, "dtype": dtype, "rank": rank, "dialect": dict(dialect or {}),
              **({"dora_to_lora": True} if lowering else {})}
    record = op_metadata(adapter.metadata, operation="convert", params=params, parents=[parent_record(adapter)])
    written = write_op_output(output, converted, format=to, dialect=out_dialect, metadata=record,
                              header=carried_header(adapter), inputs=[Path(input)], force=force, base=base)
    result.output = written
    return result
