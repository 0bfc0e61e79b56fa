"""``AdapterFile.open`` and ``inspect_adapter`` give what the plain implementation gives: one read per alpha
tensor, a module's shape facts worked out afresh, the weight facts counted module by module, the metadata imported
through the pydantic record. Compared field by field over the goldens, the known-bad libraries and generated files
(every alpha dtype, alphas far apart and close together, a truncated file, no alpha at all)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from loraregistry import errors, formats
from loraregistry.adapter import AdapterFile, ModuleInfo, _scalar, _shape_facts
from loraregistry.canonical import WeightFacts
from loraregistry.inspection import INSPECT_SCHEMA_VERSION, inspect_adapter
from loraregistry.safetensors_io import read_header
from loraregistry.schema.resolve import import_metadata
from tests.adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter
from tests.known_bad import KNOWN_BAD

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDENS = sorted(GOLDEN.rglob("*.safetensors"))


# --- the plain implementation ------------------------------------------------------------------------------


def _plain_open(path: Path):
    header = read_header(path)
    mapping, by_module = formats.to_canonical_by_module(header.tensors)
    alphas = {}
    with open(path, "rb") as f:
        for module, roles in by_module.items():
            if "alpha" not in roles:
                continue
            info = header.tensors[roles["alpha"]]
            if info.numel != 1:
                continue
            f.seek(header.data_offset + info.start)
            value = _scalar(f.read(info.nbytes), info.dtype)
            if value is not None:
                alphas[module] = value
    modules = {}
    for module, roles in sorted(by_module.items()):
        tensors = {role: header.tensors[key] for role, key in roles.items()}
        algo, kind, rank, fin, fout, kernel, dora = _shape_facts.__wrapped__(
            tuple((role, t.shape) for role, t in tensors.items()))
        modules[module] = ModuleInfo(module=module, tensors=tensors, keys=roles, algo=algo, kind=kind, rank=rank,
                                     in_features=fin, out_features=fout, kernel=kernel, alpha=alphas.get(module),
                                     dora=dora)
    return header, mapping, modules, os.stat(path).st_size


def _plain_network_type(modules: dict) -> str:
    from loraregistry.formats.lycoris import _CONV_LEAVES, FULL_ROLES, LOHA_ROLES, LOKR_ROLES

    roles = set().union(*(set(info.tensors) for info in modules.values()))
    for name, present in (("dora", "dora_scale" in roles), ("loha", roles & LOHA_ROLES), ("lokr", roles & LOKR_ROLES),
                          ("full", roles & FULL_ROLES), ("locon", "mid" in roles)):
        if present:
            return name
    convs = [m for m in modules if m.component == "unet" and m.path.split(".")[-1] in _CONV_LEAVES]
    return "locon" if convs else "lora"


def _plain_facts(adapter: AdapterFile) -> WeightFacts:
    def most_common(values):
        values = [v for v in values if v is not None]
        return Counter(values).most_common(1)[0][0] if values else None

    alphas = adapter.module_alphas
    mods = list(adapter.modules.values())
    spatial = {m.module for m in mods if m.kind == "conv" and m.kernel is not None and any(k != 1 for k in m.kernel)}
    linear = [m for m in mods if m.module not in spatial]
    conv = [m for m in mods if m.module in spatial]
    rank, conv_rank = most_common(m.rank for m in linear), most_common(m.rank for m in conv)
    alpha, conv_alpha = most_common(alphas.get(m.module) for m in linear), most_common(alphas.get(m.module) for m in conv)
    leaves = set()
    for m in mods:
        parts = m.module.path.split(".")
        leaves.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return WeightFacts(
        format=adapter.mapping.format, network_type=_plain_network_type(adapter.modules),
        components=tuple(sorted({m.module.component for m in mods})), module_count=len(mods), rank=rank, alpha=alpha,
        conv_rank=conv_rank, conv_alpha=conv_alpha,
        rank_pattern={str(m.module): m.rank for m in mods
                      if m.rank is not None and m.rank != (conv_rank if m.module in spatial else rank)},
        alpha_pattern={str(m.module): alphas[m.module] for m in mods
                       if m.module in alphas and alphas[m.module] != (conv_alpha if m.module in spatial else alpha)},
        target_modules=tuple(sorted(leaves)), conv_modules=tuple(sorted(str(m) for m in spatial)))


def _counts(values) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0])))}


def _plain_inspect(path: Path) -> dict:
    header, mapping, modules, size = _plain_open(path)
    adapter = AdapterFile(path=path, header=header, mapping=mapping, modules=modules, file_size=size)
    facts = _plain_facts(adapter)
    imported = import_metadata(header.metadata, facts=facts)
    mods = list(modules.values())
    return {
        "schema_version": INSPECT_SCHEMA_VERSION, "path": str(path), "format": mapping.format,
        "dialect": dict(mapping.dialect), "network_type": _plain_network_type(modules),
        "components": _counts(m.module.component for m in mods), "module_count": len(mods),
        "conv_module_count": sum(m.kind == "conv" for m in mods), "algorithms": _counts(m.algo for m in mods),
        "ranks": _counts(m.rank for m in mods if m.rank is not None),
        "alphas": _counts(f"{m.alpha:g}" for m in mods if m.alpha is not None),
        "dtypes": _counts(t.dtype for t in header.tensors.values()), "tensor_count": len(header.tensors),
        "unknown_keys": list(mapping.unknown), "file_size": size, "header_size": header.header_size,
        "metadata": imported.metadata.model_dump(mode="json", exclude_none=True),
        "metadata_sources": sorted(k for k, v in imported.sources.items() if v),
        "inferred": list(imported.inferred), "warnings": list(imported.warnings),
    }


def _outcome(fn, path: Path):
    """The result as JSON text (floats exactly: NaN and signed zeros included), or the error's class and message."""
    try:
        result = fn(path)
    except errors.LoraregError as exc:
        return ("error", type(exc).__name__, str(exc))
    return json.dumps(result, sort_keys=True, default=repr)


