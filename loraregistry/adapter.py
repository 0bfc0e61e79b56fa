"""``AdapterFile``: one adapter file opened once, validated, and described in canonical terms.

``AdapterFile.open(path)`` reads and checks the header (never the tensor data), maps every key to the
canonical form, groups the tensors into modules (rank, alpha, kind, shapes) and imports the metadata
from whichever conventions the file carries. Hashes are computed on first use.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import struct
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .canonical import CanonicalKey, KeyMapping, ModuleKey, WeightFacts
from .record import FrozenRecord, Record
from .safetensors_io import SafetensorsHeader, TensorInfo, numpy_dtype, read_header

if TYPE_CHECKING:
    from .hashes import FileHashes

_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


class ModuleInfo(FrozenRecord):
    """One patched module: its tensors by role and what their shapes say."""

    module: ModuleKey
    tensors: dict[str, TensorInfo]  # role -> tensor
    keys: dict[str, str]  # role -> key in the file
    algo: str  # lora / loha / lokr / full / other
    kind: str  # linear / conv (as stored: kohya SD2 files store Linear projections as 1x1 convs)
    rank: int | None
    in_features: int | None
    out_features: int | None
    kernel: tuple[int, ...] | None
    alpha: float | None  # from the file's alpha tensor; None when the file stores none (or alpha_unknown)
    dora: bool
    alpha_unknown: bool  # an alpha tensor is stored but its value was not read (header-only adapters)

    def __init__(self, module: ModuleKey, tensors: dict[str, TensorInfo], keys: dict[str, str], algo: str, kind: str,
                 rank: int | None, in_features: int | None, out_features: int | None,
                 kernel: tuple[int, ...] | None, alpha: float | None = None, dora: bool = False,
                 alpha_unknown: bool = False) -> None:
        self._set(module=module, tensors=tensors, keys=keys, algo=algo, kind=kind, rank=rank,
                  in_features=in_features, out_features=out_features, kernel=kernel, alpha=alpha, dora=dora,
                  alpha_unknown=alpha_unknown)

    @property
    def effective_alpha(self) -> float | None:
        """alpha, or the rank where the file stores none or 0 (kohya and peft both read it that way);
        None when the stored alpha was not read."""
        if self.alpha_unknown:
            return None
        return self.alpha if self.alpha else (float(self.rank) if self.rank else None)


def describe_module(module: ModuleKey, tensors: dict[str, TensorInfo], keys: dict[str, str],
                    alpha: float | None, *, alpha_unknown: bool = False) -> ModuleInfo:
    """Read rank, kind and features from the shapes of a module's factors."""
    algo, kind, rank, fin, fout, kernel, dora = _shape_facts(tuple([(role, t.shape) for role, t in tensors.items()]))
    # What ModuleInfo(...) sets, without its keyword-argument __init__ and _set (a third of this function's time,
    # hundreds of modules a file); the same fields in the same order (tests/test_speed_adapter_open.py compares).
    info = _new_object(ModuleInfo)
    info.__dict__.update(module=module, tensors=tensors, keys=keys, algo=algo, kind=kind, rank=rank, in_features=fin,
                         out_features=fout, kernel=kernel, alpha=alpha, dora=dora, alpha_unknown=alpha_unknown)
    return info


_new_object = object.__new__


