"""``--base ID|PATH``: the base model an adapter is checked against, as a module fingerprint.

* An architecture id or alias (``sdxl-base``, ``SDXL 1.0``, a Hub repo id) -> its shipped fingerprint.
* A diffusers model folder (``model_index.json``) -> each component's safetensors headers (sharded
  ``*.safetensors.index.json`` too).
* A single-file checkpoint (``.safetensors``) -> its header, with original SD/SGM key names mapped to
  diffusers/transformers module paths; SD3/FLUX.1 under their original names (BFL, ComfyUI) through
  ``ops.mmdit_checkpoint``, a fused qkv / linear1 weight split into the diffusers modules its rows hold.

Only headers are read. Every ``*.weight`` with a 2-D shape is a Linear, with a 4-D shape a Conv; the
fingerprint built from them compares with adapters exactly like a shipped one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..architectures import Fingerprint, ModuleSpec, fingerprint, resolve
from ..architectures.ids import ARCHITECTURES
from ..canonical import ModuleKey
from ..errors import FileAccessError, LoraregError, UnknownArchitecture, UsageError
from ..lazy_re import lazy
from ..safetensors_io import SafetensorsHeader, TensorInfo, read_header

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_CLIP_INNER = ("encoder.layers.", "embeddings.", "final_layer_norm")


@dataclass(frozen=True)
class Base:
    """A base to check against. ``label`` names it in messages; ``architecture`` is the id when it was named
    by one (None for a folder or checkpoint); ``path`` is set for a folder or checkpoint."""

    label: str
    fingerprint: Fingerprint
    architecture: str | None = None
    path: str | None = None


def load_base(spec: str) -> Base:
    """Resolve ``--base``: an existing path is read as a model, anything else must be an architecture id.

    Raises UnknownArchitecture (listing the known ids) or UsageError / FileAccessError for a path that is
    no model; verify turns nothing else into exceptions.
    """
    path = Path(spec).expanduser()
    if path.exists():
        stat = path.stat()
        return _load_path(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    arch = resolve(spec)
    if arch is not None:
        return Base(label=arch.id, fingerprint=fingerprint(arch.id), architecture=arch.id)
    if os.sep in spec or spec.endswith((".safetensors", ".json", ".ckpt")):
        raise FileAccessError("no such file or folder", path=spec,
                              hint="--base takes an architecture id or an existing diffusers folder / checkpoint")
    raise UnknownArchitecture(f"unknown base {spec!r}: got neither an architecture id nor an existing path",
                              hint=f"known ids: {', '.join(ARCHITECTURES)}")


@lru_cache(maxsize=8)
def _load_path(path: str, _mtime_ns: int, _size: int) -> Base:  # mtime/size in the key: a changed file reloads
    p = Path(path)
    if p.is_dir():
        if (p / "model_index.json").is_file():
            modules = dict(_folder_modules(p))
        elif _weight_files(p):  # one component's folder, e.g. .../unet
            component = _component_of_folder(p)
            modules = {ModuleKey(component, _canonical_text_path(component, path)): spec
                       for path, spec in _component_modules(p)}
        else:
            raise UsageError(f"{p} is a folder without model_index.json or model weights",
                             hint="expected a diffusers model folder (model_index.json + <component>/"
                                  "diffusion_pytorch_model.safetensors or model.safetensors)")
    elif p.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise UsageError(f"{p.name} is a pickle checkpoint; --base reads safetensors headers only",
                         hint="convert it to .safetensors, or pass the diffusers folder or an architecture id")
    else:
        modules = dict(_checkpoint_modules(p))
    if not modules:
        raise UsageError(f"{p} holds no Linear or Conv weights lorareg recognises",
                         hint="expected a diffusers model folder or a single-file SD/SDXL checkpoint "
                              "(model.diffusion_model.* keys) or SD3/FLUX one (BFL or ComfyUI names)")
    return Base(label=str(p), fingerprint=Fingerprint(f"path:{p.name}", modules), path=str(p))


# --- diffusers folders --------------------------------------------------------------------------------


def _folder_modules(root: Path) -> Iterator[tuple[ModuleKey, ModuleSpec]]:
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{root / 'model_index.json'} is not readable JSON ({exc})") from None
    if not isinstance(index, dict):
        raise UsageError(f"{root / 'model_index.json'} is not a JSON object")
    for component in COMPONENTS:
        if component in index and (root / component).is_dir():
            for path, spec in _component_modules(root / component):
                yield ModuleKey(component, _canonical_text_path(component, path)), spec


def _component_of_folder(folder: Path) -> str:
    if folder.name in COMPONENTS:
        return folder.name
    raise UsageError(f"{folder} holds weights but is not named after a component ({', '.join(COMPONENTS)})",
                     hint="pass the pipeline folder that holds model_index.json")


def _weight_files(folder: Path) -> list[Path]:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        shard_index = folder / f"{name}.index.json"
        if shard_index.is_file():
            return _shards(shard_index)
    return sorted(folder.glob("*.safetensors"))[:1]  # a variant such as diffusion_pytorch_model.fp16.safetensors


def _shards(index_file: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{index_file} is not a safetensors shard index ({exc!r})") from None
    return [index_file.parent / name for name in names]


def _component_modules(folder: Path) -> Iterator[tuple[str, ModuleSpec]]:
    for file in _weight_files(folder):
        yield from _weights(read_header(file).tensors.items())


def _weights(entries: Iterable[tuple[str, TensorInfo]]) -> Iterator[tuple[str, ModuleSpec]]:
    for name, info in entries:
        if name.endswith(".weight"):
            spec = spec_from_shape(info.shape)
            if spec is not None:
                yield name[: -len(".weight")], spec


def spec_from_shape(shape: tuple[int, ...]) -> ModuleSpec | None:
    """A Linear (2-D weight [out, in]) or Conv (4-D [out, in, kh, kw]) spec; None for anything else."""
    if len(shape) == 2:
        return ModuleSpec("linear", shape[1], shape[0])
    if len(shape) == 4:
        return ModuleSpec("conv", shape[1], shape[0], (shape[2], shape[3]))
    return None


def _canonical_text_path(component: str, path: str) -> str:
    if component.startswith("text_encoder") and path.startswith(_CLIP_INNER):
        return "text_model." + path  # transformers 5 CLIP has no text_model level; canonical paths do
    return path


# --- single-file checkpoints ----------------------------------------------------------------------------

_UNET_PREFIX = "model.diffusion_model."
# prefix -> (component, kind): "hf" keys are transformers CLIP names, "openclip" keys need renaming.
_TEXT_PREFIXES = (
    ("cond_stage_model.transformer.", "text_encoder", "hf"),  # SD1 CLIP-L
    ("cond_stage_model.model.", "text_encoder", "openclip"),  # SD2 OpenCLIP-H
    ("conditioner.embedders.0.transformer.", "text_encoder", "hf"),  # SDXL CLIP-L
    ("conditioner.embedders.1.model.", "text_encoder_2", "openclip"),  # SDXL OpenCLIP-bigG
    ("conditioner.embedders.0.model.", "text_encoder_2", "openclip"),  # SDXL refiner: bigG only
)
_OPENCLIP_LAYER = lazy(r"transformer\.resblocks\.(\d+)\.(.+)")
_OPENCLIP_RENAMES = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _checkpoint_modules(path: Path) -> Iterator[tuple[ModuleKey, ModuleSpec]]:
    try:
        header = read_header(path)
    except LoraregError as exc:
        raise UsageError(f"--base {path} is not a readable safetensors checkpoint: {exc.message}",
                         hint="expected a diffusers model folder or a single-file checkpoint") from None
    from ..ops.mmdit_checkpoint import detect  # header facts only, no numpy

    layout = detect(header)
    if layout is not None:
        yield from _mmdit_modules(path, header, *layout)
        return
    unet: list[tuple[str, ModuleSpec]] = []
    for name, info in header.tensors.items():
        if name.startswith(_UNET_PREFIX):
            unet += _weights([(name[len(_UNET_PREFIX):], info)])
            continue
        for prefix, component, kind in _TEXT_PREFIXES:
            if name.startswith(prefix):
                rest = name[len(prefix):]
                yield from ((ModuleKey(component, p), s) for p, s in
                            (_hf_text(rest, info) if kind == "hf" else _openclip(rest, info)))
                break
    yield from _unet_modules(unet)


def _mmdit_modules(path: Path, header: SafetensorsHeader, prefix: str, family: str
                   ) -> Iterator[tuple[ModuleKey, ModuleSpec]]:
    """SD3/FLUX modules as the equivalent diffusers folder has them. A fused weight (qkv, linear1) is listed as
    its targets' row blocks, as a folder stores them apart; ``Fingerprint.lookup`` stacks them again for a kohya
    or BFL module on the fused path. It stays whole only when its rows split over no known targets."""
    from ..ops.mmdit_checkpoint import single_file_modules

    whole: list[tuple[ModuleKey, str]] = []
    split_keys: set[str] = set()
    for module, where in single_file_modules(path, header, prefix, family):
        if "rows" in where:
            split_keys.add(where["key"])
            yield module, ModuleSpec("linear", where["shape"][1], where["shape"][0])
        else:
            whole.append((module, where["key"]))
    for module, key in whole:
        spec = spec_from_shape(header.tensors[key].shape)
        if spec is not None and key not in split_keys:
            yield module, spec


def _unet_modules(sgm: list[tuple[str, ModuleSpec]]) -> Iterator[tuple[ModuleKey, ModuleSpec]]:
    from ..formats.sgm import levels_from_sgm, sgm_to_diffusers

    levels = next((n for n in (levels_from_sgm(p) for p, _ in sgm) if n), None)
    for path, spec in sgm:
        mapped = sgm_to_diffusers(path, levels=levels)
        if mapped is not None:
            yield ModuleKey("unet", mapped), spec


def _hf_text(rest: str, info) -> Iterator[tuple[str, ModuleSpec]]:
    for path, spec in _weights([(rest, info)]):
        yield _canonical_text_path("text_encoder", path), spec


def _openclip(rest: str, info) -> Iterator[tuple[str, ModuleSpec]]:
    """OpenCLIP resblocks -> CLIP paths: in_proj_weight [3d, d] is q/k/v_proj, c_fc/c_proj are fc1/fc2."""
    m = _OPENCLIP_LAYER.fullmatch(rest)
    if m is None:
        if rest == "text_projection":  # a bare parameter [d, proj]; CLIPTextModelWithProjection's is Linear(d, proj)
            shape = info.shape
            if len(shape) == 2:
                yield "text_projection", ModuleSpec("linear", shape[0], shape[1])
        return
    layer, tail = m[1], m[2]
    prefix = f"text_model.encoder.layers.{layer}."
    shape = info.shape
    if tail == "attn.in_proj_weight" and len(shape) == 2 and shape[0] % 3 == 0:
        for name in ("q_proj", "k_proj", "v_proj"):
            yield prefix + f"self_attn.{name}", ModuleSpec("linear", shape[1], shape[0] // 3)
        return
    for old, new in _OPENCLIP_RENAMES.items():
        if tail == f"{old}.weight" and len(shape) == 2:
            yield prefix + new, ModuleSpec("linear", shape[1], shape[0])
