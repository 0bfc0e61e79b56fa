"""The fingerprint index verify loads at start (``data/index.json.gz``) is the shipped fingerprint documents, in
another form: equal to what ``index_doc`` derives from them, and loading the same modules, shapes and flat names."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from loraregistry.architectures import fingerprints
from loraregistry.architectures.fingerprints import Fingerprint, ModuleSpec, flatten
from loraregistry.canonical import COMPONENTS, ModuleKey

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_fingerprint_index", ROOT / "scripts" / "gen_fingerprint_index.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def _documented_modules(doc: dict) -> dict[ModuleKey, ModuleSpec]:
    """The modules of one fingerprint document, read row by row (the way they were read before the index)."""
    return {ModuleKey(component, path): ModuleSpec(kind, n_in, n_out, tuple(kernel) if kernel else None)
            for component, rows in doc["components"].items() for path, kind, n_in, n_out, *kernel in rows}


def test_shipped_index_is_the_one_derived_from_the_documents():
    data_dir = ROOT / "loraregistry" / "architectures" / "data"
    shipped = (data_dir / fingerprints.INDEX_FILE).read_bytes()
    assert shipped == _generator().expected_bytes(data_dir), (
        "stale fingerprint index: run scripts/gen_fingerprint_index.py")


def test_generator_check_flags_a_stale_index(tmp_path, monkeypatch):
    gen = _generator()
    assert gen.main(["--check"]) == 0
    data_dir = tmp_path / "loraregistry" / "architectures" / "data"
    data_dir.mkdir(parents=True)
    for path in (ROOT / "loraregistry" / "architectures" / "data").glob("*.json.gz"):
        (data_dir / path.name).write_bytes(path.read_bytes())
    (data_dir / fingerprints.INDEX_FILE).write_bytes(b"stale")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def test_index_loads_every_module_of_the_documents_in_their_order():
    docs = fingerprints.read_documents()
    assert tuple(docs) == fingerprints.fingerprint_names()
    for name, doc in docs.items():
        fp = fingerprints.fingerprint(name)
        expected = _documented_modules(doc)
        assert list(fp.modules.items()) == list(expected.items()), name
        assert fp.name == doc["name"]
        assert fp.components == tuple(sorted(doc["components"]))
        for component, rows in doc["components"].items():
            assert fp.paths(component) == sorted(row[0] for row in rows)
            assert dict(fp.table(component)) == {k.path: s for k, s in expected.items() if k.component == component}
        shared = {}
        for spec in fp.modules.values():  # one object per distinct shape: detection keys verdicts by identity
            assert shared.setdefault(spec, spec) is spec


def test_a_fingerprint_built_from_modules_answers_like_a_shipped_one():
    shipped = fingerprints.fingerprint("sdxl-base")
    built = Fingerprint("copy", dict(shipped.modules))
    assert built.components == shipped.components and dict(built.modules) == dict(shipped.modules)
    for component in shipped.components:
        assert built.paths(component) == shipped.paths(component)
        assert dict(built.table(component)) == dict(shipped.table(component))
    assert built.table("transformer") == {} and built.paths("transformer") == []
    for component, path in [("text_encoder", "encoder.layers.0.self_attn.q_proj"), ("unet", "no.such.module"),
                            ("transformer", "x")]:
        assert built.lookup(component, path) == shipped.lookup(component, path)
    assert repr(built) == f"Fingerprint('copy', {len(shipped.modules)} modules)"


@pytest.mark.parametrize("component", COMPONENTS)
def test_flat_index_is_every_path_flattened_first_fingerprint_first(component):
    expected: dict[str, str] = {}
    for name in fingerprints.fingerprint_names():
        for path in sorted(path for key_component, path in _documented_modules(
                fingerprints.read_documents()[name]) if key_component == component):
            assert expected.setdefault(flatten(path), path) == path
    assert list(fingerprints.flat_name_index(component).items()) == list(expected.items())


def test_flat_index_refuses_two_paths_that_flatten_alike(monkeypatch):
    clash = Fingerprint("clash", {ModuleKey("unet", "a_b.c"): ModuleSpec("linear", 1, 1),
                                  ModuleKey("unet", "a.b_c"): ModuleSpec("linear", 1, 1)})
    monkeypatch.setattr(fingerprints, "fingerprint_names", lambda: ("clash",))
    monkeypatch.setattr(fingerprints, "_load", lambda name: clash)
    fingerprints._flat_index.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"unet: 'a\.b_c' and 'a_b\.c' both flatten to 'a_b_c'"):
            fingerprints._flat_index("unet")
    finally:
        fingerprints._flat_index.cache_clear()


def test_every_component_of_every_fingerprint_is_in_its_flat_index():
    for name, component in itertools.product(fingerprints.fingerprint_names(), COMPONENTS):
        index = fingerprints.flat_name_index(component)
        assert all(index[flatten(path)] == path for path in fingerprints.fingerprint(name).paths(component))