@functools.lru_cache(maxsize=4096)
def _shape_facts(role_shapes: tuple[tuple[str, tuple[int, ...]], ...]
                 ) -> tuple[str, str, int | None, int | None, int | None, tuple[int, ...] | None, bool]:
    """(algo, kind, rank, in_features, out_features, kernel, dora) from a module's (role, shape) pairs. Kept: an
    adapter repeats a few dozen such shape sets over hundreds of modules, and files of one base share them."""
    shapes = dict(role_shapes)
    roles = set(shapes)
    dora = "dora_scale" in roles
    rank = fin = fout = None
    kernel: tuple[int, ...] | None = None
    if "down" in roles or "up" in roles:
        algo = "lora"
        down, up = shapes.get("down", ()), shapes.get("up", ())
        rank = down[0] if down else (up[1] if len(up) > 1 else None)
        fin = down[1] if len(down) > 1 else None
        fout = up[0] if up else None
        if "mid" in roles:  # LoCon Tucker: down [r, in, 1, 1], mid [r, r, kh, kw]
            kernel = shapes["mid"][2:] or None
        elif len(down) == 4:
            kernel = down[2:]
    elif roles & set(_LOHA):
        algo = "loha"
        w1a, w1b = shapes.get("hada_w1_a", ()), shapes.get("hada_w1_b", ())
        if "hada_t1" in roles:  # Tucker: w1_a [r, out], w1_b [r, in], t1 [r, r, kh, kw]
            rank = w1a[0] if w1a else None
            fout = w1a[1] if len(w1a) > 1 else None
            kernel = shapes["hada_t1"][2:] or None
        else:  # w1_a [out, r], w1_b [r, in (x kh x kw)]
            rank = w1a[1] if len(w1a) > 1 else None
            fout = w1a[0] if w1a else None
        fin = w1b[1] if len(w1b) > 1 else None
    elif roles & set(_LOKR):
        algo = "lokr"
        w1 = shapes.get("lokr_w1", ())
        w1a, w1b = shapes.get("lokr_w1_a", ()), shapes.get("lokr_w1_b", ())
        w2 = shapes.get("lokr_w2", ())
        w2a, w2b = shapes.get("lokr_w2_a", ()), shapes.get("lokr_w2_b", ())
        left = (w1[0], w1[1]) if len(w1) >= 2 else ((w1a[0], w1b[1]) if len(w1a) > 1 and len(w1b) > 1 else None)
        if len(w2) >= 2:
            right: tuple[int, int] | None = (w2[0], w2[1])
            kernel = w2[2:] or None
        elif len(w2a) > 1 and len(w2b) > 1:
            if "lokr_t2" in roles:  # Tucker: w2_a [r, out2], w2_b [r, in2], t2 [r, r, kh, kw]
                right = (w2a[1], w2b[1])
                kernel = shapes["lokr_t2"][2:] or None
            else:  # w2_a [out2, r], w2_b [r, in2 (x kh x kw)]
                right = (w2a[0], w2b[1])
        else:
            right = None
        if left and right:
            fout, fin = left[0] * right[0], left[1] * right[1]
        if len(w2a) > 1:
            rank = w2a[0] if "lokr_t2" in roles else w2a[1]
        else:
            rank = w1a[1] if len(w1a) > 1 else None
    elif "diff" in roles:
        algo = "full"
        d = shapes["diff"]
        fout, fin = (d[0], d[1]) if len(d) > 1 else (None, None)
        kernel = d[2:] or None
    else:
        algo = "other"
    kind = "conv" if kernel is not None else "linear"
    return algo, kind, rank, fin, fout, tuple(kernel) if kernel else None, dora


def _group(header: SafetensorsHeader) -> tuple[KeyMapping, dict[ModuleKey, dict[str, str]]]:
    """The key mapping and, per module, role -> key (raises UnknownAdapterFormat for unreadable keys)."""
    from .formats import to_canonical_by_module

    return to_canonical_by_module(header.tensors)