def _open_fields(path: Path):
    adapter = AdapterFile.open(path)
    return {
        "header": repr(adapter.header), "mapping": repr(adapter.mapping), "file_size": adapter.file_size,
        "path": str(adapter.path),
        "modules": [(repr(m), repr(i.module), {r: tuple(t) for r, t in i.tensors.items()}, i.keys, i.algo, i.kind,
                     i.rank, i.in_features, i.out_features, i.kernel, repr(i.alpha), i.dora, i.alpha_unknown,
                     list(vars(i)))
                    for m, i in adapter.modules.items()],
        "facts": repr(adapter.facts), "module_alphas": repr(adapter.module_alphas),
        "network_type": adapter.network_type,
    }


def _plain_fields(path: Path):
    header, mapping, modules, size = _plain_open(path)
    adapter = AdapterFile(path=path, header=header, mapping=mapping, modules=modules, file_size=size)
    return {
        "header": repr(header), "mapping": repr(mapping), "file_size": size, "path": str(path),
        "modules": [(repr(m), repr(i.module), {r: tuple(t) for r, t in i.tensors.items()}, i.keys, i.algo, i.kind,
                     i.rank, i.in_features, i.out_features, i.kernel, repr(i.alpha), i.dora, i.alpha_unknown,
                     list(vars(i)))
                    for m, i in modules.items()],
        "facts": repr(_plain_facts(adapter)), "module_alphas": repr(adapter.module_alphas),
        "network_type": _plain_network_type(modules),
    }


def _assert_same(path: Path) -> None:
    assert _outcome(lambda p: inspect_adapter(p, hashes=False), path) == _outcome(_plain_inspect, path)
    assert _outcome(_open_fields, path) == _outcome(_plain_fields, path)


# --- the corpus ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.name)
def test_goldens_open_and_inspect_as_the_plain_implementation(path):
    _assert_same(path)


@pytest.mark.parametrize("case", KNOWN_BAD_ADAPTERS, ids=lambda c: c.name)
def test_known_bad_adapters_open_and_inspect_as_the_plain_implementation(case, tmp_path):
    _assert_same(case.build(tmp_path))


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_known_bad_containers_open_and_inspect_as_the_plain_implementation(bad, tmp_path):
    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    _assert_same(path)


def _varied_alphas(tensors: dict, dtype, rng: np.random.Generator) -> dict:
    """Alphas of ``dtype``, a different value every few modules (patterns), some left out."""
    out = {}
    for i, (key, value) in enumerate(tensors.items()):
        if key.endswith(".alpha"):
            if i % 7 == 3:
                continue
            value = np.asarray(rng.choice([1, 2, 4, 0.5, 8]), dtype=dtype)
        out[key] = value
    return out


