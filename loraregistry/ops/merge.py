"""Merge adapters exactly by concatenating factors: ``sum_i w_i s_i B_i A_i = [w_1 s_1 B_1 | ...] @ [A_1; ...]``.

Each parent's module is first written as plain LoRA factors (``delta.lowrank_factors``: LoRA as is,
LoCon/LoHa/LoKr exactly), its scale ``alpha / rank`` and merge weight folded into ``up`` (a negative
weight flips the sign of ``up`` only), and the factors are stacked: the rank adds up, the delta is the
weighted sum of the parents' deltas, and the output stores alpha = rank (scale 1). Modules one parent
lacks simply have fewer blocks; a weight of 0 leaves a parent out of the tensors (it stays in provenance).

What needs no arithmetic is not touched: stacked ``down`` rows are written straight from the inputs' memory
maps (``outfile.RowStack``), and parents that share one positive ``w s`` keep their ``up`` bytes too (alpha
then carries that scale), so such a merge copies bytes and hashes them, nothing more.

``rank`` reduces every module to at most ``rank`` in factor space (``lowrank.factor_svd``); a rank above
every merged module's rank is an error (RankTooHigh). Adapters for different base architectures are
refused (MixedArchitectures).

DoRA parents: two magnitude vectors have no merged form, so each DoRA module is first written as plain LoRA on the
base weights ``base`` names (``ops.dora``: exact at rank r + k where that stays small, else SVD to the module's
rank), with its error reported per module (``dora_rel_error``) and held to ``max_error`` (TooLossy, exit 1,
unless ``force``). Without base weights they are refused (DoraNeedsBase, exit 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..adapter import AdapterFile
from ..canonical import CanonicalKey, ModuleKey
from ..formats import is_fused
from .common import alpha_array, by_module, flatten_modules, numpy_dtype, storage_dtype
from .convert import DEFAULT_MAX_ERROR, NATIVE_NAMED, fuse_targets, native_names_dialect
from .fused import split_foreign_fused, split_fused
from .delta import lowrank_factors, module_scale
from .errors import BadMergeWeight, DoraNeedsBase, MixedArchitectures, RankTooHigh, TooLossy, UnsupportedModule
from .lowrank import factor_svd, to_float32
from .background import Background
from .progress import progress
from .targets import base_shapes, fused_path_of, layout, peft_text_model_defaults

_RATINGS = ("general", "mature", "adult")
_PLAIN_ROLES = frozenset({"down", "up", "alpha"})
_SINGLE_DTYPES = frozenset({"float16", "bfloat16", "float32"})  # exact in float32


@dataclass(frozen=True)
class MergeInput:
    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> MergeInput:
        """``A.safetensors:0.8`` -> (A.safetensors, 0.8); no ``:WEIGHT`` -> weight 1. A path that exists as
        given (even with a colon in it) is taken whole."""
        if Path(text).exists() or ":" not in text:
            return cls(Path(text), 1.0)
        path, _, raw = text.rpartition(":")
        try:
            weight = float(raw)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise BadMergeWeight(f"merge weight {raw!r} in {text!r} is not a finite number",
                                 hint="write ADAPTER:WEIGHT, e.g. style.safetensors:0.8")
        return cls(Path(path), weight)


@dataclass(frozen=True)
class ModuleMerge:
    module: str
    parents: int  # how many parents patch this module (weight != 0)
    rank: int  # output rank
    merged_rank: int  # rank of the exact concatenation
    rel_error: float = 0.0  # of the optional rank reduction
    dora_rel_error: float = 0.0  # largest error of a DoRA parent's module written as plain LoRA (0: exact)


@dataclass
class MergeResult:
    modules: list[ModuleMerge] = field(default_factory=list)
    output: Any = None

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "modules": len(self.modules),
            "max_rel_error": max((m.rel_error for m in self.modules), default=0.0),
            "max_dora_rel_error": max((m.dora_rel_error for m in self.modules), default=0.0),
            "per_module": [asdict(m) for m in self.modules],
        }
        if self.output is not None:
            data.update(output=str(self.output.path), sha256=self.output.sha256, verify_ok=self.output.report.ok)
        return data


@dataclass(frozen=True)
class _Piece:
    """One parent's module as ``coefficient * up @ down``: plain LoRA stored as 16/32-bit floats keeps both factors
    as stored (``coefficient`` = weight * scale, applied only where arithmetic is needed); anything else comes
    from ``delta.lowrank_factors`` in float64 with the coefficient folded in (1.0)."""

    up: np.ndarray  # [out, r]
    down: np.ndarray  # [r, in * K]
    shape: tuple[int, ...]  # the delta's natural shape
    coefficient: float

    def scaled_up(self) -> np.ndarray:
        if self.coefficient == 1.0 and not _single(self.up.dtype):
            return self.up
        return (to_float32(self.up) if _single(self.up.dtype) else self.up) * np.float32(self.coefficient)


def _single(dtype: np.dtype) -> bool:
    """``dtype.name in _SINGLE_DTYPES``, remembered per dtype (``name`` is computed in Python at each call)."""
    known = _SINGLE.get(dtype)
    if known is None:
        known = _SINGLE[dtype] = dtype.name in _SINGLE_DTYPES
    return known


_SINGLE: dict[np.dtype, bool] = {}


def _piece(roles: Mapping[str, np.ndarray], weight: float) -> _Piece:
    up, down = roles.get("up"), roles.get("down")
    if (up is not None and down is not None and _PLAIN_ROLES.issuperset(roles)
            and _single(up.dtype) and _single(down.dtype)
            and down.shape[0] <= min(up.shape[0], math.prod(down.shape[1:]))):  # else exact_compress first
        return _Piece(up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), (up.shape[0], *down.shape[1:]),
                      weight * module_scale(roles))
    lr = lowrank_factors(roles)
    return _Piece(lr.up * weight, lr.down, lr.shape, 1.0)


def _stacked_up(pieces: Sequence[_Piece], dtype: np.dtype, exact: bool) -> tuple[np.ndarray, float]:
    """(up of the merge, the scale its alpha must give). Parents that share one positive coefficient and store
    ``up`` in the output dtype need no arithmetic: their columns are stacked as stored and alpha carries the
    coefficient. Otherwise each coefficient is folded into its columns (float32 for 16/32-bit factors, exact
    reads) and the scale is 1."""
    first = pieces[0].coefficient
    if exact and first > 0 and all(p.coefficient == first and p.up.dtype == dtype for p in pieces):
        return _columns([p.up for p in pieces], dtype), first
    if all(_single(p.up.dtype) for p in pieces):  # float32 products, written in place: no concatenated copy
        stacked = np.empty((pieces[0].up.shape[0], sum(p.up.shape[1] for p in pieces)), np.float32)
        column = 0
        for p in pieces:
            width = p.up.shape[1]
            np.multiply(to_float32(p.up), np.float32(p.coefficient), out=stacked[:, column:column + width])
            column += width
        return stacked, 1.0
    return np.concatenate([p.scaled_up() for p in pieces], axis=1), 1.0


def _columns(parts: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """``np.concatenate(parts, axis=1)``: one new array, each part copied straight to its columns (a third
    faster than concatenate on an exact merge's narrow ``up`` factors); one part is returned as it is (a view of
    its input's memory map: written from there)."""
    if len(parts) == 1:
        return parts[0]
    stacked = np.empty((parts[0].shape[0], sum(p.shape[1] for p in parts)), dtype)
    column = 0
    for part in parts:
        stacked[:, column:column + part.shape[1]] = part
        column += part.shape[1]
    return stacked


def _stacked_down(pieces: Sequence[_Piece], dtype: np.dtype, shape: tuple[int, ...], stream: bool):
    """The merge's down: the parents' rows stacked; with ``stream`` and no dtype change a ``RowStack`` of the
    parents' own arrays (views of the inputs' memory maps, written from there)."""
    downs = [p.down for p in pieces]
    if stream and all(d.dtype == dtype for d in downs):
        from .outfile import RowStack

        return RowStack(tuple(d.reshape(d.shape[0], *shape[1:]) for d in downs))
    if len({d.dtype for d in downs}) > 1:  # e.g. fp16 and bf16 parents: numpy has no common type for those
        downs = [to_float32(d) if _single(d.dtype) else d for d in downs]
    down = np.concatenate(downs, axis=0)
    return down.reshape(down.shape[0], *shape[1:]).astype(dtype, copy=False)


def lower_dora_parent(tensors: Mapping[CanonicalKey, np.ndarray], weights, *,
                      source_format: str | None) -> tuple[dict[CanonicalKey, np.ndarray], dict[ModuleKey, float]]:
    """A parent's canonical tensors with every DoRA module written as plain LoRA on the base ``weights``
    (``dora.lower_dora``, alpha = rank), and the relative error of each such module."""
    from .dora import lower_dora

    modules = by_module(tensors)
    errors: dict[ModuleKey, float] = {}
    for module, roles in modules.items():
        if "dora_scale" in roles:
            lr = lower_dora(module, roles, weights, source_format=source_format)
            modules[module] = {**lr.lora_tensors(np.float64), "alpha": alpha_array(lr.rank)}
            errors[module] = lr.rel_error
    return flatten_modules(modules), errors


def merge_modules(parents: Sequence[tuple[dict[CanonicalKey, np.ndarray], float]], *, rank: int | None = None,
                  dtype=None, shapes: Mapping[ModuleKey, tuple[int, ...]] | None = None,
                  show_progress: bool | None = None,
                  stream: bool = False) -> tuple[dict[CanonicalKey, np.ndarray], list[ModuleMerge]]:
    """Merge canonical tensor sets (each with its weight) into plain-LoRA canonical tensors.

    Plain LoRA stored as fp16/bf16/fp32 is computed in float32 (its values exactly), everything else in fp64
    (``_piece``); ``dtype`` is the storage dtype (default: the first parent's). ``shapes``: base weight shapes,
    used where factors lost a conv kernel (``targets.layout``). Alpha = rank (scale 1), except where an exact
    merge stacks ``up`` columns as stored (``_stacked_up``: alpha then carries the parents' common scale).
    ``stream``: down factors that need no arithmetic stay views of the inputs (``_stacked_down``).
    """
    dtype = np.dtype(dtype) if dtype is not None else storage_dtype(parents[0][0]) if parents else np.float32
    grouped = [(by_module(tensors), weight) for tensors, weight in parents if weight != 0]
    modules = sorted({m for g, _ in grouped for m in g})
    merged: dict[ModuleKey, dict[str, np.ndarray]] = {}
    rows: list[ModuleMerge] = []
    collected: dict[ModuleKey, tuple[list[_Piece], tuple[int, ...]]] = {}
    for module in progress(modules, total=len(modules), description="merge", enabled=show_progress):
        pieces, shape = [], None
        for group, weight in grouped:
            if module not in group:
                continue
            if "up_bias" in group[module]:
                raise UnsupportedModule(f"{module}: a LoRA bias (peft lora_B.bias) cannot be merged by factors")
            piece = _piece(group[module], weight)
            natural = piece.shape
            if shape is None:
                shape = layout(natural, (shapes or {}).get(module), follow_base=False)
            if shape is not None and (natural[0], math.prod(natural[1:])) != (shape[0], math.prod(shape[1:])):
                raise UnsupportedModule(f"{module}: parents disagree on its shape ({shape} vs {natural})",
                                        hint="merge adapters made for the same base")
            pieces.append(piece)
        collected[module] = (pieces, shape)
    widths = {m: sum(p.up.shape[1] for p in pieces) for m, (pieces, _) in collected.items()}
    if rank is not None and widths and rank > max(widths.values()):
        top = max(widths.values())
        raise RankTooHigh(f"rank {rank} is above the merged rank (largest module: {top})",
                          hint=f"choose --rank {top} or less, or leave it out for the exact merge")
    for module, (pieces, shape) in collected.items():
        merged_rank, error = widths[module], 0.0
        reduce = rank is not None and merged_rank > rank
        up, scale = _stacked_up(pieces, dtype, exact=not reduce)
        if reduce:
            downs = [p.down for p in pieces]
            if len({d.dtype for d in downs}) > 1 or _single(downs[0].dtype):
                downs = [to_float32(d) if _single(d.dtype) else d for d in downs]
            svd = factor_svd(up, np.concatenate(downs, axis=0))
            up, down = svd.factors(rank)
            error = svd.error(rank)[1]
            down = down.reshape(rank, *shape[1:]).astype(dtype, copy=False)
        else:
            down = _stacked_down(pieces, dtype, shape, stream)
        r = up.shape[1]
        merged[module] = {
            "down": down,
            "up": up.reshape(shape[0], r, *([1] * (len(shape) - 2))).astype(dtype, copy=False),
            "alpha": alpha_array(scale * r),
        }
        rows.append(ModuleMerge(module=str(module), parents=len(pieces), rank=r, merged_rank=merged_rank,
                                rel_error=error))
    return flatten_modules(merged), rows


def architecture_of(path: Path, adapter: AdapterFile, context=None) -> str | None:
    """The base architecture an adapter is for: verify's detection, else what its metadata declares.
    ``context``: the adapter's ``verify.context.Context`` when already built (it is the costly part)."""
    from ..verify.context import Context

    ctx = context if context is not None else Context.build(adapter, None)
    return ctx.detection.architecture or ctx.declaration.architecture or adapter.metadata.base.architecture


def check_same_architecture(adapters: Sequence[tuple[Path, AdapterFile]], contexts=None) -> str | None:
    """The common architecture id (None when none is known); MixedArchitectures when two differ."""
    known = {}
    for (path, adapter), context in zip(adapters, contexts or [None] * len(adapters)):
        arch = architecture_of(path, adapter, context)
        if arch is not None:
            known.setdefault(arch, path)
    if len(known) > 1:
        listed = ", ".join(f"{p.name} is {a}" for a, p in known.items())
        raise MixedArchitectures(f"cannot merge adapters for different bases: {listed}",
                                 hint="merge only adapters made for one base model")
    return next(iter(known), None)


def _shapes(adapter: AdapterFile, context, base: str | None) -> dict[ModuleKey, tuple[int, ...]]:
    """``targets.base_shapes`` with the context already built for the architecture check."""
    from ..errors import LoraregError

    if base is not None:
        return base_shapes(adapter, base)
    try:
        target = context.target
    except LoraregError:  # as base_shapes: no fingerprint, no shapes
        return {}
    if target is None:
        return {}
    found = {module: target.lookup(module.component, module.path) for module in adapter.modules}
    return {module: spec.weight_shape for module, spec in found.items() if spec is not None}


def merged_record(adapters: Sequence[AdapterFile], architecture: str | None):
    """The merged canonical record: union of trigger words and tags, the strictest content rating, the base of
    the parents; fields that do not survive a merge (training, ...) are left out."""
    from ..schema import AdapterMetadata, BaseInfo

    records = [a.metadata for a in adapters]
    triggers = list(dict.fromkeys(w for r in records for w in r.trigger_words))
    tags = list(dict.fromkeys(t for r in records for t in r.tags))
    rating = max((r.content_rating for r in records), key=_RATINGS.index)
    licenses = {r.license for r in records}
    names = [r.name or a.path.stem for r, a in zip(records, adapters)]
    first_base = next((r.base for r in records if r.base.architecture), records[0].base if records else BaseInfo())
    base = BaseInfo(architecture=architecture or first_base.architecture, model_id=first_base.model_id,
                    prediction_type=first_base.prediction_type, resolution=first_base.resolution)
    return AdapterMetadata(
        name=" + ".join(names)[:500], trigger_words=triggers, tags=tags, content_rating=rating,
        license=licenses.pop() if len(licenses) == 1 else None, base=base,
        description=f"Merge of {len(adapters)} adapters: {', '.join(names)}"[:20_000],
    )


def merge(inputs: Sequence[MergeInput], output: str | os.PathLike[str], *, rank: int | None = None,
          to: str | None = None, dtype: str | None = None, force: bool = False, base: str | None = None,
          show_progress: bool | None = None, max_error: float | None = None) -> MergeResult:
    """Merge ``inputs`` (path + weight) into ``output``, in format ``to`` (default: the first input's).

    ``max_error``: the relative error a DoRA parent's module may take on becoming plain LoRA (default
    ``convert.DEFAULT_MAX_ERROR``); beyond it TooLossy (exit 1), nothing written, unless ``force``."""
    from ..errors import UsageError
    from .io import check_output_path, load_canonical, op_metadata, parent_record, write_op_output

    if not inputs:
        raise UsageError("merge needs at least one ADAPTER[:WEIGHT]")
    if rank is not None and rank < 1:
        raise UsageError(f"rank must be at least 1, got {rank}")
    limit = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
    if not limit >= 0 or limit == float("inf"):
        raise UsageError(f"--max-error must be a number >= 0, got {max_error}")
    check_output_path(output, [i.path for i in inputs])
    from ..verify.context import Context

    adapters = [AdapterFile.open(i.path) for i in inputs]
    contexts = [Context.build(a, None) for a in adapters]  # detection once per input: architecture and shapes
    architecture = check_same_architecture([(i.path, a) for i, a in zip(inputs, adapters)], contexts)
    # the parents' hashes (GIL released) on a thread beside the maths
    hashing = Background(lambda: [parent_record(a, weight=i.weight) for i, a in zip(inputs, adapters)], ())
    try:
        tensors = [(load_canonical(a, copy=False), i.weight) for i, a in zip(inputs, adapters)]
        store = numpy_dtype(dtype) or (storage_dtype(tensors[0][0]) if tensors else None)  # before DoRA -> fp64
        tensors, dora_errors = _lower_dora_parents(tensors, adapters, inputs, base, limit, force)
        first = adapters[0]
        fmt = to or (first.format if first.format in ("kohya", "peft", "diffusers") else "kohya")
        dialect = first.mapping.dialect if first.format == fmt else (
            peft_text_model_defaults(first) if fmt in ("peft", "diffusers") else {})
        for adapter in adapters if fmt in NATIVE_NAMED else ():  # the SD3/Flux family from any parent that tells it
            dialect = native_names_dialect(adapter, dialect)
            if "transformer_names" in dialect:
                break
        native = fmt in NATIVE_NAMED and dialect.get("transformer_names") != "diffusers"
        tensors, fuse_after = _one_transformer_layout(tensors, native=native)
        shapes = {m: s for a, ctx in zip(adapters, contexts) for m, s in _shapes(a, ctx, base).items()}
        merged, rows = merge_modules(tensors, rank=rank, dtype=store, shapes=shapes,
                                     show_progress=show_progress, stream=not fuse_after)
        if fuse_after:  # the parents' split SD3/Flux targets go back under the original (fused) module names
            merged = flatten_modules(fuse_targets(split_foreign_fused(by_module(merged)), []))
        rows = [replace(row, dora_rel_error=dora_errors.get(row.module, 0.0)) for row in rows]
        del tensors  # the inputs' memory maps
        parents = hashing.result()
    finally:
        hashing.join()
    params = {"rank": rank, "to": fmt, "dtype": dtype, "weights": [i.weight for i in inputs],
              **({"dora_to_lora": True} if dora_errors else {})}
    record = op_metadata(merged_record(adapters, architecture), operation="merge", params=params, parents=parents)
    written = write_op_output(output, merged, format=fmt, dialect=dialect, metadata=record,
                              inputs=[i.path for i in inputs], force=force, base=base)
    return MergeResult(modules=rows, output=written)


def _one_transformer_layout(parents, *, native: bool):
    """SD3/Flux parents in one module layout, exactly: a fused module (kohya's ``qkv``) is split into its targets
    (``down`` shared, slices of ``up``) when another parent holds split targets or the output format names none
    fused; (parents, whether the merged split targets must be fused again for a format with original names)."""
    layouts = [by_module(tensors) for tensors, _ in parents]
    fused = any(m.component == "transformer" and is_fused(m.path) for g in layouts for m in g)
    split = any(m.component == "transformer" and fused_path_of(m.path) for g in layouts for m in g)
    if not (fused and (split or not native)):
        return parents, native and split
    out = []
    for (tensors, weight), modules in zip(parents, layouts):
        if not any(m.component == "transformer" and is_fused(m.path) for m in modules):
            out.append((tensors, weight))
            continue
        regrouped: dict[ModuleKey, dict[str, np.ndarray]] = {}
        for module, roles in modules.items():
            if module.component != "transformer" or not is_fused(module.path):
                regrouped[module] = dict(roles)
            elif set(roles) <= _PLAIN_ROLES:
                regrouped.update(split_fused(module, roles))
            else:
                extra = "/".join(sorted(set(roles) - _PLAIN_ROLES))
                raise UnsupportedModule(f"{module}: a fused {extra} module cannot be split to merge with split targets",
                                        hint="convert that parent to plain LoRA first: "
                                             "`lorareg convert FILE --to peft -o OUT`")
        out.append((flatten_modules(regrouped), weight))
    return out, native


def _lower_dora_parents(tensors, adapters, inputs, base: str | None, limit: float, force: bool):
    """Parents with their DoRA modules as plain LoRA (see module docstring); {module name: worst error}."""
    from .dora import open_base_weights

    if not any(key.role == "dora_scale" for parent, _ in tensors for key in parent):
        return tensors, {}
    weights = open_base_weights(base)
    lowered, errors = [], {}
    for (parent, weight), adapter, item in zip(tensors, adapters, inputs):
        try:
            plain, module_errors = lower_dora_parent(parent, weights, source_format=adapter.format)
        except (DoraNeedsBase, UnsupportedModule) as exc:
            exc.path = exc.path or str(item.path)  # the module's problem is this parent's
            raise
        lowered.append((plain, weight))
        for module, error in module_errors.items():
            errors[str(module)] = max(error, errors.get(str(module), 0.0))
    over = sorted(((e, m) for m, e in errors.items() if e > limit), reverse=True)
    if over and not force:
        listed = ", ".join(f"{m} ({e:.3g})" for e, m in over[:5])
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        raise TooLossy(f"{len(over)} DoRA modules would change by more than --max-error {limit:g} as plain LoRA "
                       f"(relative Frobenius error): {listed}{more}; nothing written",
                       hint="allow a larger --max-error, or --force to write it anyway")
    return lowered, errors