@functools.lru_cache(maxsize=1 << 14)  # every module of every file asks; files of one base share their paths
def _leaf_name(path: str) -> str:
    """The module's own name as target lists spell it: ``to_q``, and ``to_out.0`` rather than ``0``."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _is_spatial_conv(info: ModuleInfo) -> bool:
    """A convolution with a kernel wider than 1x1: what kohya's conv_dim and LyCORIS' conv_dim apply to. Both
    give 1x1 convs (SD1's proj_in/proj_out) the Linear rank, so those count as Linear in the rank facts."""
    kernel = info.kernel
    return info.kind == "conv" and kernel is not None and kernel.count(1) != len(kernel)  # some size is not 1


def _most_common(values: list) -> object | None:
    values = [v for v in values if v is not None]
    # Counter.most_common(1) is this max (the first of the most common), after an import of heapq
    return max(Counter(values).items(), key=operator.itemgetter(1))[0] if values else None


class AdapterFile(Record):
    """An adapter whose container and keys have been checked. Use ``AdapterFile.open``."""

    path: Path
    header: SafetensorsHeader
    mapping: KeyMapping
    modules: dict[ModuleKey, ModuleInfo]
    file_size: int
    _imported: object
    _repr_skips = frozenset({"_imported"})

    def __init__(self, path: Path, header: SafetensorsHeader, mapping: KeyMapping, modules: dict[ModuleKey, ModuleInfo],
                 file_size: int, _imported: object = None) -> None:
        self.path = path
        self.header = header
        self.mapping = mapping
        self.modules = modules
        self.file_size = file_size
        self._imported = _imported

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> AdapterFile:
        p = Path(path)
        header = read_header(p)
        mapping, by_module = _group(header)
        alphas = _read_alphas(p, header, {m: r["alpha"] for m, r in by_module.items() if "alpha" in r})
        modules = {
            m: describe_module(m, {role: header.tensors[k] for role, k in roles.items()}, roles, alphas.get(m))
            for m, roles in sorted(by_module.items())
        }
        return cls(path=p, header=header, mapping=mapping, modules=modules, file_size=p.stat().st_size)

    @classmethod
    def from_header(cls, header: SafetensorsHeader, *, path: str | os.PathLike[str],
                    file_size: int | None = None) -> AdapterFile:
        """An adapter from a parsed header alone (a remote file read up to 8 + N bytes).

        Alpha values live in the tensor data, so a module that stores an alpha tensor gets ``alpha=None`` with
        ``alpha_unknown=True`` ("not read"), never the "no alpha stored" reading (alpha = rank). ``path`` only
        names the file; hashes and tensor reads need a local file. ``file_size`` defaults to the size the header
        describes.
        """
        mapping, by_module = _group(header)
        modules = {
            m: describe_module(m, {role: header.tensors[k] for role, k in roles.items()}, roles, None,
                               alpha_unknown="alpha" in roles)
            for m, roles in sorted(by_module.items())
        }
        return cls(path=Path(path), header=header, mapping=mapping, modules=modules,
                   file_size=header.total_size if file_size is None else file_size)

    @property
    def alphas_unknown(self) -> bool:
        """True when some stored alpha was not read (``from_header``): alpha facts are then incomplete."""
        return any(m.alpha_unknown for m in self.modules.values())

    # --- what the weights say ------------------------------------------------------------

    @property
    def format(self) -> str:
        return self.mapping.format

    @property
    def metadata_raw(self) -> dict[str, str]:
        return self.header.metadata

    @property
    def unknown_keys(self) -> list[str]:
        return self.mapping.unknown

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted({m.component for m in self.modules}))

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(Counter(t.dtype for t in self.header.tensors.values()))

    @cached_property
    def network_type(self) -> str:
        from .formats import network_type

        # a module's tensors by role: network_type reads only their roles (no set built per module)
        return network_type({m: info.tensors for m, info in self.modules.items()})

    @cached_property
    def module_alphas(self) -> dict[ModuleKey, float]:
        """Alpha per module as the loaders use it: the stored alpha tensor; for peft/diffusers files, which
        keep alpha in ``lora_adapter_metadata`` (per component, with alpha_pattern), that config's value.
        Modules with neither are left out (their alpha is the rank by convention)."""
        stored = {m: info.alpha for m, info in self.modules.items() if info.alpha is not None}
        if "lora_adapter_metadata" not in self.header.metadata:
            return stored  # the common case: no JSON parse on header-only paths
        from .alphas import module_alphas, peft_configs

        return module_alphas(self) if peft_configs(self.header.metadata) else stored

    @cached_property
    def facts(self) -> WeightFacts:
        alphas = self.module_alphas
        infos = list(self.modules.values())
        spatial = {m.module for m in infos if _is_spatial_conv(m)}
        # one pass over the modules (hundreds): the values per kind, in module order (ties go to the first seen)
        linear_ranks, linear_alphas, conv_ranks, conv_alphas = [], [], [], []
        in_spatial = []
        for m in infos:
            module = m.module
            if module in spatial:
                in_spatial.append(True)
                conv_ranks.append(m.rank)
                conv_alphas.append(alphas.get(module))
            else:
                in_spatial.append(False)
                linear_ranks.append(m.rank)
                linear_alphas.append(alphas.get(module))
        rank, alpha = _most_common(linear_ranks), _most_common(linear_alphas)
        conv_rank, conv_alpha = _most_common(conv_ranks), _most_common(conv_alphas)
        rank_pattern = {str(m.module): m.rank for m, conv in zip(infos, in_spatial)
                        if m.rank is not None and m.rank != (conv_rank if conv else rank)}
        alpha_pattern = {str(m.module): alphas[m.module] for m, conv in zip(infos, in_spatial)
                         if m.module in alphas and alphas[m.module] != (conv_alpha if conv else alpha)}
        targets = tuple(sorted({_leaf_name(m.module.path) for m in infos}))
        return WeightFacts(
            format=self.format, network_type=self.network_type, components=self.components,
            module_count=len(self.modules), rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=conv_alpha,
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, target_modules=targets,
            conv_modules=tuple(sorted(str(m) for m in spatial)),
        )

    # --- metadata ------------------------------------------------------------------------------

    @property
    def imported(self):
        """The canonical metadata with the foreign records it came from (``schema.ImportedMetadata``)."""
        if self._imported is None:
            from .schema import import_metadata

            self._imported = import_metadata(self.header.metadata, facts=self.facts)
        return self._imported

    @property
    def metadata(self):
        return self.imported.metadata

    # --- hashes ----------------------------------------------------------------------------------

    @cached_property
    def hashes(self) -> FileHashes:
        from .hashes import hash_file  # hashlib loads only when a hash is asked for

        return hash_file(self.path, data_offset=self.header.data_offset)

    def canonical_keys(self) -> dict[CanonicalKey, str]:
        return {ck: key for key, ck in self.mapping.mapped.items()}