ALPHA_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.uint16]


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl-base"])
@pytest.mark.parametrize("dtype", ALPHA_DTYPES, ids=lambda d: np.dtype(d).name)
def test_generated_kohya_files_open_and_inspect_as_the_plain_implementation(arch, dtype, tmp_path):
    rng = np.random.default_rng(len(arch) * 31 + np.dtype(dtype).itemsize)
    tensors = _varied_alphas(lora_tensors(arch, rank=4, small=arch != "sdxl-base"), dtype, rng)
    _assert_same(write_adapter(tmp_path / "a.safetensors", tensors, {"ss_network_dim": "4"}))


@pytest.mark.parametrize("rank", [1, 64, 320])
def test_alphas_near_and_far_apart_read_alike(rank, tmp_path):
    """Rank 1: every alpha within a few hundred bytes of the next; rank 320: hundreds of KiB between them."""
    tensors = lora_tensors("sd1", rank=rank, alpha=float(rank) / 2, dtype=np.float32)
    _assert_same(write_adapter(tmp_path / "a.safetensors", tensors))


def test_bf16_and_no_alpha_files(tmp_path):
    import ml_dtypes

    tensors = lora_tensors("sd1", rank=2, alpha=None)
    _assert_same(write_adapter(tmp_path / "none.safetensors", tensors))
    tensors = lora_tensors("sd1", rank=2, alpha=3.0, dtype=ml_dtypes.bfloat16)
    _assert_same(write_adapter(tmp_path / "bf16.safetensors", tensors))


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.99])
def test_a_file_cut_short_after_its_header_was_read_fails_as_before(keep, tmp_path, monkeypatch):
    """The header vouched for data the file no longer holds: the alphas are read one by one as before, and the
    same error comes out (no value from beyond the end, no mmap to fault on)."""
    import loraregistry.adapter as adapter_module

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1", rank=1, alpha=2.0, dtype=np.float32))
    header = read_header(path)
    os.truncate(path, header.data_offset + int((os.path.getsize(path) - header.data_offset) * keep))
    monkeypatch.setattr(adapter_module, "read_header", lambda p: header)

    def outcome(fn):
        try:
            fn(path)
        except Exception as exc:  # noqa: BLE001  the plain implementation's own error, whatever it is
            return type(exc), str(exc)
        return None

    plain = outcome(lambda p: _plain_with(header, p))
    assert (plain is None) == (keep > 0.9)  # a file cut at 99% keeps every alpha: both then read it
    assert outcome(AdapterFile.open) == plain


def _plain_with(header, path: Path):
    mapping, by_module = formats.to_canonical_by_module(header.tensors)
    with open(path, "rb") as f:
        for module, roles in by_module.items():
            if "alpha" in roles:
                info = header.tensors[roles["alpha"]]
                f.seek(header.data_offset + info.start)
                _scalar(f.read(info.nbytes), info.dtype)


class _Alpha:
    def __init__(self, alpha):
        self.alpha = alpha


NAN = float("nan")


@pytest.mark.parametrize("alphas", [
    [], [None, None], [8.0, 8.0, 4.0, None, 4.0, 4.0], [0.0, -0.0, 1.0], [-0.0, 0.0, 0.0], [NAN, NAN, 1.0],
    [1.0, 1.0000001, 1.0000001, 2.0], [float("inf"), -float("inf"), 1e-300, 1e300], [0.1 + 0.2, 0.3, 0.3],
    [NAN, -NAN, float("-nan")], [3.0, 2.0, 3.0, 2.0, 1.0],
], ids=repr)
def test_alpha_counts_are_each_modules_alpha_formatted_and_counted(alphas):
    from loraregistry.inspection import _alpha_counts

    modules = [_Alpha(a) for a in alphas]
    assert list(_alpha_counts(modules).items()) == list(_counts(f"{m.alpha:g}" for m in modules
                                                                if m.alpha is not None).items())


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.name)
def test_from_header_modules_are_built_as_by_their_init(path):
    """describe_module fills a ModuleInfo's fields directly: the same values, in the same order, as __init__ sets."""
    header = read_header(path)
    adapter = AdapterFile.from_header(header, path=path)
    _, by_module = formats.to_canonical_by_module(header.tensors)
    assert list(adapter.modules) == sorted(by_module)
    for module, info in adapter.modules.items():
        roles = by_module[module]
        tensors = {role: header.tensors[key] for role, key in roles.items()}
        algo, kind, rank, fin, fout, kernel, dora = _shape_facts.__wrapped__(
            tuple((role, t.shape) for role, t in tensors.items()))
        plain = ModuleInfo(module, tensors, roles, algo, kind, rank, fin, fout, kernel, None, dora, "alpha" in roles)
        assert info == plain and list(vars(info).items()) == list(vars(plain).items()) and repr(info) == repr(plain)
