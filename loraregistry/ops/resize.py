"""Resize an adapter's rank: fixed (``rank``) or kohya's dynamic rules, in factor space.

Per module the delta ``up @ down`` (LoHa/LoKr/LoCon first written as exact low-rank factors) is
decomposed by ``lowrank.factor_svd`` (Cholesky of the small Gram matrices + SVD of the p x p core, QR
where the factors are ill-conditioned; the dense matrix is never built), the rank is chosen
(``lowrank.choose_rank``) and the top singular triplets are kept, which is the Eckart-Young optimum. As
kohya's ``resize_lora.py`` does, the output keeps each module's scale: ``alpha_new = alpha / rank *
new_rank`` with the unscaled product in the factors.

Plain LoRA factors stored as fp16/bf16/fp32 are read straight from the file's memory map into float32
(the Gram path's precision where it is safe); everything else goes through float64. The input's sha256
and AutoV3 (the output's provenance) are computed on a second thread while the modules are resized.

Rank policy: ``rank`` above every module's rank is an error (RankTooHigh: nothing would shrink, and it is
almost always a typo); per module the rank is capped at what the module holds, and the report says so.

DoRA modules stay DoRA: their direction factors (``up @ down``) are resized like any LoRA and the magnitude
vector is kept as it is, so every row (column) of the patched weight still has exactly the norm the magnitude
gives, no base weight is needed, and DoRA loaders keep reading the file. The reported error is that of the
direction delta ``s * up @ down``; the patched weight's own change depends on the base (``lorareg convert
--dora-to-lora --base MODEL`` writes plain LoRA and reports it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..adapter import AdapterFile
from ..canonical import CanonicalKey, ModuleKey
from ..errors import UsageError
from .common import alpha_array, by_module, flatten_modules, numpy_dtype, storage_dtype
from .delta import exact_factors, module_scale
from .errors import RankTooHigh, UnsupportedModule
from .lowrank import DYNAMIC_METHODS, FactorSVD, choose_rank, exact_compress, factor_svd, factor_svds, to_float32
from .progress import progress
from .targets import base_shapes, layout

PASS_THROUGH = ("up_bias", "dora_scale")  # roles outside the low-rank product: kept as they are
_PLAIN_ROLES = frozenset({"down", "up", "alpha", *PASS_THROUGH})
_SINGLE_DTYPES = frozenset({"float16", "bfloat16", "float32"})  # exact in float32
_CHUNK_ELEMENTS = 8 << 20  # factor values per batch of modules (32 MB as float32)


@dataclass(frozen=True)
class ResizeSettings:
    """``rank``: the fixed rank, or the cap with a dynamic method. ``method``/``param``: kohya's dynamic rule
    (``sv_ratio``, ``sv_fro``, ``sv_cumulative``) and its value."""

    rank: int | None = None
    method: str | None = None
    param: float | None = None

    def __post_init__(self) -> None:
        if self.rank is None and self.method is None:
            raise UsageError("resize needs --rank R or --dynamic METHOD=VALUE")
        if self.rank is not None and self.rank < 1:
            raise UsageError(f"rank must be at least 1, got {self.rank}")
        if self.method is not None:
            if self.method not in DYNAMIC_METHODS:
                raise UsageError(f"unknown dynamic method {self.method!r}",
                                 hint=f"one of: {', '.join(DYNAMIC_METHODS)}")
            if self.param is None or not np.isfinite(self.param) or self.param <= 0:
                raise UsageError(f"{self.method} needs a positive number, got {self.param!r}")
            if self.method != "sv_ratio" and self.param > 1:
                raise UsageError(f"{self.method} is a fraction in (0, 1], got {self.param}")

    @classmethod
    def parse_dynamic(cls, text: str, rank: int | None = None) -> ResizeSettings:
        """``sv_fro=0.9`` -> settings (``rank`` becomes the cap)."""
        method, sep, value = text.partition("=")
        try:
            param = float(value)
        except ValueError:
            param = None
        if not sep or param is None:
            raise UsageError(f"--dynamic takes METHOD=VALUE, got {text!r}", hint="e.g. sv_fro=0.9 or sv_ratio=8")
        return cls(rank=rank, method=method.strip(), param=param)


@dataclass(frozen=True)
class ModuleResize:
    module: str
    rank_before: int  # rank of the exact factorization (LoHa: r1*r2, capped at min(out, in))
    rank_after: int
    retained_fro: float  # fraction of the delta's Frobenius norm kept, 0..1
    rel_error: float  # relative Frobenius error ||dW - dW_k|| / ||dW||
    capped: bool = False  # the requested rank was above this module's rank


@dataclass
class ResizeResult:
    modules: list[ModuleResize] = field(default_factory=list)
    output: Any = None  # io.WrittenOutput once written

    def summary(self) -> dict[str, Any]:
        retained = [m.retained_fro for m in self.modules]
        data: dict[str, Any] = {
            "modules": len(self.modules),
            "rank_before": _histogram(m.rank_before for m in self.modules),
            "rank_after": _histogram(m.rank_after for m in self.modules),
            "retained_fro_min": min(retained, default=1.0),
            "retained_fro_mean": float(np.mean(retained)) if retained else 1.0,
            "capped": sum(m.capped for m in self.modules),
            "per_module": [asdict(m) for m in self.modules],
        }
        if self.output is not None:
            data.update(output=str(self.output.path), sha256=self.output.sha256, verify_ok=self.output.report.ok)
        return data


def _histogram(values) -> dict[str, int]:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return {str(k): counts[k] for k in sorted(counts)}


def _factors(roles: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(up, down, in_shape) as ``delta.exact_factors`` gives them; plain LoRA stored in 16/32-bit floats as
    float32 (exact, half the bytes of float64, and what the Gram path computes in)."""
    up, down = roles.get("up"), roles.get("down")
    if (up is not None and down is not None and _PLAIN_ROLES.issuperset(roles)
            and up.dtype.name in _SINGLE_DTYPES and down.dtype.name in _SINGLE_DTYPES):
        return (to_float32(up).reshape(up.shape[0], -1), to_float32(down).reshape(down.shape[0], -1),
                tuple(down.shape[1:]))
    return exact_factors(roles)


