"""Bake adapters into a base model: ``W' = W + sum_i w_i * delta_i`` for every patched module.

The base is streamed one tensor at a time (``checkpoint.write_patched_copy``): untouched tensors are copied
byte for byte, a patched one is read, patched in fp32 and cast back to its stored dtype, so the peak memory
is about the largest patched tensor (a few copies of it) plus the adapters' factors. Every tensor keeps its
dtype, shape and byte span.

A single-file checkpoint gives a single file; a diffusers folder gives a new folder: a copy of the base
folder with the patched component files rewritten (written under a temporary name, every file synced, renamed
when complete; an existing output folder is refused, since a folder cannot be replaced atomically). Sharded
components keep their shards and index: every tensor keeps its byte span.

SD3/FLUX.1: a module lands wherever the base stores it (``Checkpoint.locate``): a fused LoRA module (kohya/BFL
``img_attn.qkv``, ``linear1``; XLabs' single-block q/k/v) on the fused weight of an original-named checkpoint, or
on the split to_q/to_k/to_v tensors of a diffusers folder; a split (peft) module on its row block of a fused
weight. Adapters with original names store [shift, scale] rows (``final_layer.adaLN_modulation.1``) as the original
model does; they are put in diffusers order on loading, and the base location says how it stores them.

Adapters apply in the order given. DoRA's delta depends on the weight it patches, so a DoRA module uses the
weight patched by the adapters before it, and its weight scales the low-rank part inside the norm (as peft's
``merge`` with a scaled adapter does).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adapter import AdapterFile
from ..canonical import ModuleKey
from ..errors import IncompatibleArchitecture, UsageError
from ..safetensors_io import FLOAT_DTYPES
from .checkpoint import Checkpoint, Piece, WeightLocation, open_checkpoint, write_patched_copy
from .common import by_module
from .errors import UnsupportedModule
from .merge import MergeInput
from .mmdit_checkpoint import rows_swapped

# Header keys of a base that describe its old tensors: dropped from the output.
_STALE_KEYS = frozenset({"modelspec.hash_sha256", "sshs_model_hash", "sshs_legacy_hash"})
BAKE_HEADER_KEY = "lorareg.bake"


class BaseMissingModules(IncompatibleArchitecture):
    """The base has no weight for modules an adapter patches (another architecture, or a pruned base)."""

    def __init__(self, message: str, *, missing: list[str], **kw) -> None:
        self.missing = missing
        super().__init__(message, **kw)


class NonFiniteResult(UsageError):
    """A patched weight has NaN/Inf (an adapter weight so large that the sum overflows the stored dtype)."""


@dataclass
class _Loaded:
    """One adapter, its weight, its modules' tensors ({role: array}, alpha included) and the transformer modules
    it names after the original model (whose [shift, scale] rows are in the original order)."""

    file: AdapterFile
    weight: float
    modules: dict[ModuleKey, dict[str, np.ndarray]]
    native: frozenset[ModuleKey] = frozenset()


@dataclass
class BakeReport:
    base: str
    output: str
    kind: str  # single-file / diffusers
    adapters: list[dict] = field(default_factory=list)  # path, weight, sha256, modules
    patched_modules: int = 0
    patched_tensors: int = 0
    copied_tensors: int = 0
    files: list[dict] = field(default_factory=list)  # every rewritten weight file: path + hashes

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def bake(adapters: Sequence[MergeInput], *, base: str | os.PathLike[str],
         output: str | os.PathLike[str]) -> BakeReport:
    """Merge ``adapters`` (path + weight; ``MergeInput.parse("a.safetensors:0.8")``) into the base checkpoint or
    folder ``base`` and write ``output`` (see module docstring).

    Raises before writing anything: OutputIsInput, BaseMissingModules (listing them), IncompatibleArchitecture
    (a delta whose shape is not the base weight's), UnsupportedModule, PickleCheckpointError.
    """
    from .io import check_output_path

    if not adapters:
        raise UsageError("no adapter to bake", hint="lorareg bake ADAPTER[:WEIGHT]... --base BASE -o OUT")
    out = check_output_path(output, [base, *(a.path for a in adapters)])
    checkpoint = open_checkpoint(base)
    _check_output_kind(checkpoint, out)
    loaded = [_load(item) for item in adapters]
    _check_fits(loaded, checkpoint)
    report = BakeReport(base=str(checkpoint.path), output=str(out), kind=checkpoint.kind, adapters=[
        {"path": str(a.file.path), "weight": a.weight, "sha256": a.file.hashes.sha256, "modules": len(a.modules)}
        for a in loaded])
    wanted = {m for a in loaded for m in a.modules}
    report.patched_modules = len(wanted)
    swapped = {m for m in wanted if m.component == "transformer" and rows_swapped(m.path, checkpoint.shape(m))}
    by_file: dict[Path, dict[str, Callable[[], np.ndarray]]] = {}
    for (file, key), located in _pieces_by_tensor(checkpoint, wanted).items():
        by_file.setdefault(file, {})[key] = _patcher(checkpoint, file, key, located, loaded, swapped)
    report.patched_tensors = sum(len(p) for p in by_file.values())
    report.copied_tensors = sum(len(h.tensors) for h in checkpoint.headers.values()) - report.patched_tensors
    metadata_note = _bake_note(loaded, checkpoint)
    if checkpoint.kind == "single-file":
        report.files = [_write_file(checkpoint, checkpoint.path, out, by_file.get(checkpoint.path, {}), metadata_note)]
    else:
        report.files = _write_folder(checkpoint, out, by_file, metadata_note)
    return report


def _load(item: MergeInput) -> _Loaded:
    from .fused import natively_named
    from .io import load_canonical

    file = AdapterFile.open(item.path)
    if file.unknown_keys:
        raise UnsupportedModule(f"{len(file.unknown_keys)} keys fit no format, e.g. {file.unknown_keys[0]!r}",
                                path=file.path, hint="bake only what lorareg can read; run lorareg verify")
    return _Loaded(file, item.weight, by_module(load_canonical(file)), native=frozenset(natively_named(file.mapping)))


def _check_output_kind(checkpoint: Checkpoint, out: Path) -> None:
    if checkpoint.kind == "single-file" and out.is_dir():
        raise UsageError("the output is a folder; a single-file base bakes into a single .safetensors file", path=out)
    if checkpoint.kind == "diffusers":
        if out.exists():
            raise UsageError("the output exists; a diffusers folder bakes into a new folder", path=out,
                             hint="choose a path that does not exist yet")
        if out.resolve().is_relative_to(checkpoint.path.resolve()):
            raise UsageError("the output is inside the base folder", path=out, hint="write it next to the base")


def _check_fits(loaded: list[_Loaded], checkpoint: Checkpoint) -> None:
    """Every module exists in the base, makes a delta, and that delta has the base weight's shape."""
    from ..verify.shapes import factor_problems

    missing: dict[ModuleKey, str] = {}
    misfits: list[str] = []
    for item in loaded:
        for module in item.modules:
            pieces = checkpoint.locate(module)
            if pieces is None:
                missing.setdefault(module, item.file.path.name)
                continue
            for dtype in {p.loc.dtype for p in pieces} - FLOAT_DTYPES:
                raise UnsupportedModule(f"the base weight of {module} is {dtype}; only float weights can be "
                                        "patched", path=checkpoint.path)
            info = item.file.modules[module]
            if info.algo not in ("lora", "loha", "lokr", "full"):
                raise UnsupportedModule(f"module {module} has roles {sorted(info.tensors)}, which lorareg cannot "
                                        "bake", path=item.file.path)
            shape, problems = factor_problems(info)
            if shape is None:
                raise UnsupportedModule(f"module {module}: {problems[-1].message}", path=item.file.path)
            base_shape = checkpoint.shape(module)
            if not _same_layout(shape, base_shape):
                misfits.append(f"{module} (delta {list(shape)}, base {list(base_shape)})")
            elif len(pieces) > 1 and _dora_per_column(item.modules[module], shape[0]):
                raise UnsupportedModule(f"module {module}: a DoRA magnitude per input column needs the whole "
                                        "weight, which this base stores in pieces", path=item.file.path,
                                        hint="bake it into a checkpoint with original names, or convert it to "
                                             "plain LoRA first (lorareg fix --base)")
    if missing:
        names = sorted(map(str, missing))
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise BaseMissingModules(f"the base has no weight for {len(names)} modules the adapters patch: {shown}",
                                 missing=names, path=checkpoint.path,
                                 hint="the adapter was made for another base model, or the base is pruned")
    if misfits:
        shown = "; ".join(misfits[:3]) + (f" and {len(misfits) - 3} more" if len(misfits) > 3 else "")
        raise IncompatibleArchitecture(f"{len(misfits)} deltas do not have the base weight's shape: {shown}",
                                       path=checkpoint.path, hint="the adapter was made for another base model")


def _same_layout(delta: tuple[int, ...], weight: tuple[int, ...]) -> bool:
    """Same output rows and element count: a 1x1-conv delta on a Linear, or a flattened conv kernel."""
    return delta[0] == weight[0] and math.prod(delta) == math.prod(weight)


def _dora_per_column(tensors: dict[str, np.ndarray], rows: int) -> bool:
    """LyCORIS' default DoRA magnitude [1, in, ...]: norms over all output rows, so not row-separable."""
    magnitude = tensors.get("dora_scale")
    return magnitude is not None and magnitude.ndim > 1 and magnitude.shape[0] == 1 and rows != 1


def _pieces_by_tensor(checkpoint: Checkpoint, wanted: set[ModuleKey]
                      ) -> dict[tuple[Path, str], list[tuple[ModuleKey, Piece]]]:
    """(file, tensor key) -> the module pieces stored in it (q, k and v of a fused weight, two swapped halves)."""
    grouped: dict[tuple[Path, str], list[tuple[ModuleKey, Piece]]] = {}
    for module in sorted(wanted):
        for piece in checkpoint.locate(module) or ():
            grouped.setdefault((piece.loc.file, piece.loc.key), []).append((module, piece))
    return grouped


def _patcher(checkpoint: Checkpoint, file: Path, key: str, located: list[tuple[ModuleKey, Piece]],
             loaded: list[_Loaded], swapped: set[ModuleKey]) -> Callable[[], np.ndarray]:
    """A callable that returns the patched tensor (stored dtype); runs when the writer reaches it. ``swapped``:
    the [shift, scale] modules, whose rows an adapter with original names holds in the other order."""
    from ..safetensors_io import numpy_dtype
    from .checkpoint import read_weight

    header = checkpoint.headers[file]
    info = header.tensors[key]

    def patch() -> np.ndarray:
        whole = WeightLocation(file, key, info.shape, info.dtype)
        weight = read_weight(whole, header, dtype=np.float32)
        for item in loaded:  # adapter by adapter: a DoRA module sees the weight patched by those before it
            for module, piece in located:
                if module not in item.modules or item.weight == 0:
                    continue
                loc = piece.loc
                view = weight[loc.rows[0]:loc.rows[1]] if loc.rows else weight
                view = view.T if loc.transposed else view  # a view: updates land in ``weight``
                _add_delta(view, item.modules[module], item.weight, rows=(piece.start, piece.start + view.shape[0]),
                           swap_halves=module in swapped and module in item.native)
        with np.errstate(over="ignore", invalid="ignore"):  # checked right below, with a better message
            result = weight.astype(numpy_dtype(info.dtype))
        del weight
        if not np.isfinite(result).all() and np.isfinite(read_weight(whole, header)).all():
            raise NonFiniteResult(f"patching {key!r} gives NaN/Inf in {info.dtype}", path=file,
                                  hint="lower the adapter weights (the sum overflows), or check the adapters "
                                       "for NaN/Inf with lorareg verify")
        return result

    return patch


_BLOCK_ELEMENTS = 1 << 22  # rows of up @ down per step: 16 MiB of fp32, whatever the tensor's size


def _add_delta(current: np.ndarray, tensors: dict[str, np.ndarray], weight: float, *, rows: tuple[int, int],
               swap_halves: bool = False) -> None:
    """``current += weight * delta[rows]`` in place (``rows``: the module's rows this block holds; ``swap_halves``:
    the factors hold the module's rows in [shift, scale] order), block of rows by block, so no full-size delta is
    ever held. The delta is ``up @ down`` for every algorithm, so row selection is a slice of ``up``."""
    from .delta import exact_factors, module_delta, module_scale

    up, down, _ = exact_factors(tensors, dtype=np.float32)
    # a new array: the factors may be the adapter's own (fp32), and a module can have several pieces
    up = up * np.float32(weight * module_scale(tensors))  # DoRA: the weight scales inside the norms (peft's merge)
    magnitude = tensors.get("dora_scale")
    per_row = magnitude is not None and not _dora_per_column(tensors, up.shape[0])
    if swap_halves:
        up = _swap_halves(up)
        magnitude = _swap_halves(magnitude) if per_row else magnitude
    up = up[rows[0]:rows[1]]
    if magnitude is not None:  # needs the patched rows for its norms (per column: the whole weight, checked)
        part = {"up": up, "down": down, "alpha": np.float32(down.shape[0]),
                "dora_scale": magnitude[rows[0]:rows[1]] if per_row else magnitude}
        current += module_delta(part, out_shape=current.shape, base_weight=current, dtype=np.float32)
        return
    matrix = current.reshape(current.shape[0], -1) if current.ndim != 2 else current
    if not np.may_share_memory(matrix, current):  # only transposed views are non-contiguous, and they are 2-D
        raise AssertionError("a reshaped weight must stay a view of the tensor being patched")
    step = max(1, _BLOCK_ELEMENTS // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], step):
        matrix[start:start + step] += up[start:start + step] @ down


def _swap_halves(array: np.ndarray) -> np.ndarray:
    half = array.shape[0] // 2
    return np.concatenate([array[half:], array[:half]], axis=0)


def _bake_note(loaded: list[_Loaded], checkpoint: Checkpoint) -> str:
    """What the output header records about this bake (JSON under ``lorareg.bake``)."""
    from .. import __version__

    return json.dumps({"tool": "lorareg", "tool_version": __version__, "base": checkpoint.path.name,
                       "adapters": [{"name": a.file.path.name, "sha256": a.file.hashes.sha256, "weight": a.weight}
                                    for a in loaded]}, sort_keys=True)


def _write_file(checkpoint: Checkpoint, src: Path, out: Path, patched, note: str) -> dict:
    from ..safetensors_io import atomic_write

    header = checkpoint.headers[src]
    metadata = {k: v for k, v in header.metadata.items() if k not in _STALE_KEYS}
    metadata[BAKE_HEADER_KEY] = note
    with atomic_write(out) as f:
        hashes = write_patched_copy(src, header, f, patched=patched, metadata=metadata,
                                    description=f"bake {src.name}")
    return {"path": str(out), **hashes.as_dict()}


def _write_folder(checkpoint: Checkpoint, out: Path, by_file, note: str) -> list[dict]:
    """Copy the base folder under a temporary name, rewrite the patched files, rename it into place."""
    root = checkpoint.path
    temp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.lorareg-tmp")
    rewrite = {p.resolve() for p in by_file}
    try:
        shutil.copytree(root, temp, copy_function=_copy_synced, ignore=lambda folder, names: [
            n for n in names if (Path(folder) / n).resolve() in rewrite])
        files = [_write_file(checkpoint, src, temp / src.relative_to(root), patched, note)
                 for src, patched in sorted(by_file.items())]
        os.rename(temp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(temp)
    for f in files:
        f["path"] = str(out / Path(f["path"]).relative_to(temp))
    return files


def _copy_synced(src: str, dst: str) -> str:
    """``shutil.copy2`` and fsync: the folder is renamed into place only once every byte is on disk."""
    shutil.copy2(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dst
