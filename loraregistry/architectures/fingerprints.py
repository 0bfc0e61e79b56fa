"""Module fingerprints of the base architectures: every Linear/Conv2d a LoRA can patch, with its shape.

The data ships as ``data/<name>.json.gz``, generated on the meta device by ``scripts/gen_fingerprints.py``
from the public configs in ``configs/<name>.json``, and as ``data/index.json.gz``, derived from those by
``scripts/gen_fingerprint_index.py`` in the form that loads fastest (see ``index_doc``). This module reads the
index with the standard library only (no torch), lazily, and caches what it loads.

Paths are canonical (see ``loraregistry.canonical``): diffusers/transformers module names, CLIP paths
with the ``text_model.`` level, T5 paths as in transformers (``encoder.block.0.layer.0.SelfAttention.q``).
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from ..canonical import ModuleKey
from ..errors import UnknownArchitecture, UsageError
from ..lazy_re import lazy
from ..record import FrozenRecord
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


class ModuleSpec(FrozenRecord):
    """Kind and shape of one patchable module. ``kernel`` is ``(kh, kw)`` for convs, None for Linear."""

    kind: str  # "linear" or "conv"
    in_features: int
    out_features: int
    kernel: tuple[int, int] | None

    def __init__(self, kind: str, in_features: int, out_features: int, kernel: tuple[int, int] | None = None) -> None:
        self._set(kind=kind, in_features=in_features, out_features=out_features, kernel=kernel)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the base weight: (out, in) or (out, in, kh, kw)."""
        if self.kernel is None:
            return (self.out_features, self.in_features)
        return (self.out_features, self.in_features, *self.kernel)


class Fingerprint:
    """All patchable modules of one base architecture, keyed by ``ModuleKey(component, path)``.

    Held as one ``path -> ModuleSpec`` table per component: detection looks up every adapter module in every
    shipped fingerprint, and the shipped index loads straight into these tables. ``modules`` (one mapping over all
    components) is built on first use."""

    def __init__(self, name: str, modules: Mapping[ModuleKey, ModuleSpec]) -> None:
        tables: dict[str, dict[str, ModuleSpec]] = {}
        for key, spec in modules.items():
            tables.setdefault(key.component, {})[key.path] = spec
        self._init(name, tables)

    @classmethod
    def from_tables(cls, name: str, tables: dict[str, dict[str, ModuleSpec]]) -> Fingerprint:
        """A fingerprint over ``{component: {path: spec}}``; the tables are taken over, not copied."""
        fp = cls.__new__(cls)
        fp._init(name, tables)
        return fp

    def _init(self, name: str, tables: dict[str, dict[str, ModuleSpec]]) -> None:
        self.name = name
        self._tables = {component: table for component, table in tables.items() if table}
        self._modules: Mapping[ModuleKey, ModuleSpec] | None = None

    @property
    def modules(self) -> Mapping[ModuleKey, ModuleSpec]:
        if self._modules is None:
            self._modules = MappingProxyType({ModuleKey(component, path): spec
                                              for component, table in self._tables.items()
                                              for path, spec in table.items()})
        return self._modules

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted(self._tables))

    def table(self, component: str) -> Mapping[str, ModuleSpec]:
        """``path -> ModuleSpec`` of one component (empty when the base has none): exact paths only."""
        return self._tables.get(component, _NO_MODULES)

    def paths(self, component: str) -> list[str]:
        return sorted(self._tables.get(component, ()))

    def lookup(self, component: str, path: str) -> ModuleSpec | None:
        """The module at ``path``; CLIP paths may omit the ``text_model.`` level.

        A fused canonical path (kohya SD3/Flux ``attn.{to_q,to_k,to_v}``, see ``formats.mmdit``) is the Linear
        its targets make when stacked: their shared input, the sum of their outputs."""
        table = self._tables.get(component, _NO_MODULES)
        spec = table.get(path)
        if spec is None and not path.startswith(CLIP_PREFIX):
            spec = table.get(CLIP_PREFIX + path)
        if spec is None and "{" in path:
            spec = self._fused(table, path)
        return spec

    @staticmethod
    def _fused(table: Mapping[str, ModuleSpec], path: str) -> ModuleSpec | None:
        from ..formats.mmdit import fused_targets  # keys-only module; imported late to keep imports one-way

        parts = [table.get(target) for target in fused_targets(path)]
        if len(parts) < 2 or any(p is None or p.kind != "linear" for p in parts):
            return None
        if len({p.in_features for p in parts}) != 1:
            return None
        return ModuleSpec("linear", parts[0].in_features, sum(p.out_features for p in parts))

    def __repr__(self) -> str:
        return f"Fingerprint({self.name!r}, {sum(map(len, self._tables.values()))} modules)"