_SCALAR_FORMATS = {"F16": "<e", "F32": "<f", "F64": "<d", "I8": "<b", "U8": "<B", "I16": "<h", "U16": "<H",
                   "I32": "<i", "U32": "<I", "I64": "<q", "U64": "<Q"}


def _scalar(raw: bytes, dtype: str) -> float | None:
    if dtype in _SCALAR_FORMATS:
        return float(struct.unpack(_SCALAR_FORMATS[dtype], raw)[0])
    if dtype == "BF16":  # the top half of an fp32
        return float(struct.unpack("<f", b"\x00\x00" + raw)[0])
    if dtype.startswith("F8"):
        import numpy as np

        return float(np.frombuffer(raw, dtype=numpy_dtype(dtype))[0])
    return None  # not a usable scalar; verify reports it


_UNPACK = {dtype: struct.Struct(fmt).unpack_from for dtype, fmt in _SCALAR_FORMATS.items()}
# One read covers several alphas whose data lie within this many bytes (factors sit between them): a read of a few
# bytes costs about as much as one of 16 KiB, so fewer, slightly longer reads win; longer spans only copy more.
_ALPHA_SPAN = 1 << 12


class _ShortRead(Exception):
    """The file is shorter than its header said (changed under us): read it alpha by alpha as before."""


def _read_alphas(path: Path, header: SafetensorsHeader, keys: dict[ModuleKey, str]) -> dict[ModuleKey, float]:
    """Read the scalar alpha tensors (a few bytes each, integer alphas included: diffusers writes them)
    without loading anything else: alphas close together in the data in one read, only within the spans the
    header validated."""
    if not keys:
        return {}
    tensors = header.tensors
    scalars = []  # (start, end, module, dtype), by offset
    for module, key in keys.items():
        info = tensors[key]
        if info.shape and math.prod(info.shape) != 1:
            continue  # verify reports an alpha that is not a scalar
        scalars.append((info.start, info.end, module, info.dtype))
    scalars.sort(key=_START)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            return _read_coalesced(fd, header.data_offset, scalars)
        except _ShortRead:
            return _read_one_by_one(fd, header, keys)
    finally:
        os.close(fd)


_START = operator.itemgetter(0)


def _read_coalesced(fd: int, data_offset: int, scalars: list[tuple[int, int, ModuleKey, str]]
                    ) -> dict[ModuleKey, float]:
    found: dict[ModuleKey, float] = {}
    count, i = len(scalars), 0
    while i < count:
        first, end = scalars[i][0], scalars[i][1]
        j = i + 1
        while j < count and scalars[j][1] - first <= _ALPHA_SPAN:
            end = max(end, scalars[j][1])
            j += 1
        raw = os.pread(fd, end - first, data_offset + first)
        if len(raw) != end - first:
            raise _ShortRead
        for start, stop, module, dtype in scalars[i:j]:
            unpack = _UNPACK.get(dtype)
            value = (float(unpack(raw, start - first)[0]) if unpack is not None
                     else _scalar(raw[start - first:stop - first], dtype))
            if value is not None:
                found[module] = value
        i = j
    return found


def _read_one_by_one(fd: int, header: SafetensorsHeader, keys: dict[ModuleKey, str]) -> dict[ModuleKey, float]:
    out: dict[ModuleKey, float] = {}
    for module, key in keys.items():
        info = header.tensors[key]
        if info.numel != 1:
            continue
        value = _scalar(os.pread(fd, info.nbytes, header.data_offset + info.start), info.dtype)
        if value is not None:
            out[module] = value
    return out