def _prepare(roles: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(up, down, in_shape) of the unscaled delta, no wider than the matrix (a DoRA magnitude is left aside)."""
    up, down, in_shape = _factors({role: a for role, a in roles.items() if role != "dora_scale"})
    return (*exact_compress(up, down), in_shape)


def _truncate(roles: Mapping[str, np.ndarray], out: int, in_shape: tuple[int, ...], svd: FactorSVD,
              settings: ResizeSettings, base_shape: tuple[int, ...] | None,
              name: str) -> tuple[dict[str, np.ndarray], ModuleResize]:
    available = svd.rank
    wanted = settings.rank
    capped = settings.method is None and wanted is not None and wanted > available
    rank = choose_rank(svd.s, rank=wanted, method=settings.method, param=settings.param)
    new_up, new_down = svd.factors(rank)
    shape = layout((out, *in_shape), base_shape, follow_base=False)
    kernel = len(shape) - 2
    new = {
        "down": new_down.reshape(rank, *shape[1:]),
        "up": new_up.reshape(shape[0], rank, *([1] * kernel)),
        "alpha": np.float64(module_scale(roles) * rank),
        **{role: roles[role] for role in PASS_THROUGH if role in roles},
    }
    report = ModuleResize(module=name, rank_before=available, rank_after=rank, retained_fro=svd.retained(rank),
                          rel_error=svd.error(rank)[1], capped=capped)
    return new, report


def resize_module(roles: Mapping[str, np.ndarray], settings: ResizeSettings, *,
                  base_shape: tuple[int, ...] | None = None,
                  name: str = "") -> tuple[dict[str, np.ndarray], ModuleResize]:
    """One module -> (plain-LoRA roles: down, up (float32 or float64), alpha, + pass-through roles; its report
    row, ``module`` = ``name``).

    ``base_shape``: the base weight's shape, used only where the factors lost the kernel (``targets.layout``).
    """
    up, down, in_shape = _prepare(roles)
    return _truncate(roles, up.shape[0], in_shape, factor_svd(up, down), settings, base_shape, name)


def _chunks(items: Iterable[tuple[ModuleKey, dict[str, np.ndarray]]]):
    """Consecutive modules holding about ``_CHUNK_ELEMENTS`` factor values: they share LAPACK calls
    (``lowrank.factor_svds``) while their float32 copies stay small."""
    chunk, size = [], 0
    for module, roles in items:
        chunk.append((module, roles))
        size += sum(a.size for a in roles.values())
        if size >= _CHUNK_ELEMENTS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _chunk_svds(chunk, prepared) -> list[FactorSVD]:
    try:
        return factor_svds([(up, down) for up, down, _ in prepared])
    except UnsupportedModule:  # say which module: one at a time
        for (module, _), (up, down, _) in zip(chunk, prepared):
            try:
                factor_svd(up, down)
            except UnsupportedModule as exc:
                raise UnsupportedModule(f"{module}: {exc.message}", hint=exc.hint) from None
        raise


def resize_tensors(tensors: Mapping[CanonicalKey, np.ndarray], settings: ResizeSettings, *,
                   shapes: Mapping[ModuleKey, tuple[int, ...]] | None = None, dtype=None,
                   show_progress: bool | None = None) -> tuple[dict[CanonicalKey, np.ndarray], list[ModuleResize]]:
    """Resize every module of canonical ``tensors`` (alpha per module, as ``io.load_canonical`` gives).

    ``dtype``: storage dtype of the factors (default: the input's). Raises RankTooHigh when a fixed rank is
    above every module's rank.
    """
    modules = by_module(tensors)
    dtype = np.dtype(dtype) if dtype is not None else storage_dtype(tensors)
    shapes = shapes or {}
    resized: dict[ModuleKey, dict[str, np.ndarray]] = {}
    rows: list[ModuleResize] = []
    items = progress(modules.items(), total=len(modules), description="resize", enabled=show_progress)
    for chunk in _chunks(items):
        prepared = []
        for module, roles in chunk:
            try:
                prepared.append(_prepare(roles))
            except UnsupportedModule as exc:
                raise UnsupportedModule(f"{module}: {exc.message}", hint=exc.hint) from None
        for (module, roles), (up, _, in_shape), svd in zip(chunk, prepared, _chunk_svds(chunk, prepared)):
            new, row = _truncate(roles, up.shape[0], in_shape, svd, settings, shapes.get(module), str(module))
            new["down"] = new["down"].astype(dtype, copy=False)
            new["up"] = new["up"].astype(dtype, copy=False)
            new["alpha"] = alpha_array(float(new["alpha"]))
            resized[module] = new
            rows.append(row)
    if settings.method is None and rows and all(r.capped for r in rows):
        top = max(r.rank_before for r in rows)
        raise RankTooHigh(f"rank {settings.rank} is above every module's rank (largest {top}); nothing to shrink",
                          hint=f"choose --rank below {top + 1}")
    return flatten_modules(resized), rows


def resize(input: str | os.PathLike[str], output: str | os.PathLike[str], settings: ResizeSettings, *,
           dtype: str | None = None, force: bool = False, base: str | None = None,
           show_progress: bool | None = None) -> ResizeResult:
    """Resize the adapter at ``input`` and write it (same key format and dialect) to ``output``."""
    from .io import carried_header, check_output_path, load_canonical, op_metadata, parent_record, write_op_output

    check_output_path(output, [input])
    adapter = AdapterFile.open(input)
    with ThreadPoolExecutor(max_workers=1) as pool:
        parent = pool.submit(parent_record, adapter)  # hashing (C, GIL released) overlaps the maths
        tensors = load_canonical(adapter, copy=False)
        try:
            new, rows = resize_tensors(tensors, settings, shapes=base_shapes(adapter, base),
                                       dtype=numpy_dtype(dtype), show_progress=show_progress)
        except UnsupportedModule as exc:
            exc.path = exc.path or str(input)  # a module's problem is the input file's
            raise
        del tensors  # the input's memory map
        parents = [parent.result()]
    fmt = adapter.format if adapter.format in ("kohya", "peft", "diffusers", "attn_procs") else "kohya"
    params = {"rank": settings.rank, "dynamic": settings.method, "dynamic_param": settings.param, "dtype": dtype}
    record = op_metadata(adapter.metadata, operation="resize", params=params, parents=parents)
    written = write_op_output(output, new, format=fmt, dialect=adapter.mapping.dialect, metadata=record,
                              header=carried_header(adapter), inputs=[Path(input)], force=force, base=base)
    return ResizeResult(modules=rows, output=written)