_NO_MODULES: Mapping[str, ModuleSpec] = MappingProxyType({})


def _data_dir() -> Path:
    return Path(__file__).with_name("data")  # a plain folder of the package (importlib.resources costs ~10 ms)


def read_documents(data_dir: Path | None = None) -> dict[str, dict]:
    """The shipped fingerprint documents (``<name>.json.gz``, the generated source of truth), by name."""
    import gzip  # only the index generator and its test read the documents

    suffix = ".json.gz"
    docs = {}
    for path in sorted((data_dir or _data_dir()).glob(f"*{suffix}")):
        if path.name == INDEX_FILE:
            continue
        doc = json.loads(gzip.decompress(path.read_bytes()))
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"fingerprint {path.name}: unsupported data format {doc.get('format')!r}")
        docs[path.name[: -len(suffix)]] = doc
    return docs


def index_doc(docs: Mapping[str, dict]) -> dict:
    """What ``INDEX_FILE`` holds, derived from the documents: per fingerprint its distinct shapes
    (``[kind, in, out, *kernel]``, in order of first use) and, per component, ``{path: shape number}``.

    A verify reads all eight fingerprints at start: parsed from this, a table is a dict that JSON decoding builds
    in C, where the documents' rows need Python work each."""
    fingerprints = {}
    for name in sorted(docs):
        shapes: dict[tuple, int] = {}
        components = {component: {row[0]: shapes.setdefault(tuple(row[1:]), len(shapes)) for row in rows}
                      for component, rows in docs[name]["components"].items()}
        fingerprints[name] = {"name": docs[name]["name"], "shapes": [list(shape) for shape in shapes],
                              "components": components}
    return {"format": FORMAT_VERSION, "fingerprints": fingerprints}


INDEX_FILE = "index.json.gz"  # generated by scripts/gen_fingerprint_index.py; a test checks it equals index_doc(...)


@lru_cache(maxsize=None)
def _index() -> Mapping[str, dict]:
    import zlib  # not gzip: that module's import costs more than this decompression

    doc = json.loads(zlib.decompress(_data_dir().joinpath(INDEX_FILE).read_bytes(), wbits=31))  # 31: gzip framing
    if doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"fingerprint index: unsupported data format {doc.get('format')!r}")
    return doc["fingerprints"]


@lru_cache(maxsize=None)
def fingerprint_names() -> tuple[str, ...]:
    """Names of the shipped fingerprints (``sd1``, ``sdxl-base``, ...)."""
    return tuple(sorted(_index()))


@lru_cache(maxsize=None)
def _load(name: str) -> Fingerprint:
    entry = _index()[name]
    # One ModuleSpec per distinct shape (a few dozen per base), shared by every module of that shape.
    specs = [ModuleSpec(kind, in_features, out_features, tuple(kernel) if kernel else None)
             for kind, in_features, out_features, *kernel in entry["shapes"]]
    tables = {component: dict(zip(paths, map(specs.__getitem__, paths.values())))
              for component, paths in entry["components"].items()}
    return Fingerprint.from_tables(entry["name"], tables)


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


_flatten_all = operator.methodcaller("replace", ".", "_")  # flatten() without a Python call per path


@lru_cache(maxsize=None)
def _flat_index(component: str) -> Mapping[str, str]:
    # Every path once, in the order of the fingerprints and their sorted paths (the first spelling wins).
    paths = list(dict.fromkeys(itertools.chain.from_iterable(_load(name).paths(component)
                                                             for name in fingerprint_names())))
    index = dict(zip(map(_flatten_all, paths), paths))
    if len(index) != len(paths):  # two paths flatten alike: name the first such pair
        seen: dict[str, str] = {}
        for path in paths:
            if (first := seen.setdefault(flatten(path), path)) != path:
                raise ValueError(f"{component}: {first!r} and {path!r} both flatten to {flatten(path)!r}")
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
        spec = fp.table(component)[path]
        if spec.kind == "conv" and spec.kernel != (1, 1):
            continue
        if _KOHYA_TARGETS.match(path) or (include_t5 and _T5_TARGETS.match(path)):
            targets.append(path)
    return targets
