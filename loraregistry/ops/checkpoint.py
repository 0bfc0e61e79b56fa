"""Base-model weights addressed by canonical module: which file, which tensor, which rows.

Two layouts are read, by header and memory map only (never unpickled):

* a single-file checkpoint with original SD/SGM key names: ``model.diffusion_model.*`` (UNet, block names
  mapped through ``formats.sgm``), ``cond_stage_model.transformer.*`` (SD1 CLIP-L),
  ``cond_stage_model.model.*`` (SD2 OpenCLIP), ``conditioner.embedders.0.transformer.*`` /
  ``conditioner.embedders.1.model.*`` (SDXL CLIP-L / OpenCLIP-bigG);
* a single-file SD3/SD3.5 or FLUX.1 checkpoint with original (BFL / ComfyUI) names (``mmdit_checkpoint``);
* a diffusers model folder: ``model_index.json`` + ``<component>/diffusion_pytorch_model.safetensors`` or
  ``model.safetensors``, sharded (``*.safetensors.index.json``) or not.

OpenCLIP stacks q/k/v in one ``attn.in_proj_weight`` [3C, C]: the q/k/v modules are its row blocks. Its bare
``text_projection`` parameter [C, P] is used as ``x @ P``, i.e. it is the transpose of the Linear weight.
SD3/FLUX fuse projections the same way (``img_attn.qkv``, ``linear1``); a fused module of a LoRA that the base
stores split (a diffusers folder) is found through its targets: ``Checkpoint.locate`` gives the row pieces.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..canonical import ModuleKey
from ..errors import FileAccessError, PickleCheckpointError, UsageError
from ..formats.mmdit import fused_targets, infer_family
from ..formats.paths import is_t5_path
from . import mmdit_checkpoint
from ..safetensors_io import SafetensorsHeader, numpy_dtype, read_header

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")

_UNET_PREFIX = "model.diffusion_model."
# prefix -> (component, layout); "hf" = transformers CLIP names, "openclip" = OpenCLIP resblocks.
_TEXT_PREFIXES = (
    ("cond_stage_model.transformer.", "text_encoder", "hf"),
    ("cond_stage_model.model.", "text_encoder", "openclip"),
    ("conditioner.embedders.0.transformer.", "text_encoder", "hf"),
    ("conditioner.embedders.1.model.", "text_encoder_2", "openclip"),
    ("conditioner.embedders.0.model.", "text_encoder_2", "openclip"),  # SDXL refiner: bigG only
)
_CLIP_INNER = ("encoder.layers.", "embeddings.", "final_layer_norm")
_OPENCLIP_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_OPENCLIP_RENAMES = {"attn.out_proj.weight": "self_attn.out_proj", "mlp.c_fc.weight": "mlp.fc1",
                     "mlp.c_proj.weight": "mlp.fc2"}


@dataclass(frozen=True)
class WeightLocation:
    """Where one module's weight lives. ``rows`` selects a row block of a stacked tensor (OpenCLIP q/k/v);
    ``transposed`` marks a tensor stored [in, out]; ``halves_swapped`` a block whose two row halves are stored in
    the other order (SD3/FLUX [shift, scale] against diffusers' [scale, shift]). ``shape`` is the module's weight
    shape as a layer sees it."""

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: str
    rows: tuple[int, int] | None = None
    transposed: bool = False
    halves_swapped: bool = False


@dataclass(frozen=True)
class Piece:
    """Rows ``start:start + loc.shape[0]`` of a module's weight (diffusers row order) are the block ``loc`` (never
    halves-swapped): a module is one piece, or several (a fused module over split tensors, swapped halves)."""

    loc: WeightLocation
    start: int


@dataclass
class Checkpoint:
    """A base model's weight files and the module -> location map. Use ``open_checkpoint``."""

    path: Path
    kind: str  # "single-file" or "diffusers"
    headers: dict[Path, SafetensorsHeader]  # every weight file lorareg reads or rewrites
    modules: dict[ModuleKey, WeightLocation]
    family: str | None = None  # flux / sd3 where the transformer's names or modules tell


    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of a single-file checkpoint ({} for a folder)."""
        return next(iter(self.headers.values())).metadata if self.kind == "single-file" else {}

    def locate(self, module: ModuleKey) -> list[Piece] | None:
        """The pieces that hold ``module``'s weight rows, in order; None when the base has no such weight. A fused
        SD3/FLUX module (``{to_q,to_k,to_v}``) the base stores split is found through its targets."""
        loc = self.modules.get(module) or self.modules.get(self._t5_alias(module))
        if loc is not None:
            return _pieces(loc, 0)
        targets = fused_targets(module.path)
        if len(targets) == 1:
            return None
        parts = [self.modules.get(ModuleKey(module.component, target)) for target in targets]
        if None in parts or len({part.shape[1:] for part in parts}) != 1:
            return None
        pieces: list[Piece] = []
        start = 0
        for part in parts:
            pieces += _pieces(part, start)
            start += part.shape[0]
        return pieces

    def _t5_alias(self, module: ModuleKey) -> ModuleKey:
        """T5 is FLUX's ``text_encoder_2`` and SD3's ``text_encoder_3``; a T5-only LoRA cannot tell which (kohya's
        ``lora_te3_`` reads as SD3's), the base can."""
        if module.component in ("text_encoder_2", "text_encoder_3") and is_t5_path(module.path):
            return ModuleKey("text_encoder_2" if self.family == "flux" else "text_encoder_3", module.path)
        return module

    def shape(self, module: ModuleKey) -> tuple[int, ...] | None:
        """The module's weight shape (a fused one: its targets' rows stacked), or None."""
        pieces = self.locate(module)
        if pieces is None:
            return None
        return (sum(p.loc.shape[0] for p in pieces), *pieces[0].loc.shape[1:])

    def read(self, module: ModuleKey, *, dtype=np.float32) -> np.ndarray:
        """The module's weight (diffusers row order) as a fresh ``dtype`` array (only its bytes are read)."""
        pieces = self.locate(module)
        if pieces is None:
            raise KeyError(module)
        parts = [read_weight(p.loc, self.headers[p.loc.file], dtype=dtype) for p in pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _pieces(loc: WeightLocation, start: int) -> list[Piece]:
    if not loc.halves_swapped:
        return [Piece(loc, start)]
    first = loc.rows[0] if loc.rows else 0
    half = loc.shape[0] // 2
    block = (half, *loc.shape[1:])
    return [Piece(replace(loc, rows=(first + half, first + 2 * half), shape=block, halves_swapped=False), start),
            Piece(replace(loc, rows=(first, first + half), shape=block, halves_swapped=False), start + half)]


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read the headers of a single-file checkpoint or a diffusers folder and map its modules."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileAccessError("no such file or folder", path=p, hint="expected a .safetensors checkpoint or a "
                                                                     "diffusers model folder")
    if p.is_dir():
        return _open_folder(p)
    refuse_pickle(p)
    header = read_header(p)
    modules = dict(_single_file_modules(p, header))
    mmdit = mmdit_checkpoint.detect(header)
    if not modules:
        raise UsageError("no UNet, transformer or text-encoder weights with original SD/SGM/SD3/FLUX key names",
                         path=p, hint="expected model.diffusion_model.* / cond_stage_model.* / conditioner.embedders.* "
                                      "/ double_blocks.* / joint_blocks.* keys, or pass a diffusers model folder")
    return Checkpoint(path=p, kind="single-file", headers={p: header}, modules=modules,
                      family=mmdit[1] if mmdit else None)


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PickleCheckpointError(
            f"{path.suffix} files are pickles; lorareg never unpickles model weights", path=path,
            hint="convert it to .safetensors where you trust its origin, or pass a diffusers folder")


def read_weight(loc: WeightLocation, header: SafetensorsHeader, *, dtype=np.float32) -> np.ndarray:
    info = header.tensors[loc.key]
    stored = np.dtype(numpy_dtype(info.dtype))
    with open(loc.file, "rb") as f:
        offset = header.data_offset + info.start
        count = info.numel
        if loc.rows is not None:  # row block of a row-major tensor: one contiguous byte range
            row = info.numel // info.shape[0]
            offset += loc.rows[0] * row * stored.itemsize
            count = (loc.rows[1] - loc.rows[0]) * row
        f.seek(offset)
        raw = np.fromfile(f, dtype=stored, count=count)
    if raw.size != count:
        raise FileAccessError(f"tensor {loc.key!r} ends past the end of the file", path=loc.file)
    stored_shape = (loc.shape[::-1] if loc.transposed else loc.shape)
    out = raw.reshape(stored_shape).astype(dtype)
    if loc.halves_swapped:
        half = out.shape[0] // 2
        out = np.concatenate([out[half:], out[:half]], axis=0)
    return np.ascontiguousarray(out.T) if loc.transposed else out


# --- single-file checkpoints ----------------------------------------------------------------------------


def _single_file_modules(path: Path, header: SafetensorsHeader) -> Iterator[tuple[ModuleKey, WeightLocation]]:
    from ..formats.sgm import levels_from_sgm, sgm_to_diffusers

    def loc(key: str, **kw) -> WeightLocation:
        info = header.tensors[key]
        return WeightLocation(path, key, kw.pop("shape", info.shape), info.dtype, **kw)

    mmdit = mmdit_checkpoint.detect(header)
    if mmdit is not None:
        for module, fields in mmdit_checkpoint.single_file_modules(path, header, *mmdit):
            yield module, loc(fields.pop("key"), **fields)
        return

    unet: list[str] = []
    for key, info in header.tensors.items():
        if key.startswith(_UNET_PREFIX):
            if key.endswith(".weight") and len(info.shape) in (2, 4):
                unet.append(key)
            continue
        for prefix, component, layout in _TEXT_PREFIXES:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                for module_path, kw in (_hf_text(rest) if layout == "hf" else _openclip(rest, info.shape)):
                    yield ModuleKey(component, module_path), loc(key, **kw)
                break
    sgm_paths = [k[len(_UNET_PREFIX):-len(".weight")] for k in unet]
    levels = next((n for n in map(levels_from_sgm, sgm_paths) if n), None)
    for key, sgm_path in zip(unet, sgm_paths):
        mapped = sgm_to_diffusers(sgm_path, levels=levels)
        if mapped is not None:
            yield ModuleKey("unet", mapped), loc(key)


def _hf_text(rest: str) -> Iterator[tuple[str, dict]]:
    if rest.endswith(".weight") and not _is_embedding(rest):
        yield canonical_text_path(rest[: -len(".weight")]), {}


def _is_embedding(key: str) -> bool:
    """Token/position embedding tables are 2-D but no Linear: OpenCLIP layouts cannot even name them."""
    return "embeddings." in key


def _openclip(rest: str, shape: tuple[int, ...]) -> Iterator[tuple[str, dict]]:
    if rest == "text_projection" and len(shape) == 2:
        yield "text_projection", {"shape": (shape[1], shape[0]), "transposed": True}
        return
    m = _OPENCLIP_LAYER.fullmatch(rest)
    if m is None or len(shape) != 2:
        return
    prefix = f"text_model.encoder.layers.{m[1]}."
    if m[2] == "attn.in_proj_weight" and shape[0] % 3 == 0:
        width = shape[0] // 3
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            yield prefix + f"self_attn.{name}", {"shape": (width, shape[1]), "rows": (i * width, (i + 1) * width)}
    elif m[2] in _OPENCLIP_RENAMES:
        yield prefix + _OPENCLIP_RENAMES[m[2]], {}


def canonical_text_path(path: str) -> str:
    """transformers 5 CLIP state dicts may lack the ``text_model.`` level that canonical paths carry."""
    return "text_model." + path if path.startswith(_CLIP_INNER) else path


# --- diffusers folders ------------------------------------------------------------------------------------


def _open_folder(root: Path) -> Checkpoint:
    if not (root / "model_index.json").is_file():
        raise UsageError("folder without model_index.json", path=root,
                         hint="pass a diffusers model folder or a single-file .safetensors checkpoint")
    headers: dict[Path, SafetensorsHeader] = {}
    modules: dict[ModuleKey, WeightLocation] = {}
    for component in COMPONENTS:
        folder = root / component
        if not folder.is_dir():
            continue
        for file in component_weight_files(folder):
            header = headers[file] = read_header(file)
            for key, info in header.tensors.items():
                if key.endswith(".weight") and len(info.shape) in (2, 4):
                    path = key[: -len(".weight")]
                    if component.startswith("text_encoder"):
                        if _is_embedding(key):
                            continue
                        path = canonical_text_path(path)
                    modules[ModuleKey(component, path)] = WeightLocation(file, key, info.shape, info.dtype)
    if not modules:
        raise UsageError("no component safetensors weights in this diffusers folder", path=root,
                         hint="expected unet/diffusion_pytorch_model.safetensors, text_encoder/model.safetensors")
    paths = {m.path for m in modules if m.component == "transformer"}
    return Checkpoint(path=root, kind="diffusers", headers=headers, modules=modules,
                      family=infer_family(paths) if paths else None)


def component_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of one component folder (all shards of a sharded one)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            return _shards(index)
    found = sorted(folder.glob("*.safetensors"))
    if len(found) > 1:
        raise UsageError(f"several weight variants and no standard file name: {', '.join(f.name for f in found)}",
                         path=folder, hint="keep one variant per component folder")
    if not found and any(folder.glob(f"*{s}") for s in PICKLE_SUFFIXES):
        refuse_pickle(next(f for s in PICKLE_SUFFIXES for f in folder.glob(f"*{s}")))
    return found


def _shards(index_file: Path) -> list[Path]:
    try:
        names = sorted(set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"not a safetensors shard index ({exc!r})", path=index_file) from None
    return [index_file.parent / name for name in names]


# --- streaming output ---------------------------------------------------------------------------------------


class _HashingWriter:
    """Write through to a file while computing the hashes model sites print (``hashes.StreamHasher``)."""

    def __init__(self, f, data_offset: int) -> None:
        from ..hashes import StreamHasher

        self.f = f
        self.hasher = StreamHasher(data_offset)

    def write(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        self.hasher.update(view)
        self.f.write(view)

    def hashes(self):
        return self.hasher.result()


_COPY_CHUNK = 1 << 22


def write_patched_copy(src: Path, header: SafetensorsHeader, out, *, patched: dict[str, Callable[[], np.ndarray]],
                       metadata: dict[str, str] | None = None, description: str | None = None):
    """Stream ``src`` to the open binary file ``out`` with the tensors in ``patched`` replaced; return FileHashes.

    Every tensor keeps its dtype, shape and byte span, so the header is the input's (with ``metadata`` as its
    ``__metadata__``) and is known before any data is written. Untouched bytes are copied in 4 MiB chunks;
    each patch callable runs when its tensor's turn comes, so one patched tensor is in memory at a time.
    """
    from ..safetensors_io import encode_header, parse_header

    entries = {name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.start, t.end]}
               for name, t in header.tensors.items()}
    encoded = encode_header(entries, header.metadata if metadata is None else metadata)
    parse_header(encoded, path=str(src), file_size=len(encoded) + header.data_size)  # refuse a bad header early
    from .progress import progress

    sink = _HashingWriter(out, data_offset=len(encoded))
    sink.write(encoded)
    tensors = header.tensors.items()  # ordered by offset, contiguous (validated)
    with open(src, "rb") as f:
        for name, info in progress(tensors, total=len(tensors), description=description or src.name):
            if name in patched:
                array = np.ascontiguousarray(patched[name]())
                if array.nbytes != info.nbytes or array.dtype != np.dtype(numpy_dtype(info.dtype)):
                    raise ValueError(f"patched tensor {name!r} is {array.dtype} {array.shape}, expected "
                                     f"{info.dtype} {list(info.shape)}")
                sink.write(array.reshape(-1).view(np.uint8))
                del array
            else:
                f.seek(header.data_offset + info.start)
                _copy(f, sink, info.nbytes, src)
    return sink.hashes()


def _copy(f, sink: _HashingWriter, nbytes: int, src: Path) -> None:
    while nbytes:
        chunk = f.read(min(_COPY_CHUNK, nbytes))
        if not chunk:
            raise FileAccessError("file ended before its header said it would", path=src)
        sink.write(chunk)
        nbytes -= len(chunk)
