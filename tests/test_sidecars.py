"""Sidecars and previews in (issue 16 items 2 and 4): A1111/Forge name.json, Civitai Helper name.civitai.info,
preview images, facts with their source, conflicts with what the file declares, Civitai base models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraregistry.architectures import ids
from loraregistry.registry import Registry
from loraregistry.registry.civitai_bases import a1111_base, civitai_base, finer_base, known_labels
from loraregistry.registry.sidecars import merge_facts, read_sidecars, sidecar_names, signature

from .test_registry_scan import adapter


def read(folder: Path, adapter_name: str = "x.safetensors"):
    names = {p.name for p in folder.iterdir()}
    return read_sidecars(folder / adapter_name, names, signature(folder, adapter_name, names))


def facts_of(cars) -> dict[str, object]:
    return {(f["source"], f["field"]): f["value"] for f in cars.facts}


def test_a1111_sidecar_fields(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({
        "description": "a cat", "sd version": "SDXL", "activation text": "pxlcat,  pixel art ,", "preferred weight": 0.7,
        "negative text": "blurry", "notes": "trained on 40 images"}), encoding="utf-8")
    cars = read(tmp_path)
    assert facts_of(cars) == {
        ("a1111-sidecar", "trigger_words"): ["pxlcat", "pixel art"],
        ("a1111-sidecar", "recommended_weight"): 0.7,
        ("a1111-sidecar", "description"): "a cat",
        ("a1111-sidecar", "notes"): "trained on 40 images",
        ("a1111-sidecar", "negative_text"): "blurry",
        ("a1111-sidecar", "base_model"): "SDXL",
        ("a1111-sidecar", "architecture"): "sdxl-base",
        ("a1111-sidecar", "family"): "sdxl",
    }
    assert cars.problems == [] and all(f["file"] == "x.json" for f in cars.facts)


def test_civitai_info_fields(tmp_path):
    (tmp_path / "x.civitai.info").write_text(json.dumps({
        "id": 130072, "modelId": 4201, "name": "v1.0", "baseModel": "Illustrious",
        "trainedWords": ["ilxl style", "1girl, smile"], "model": {"name": "Cool Style", "type": "LORA"},
        "images": [{"url": "https://image.civitai.com/a.jpeg"}, {"url": "javascript:alert(1)"}, {"nsfw": True}]}),
        encoding="utf-8")
    assert facts_of(read(tmp_path)) == {
        ("civitai-info", "trigger_words"): ["ilxl style", "1girl", "smile"],
        ("civitai-info", "civitai_version_id"): 130072,
        ("civitai-info", "civitai_model_id"): 4201,
        ("civitai-info", "name"): "Cool Style",
        ("civitai-info", "base_model"): "Illustrious",
        ("civitai-info", "architecture"): "sdxl-base",
        ("civitai-info", "family"): "sdxl",
        ("civitai-info", "sub_base"): "Illustrious",
        ("civitai-info", "preview_urls"): ["https://image.civitai.com/a.jpeg"],
    }


@pytest.mark.parametrize(("file", "content", "problem"), [
    ("x.json", "{not json", "x.json: not valid JSON"),
    ("x.json", "[1, 2]", "x.json: expected a JSON object, got list"),
    ("x.json", json.dumps({"preferred weight": "heavy"}), "'preferred weight' should be a number"),
    ("x.json", json.dumps({"preferred weight": 1e300}), "is no usable weight"),
    ("x.json", json.dumps({"activation text": 42}), "'activation text' should be text or a list of text"),
    ("x.json", json.dumps({"sd version": "SD9"}), "unknown 'sd version'"),
    ("x.json", json.dumps({"notes": "n" * 10_001}), "'notes' is longer than 10000 characters"),
    ("x.civitai.info", json.dumps({"id": -3}), "'id' should be a positive integer"),
    ("x.civitai.info", json.dumps({"id": True}), "'id' should be a positive integer"),
    ("x.civitai.info", json.dumps({"baseModel": "Some Future Model"}), "is not in lorareg's table"),
    ("x.civitai.info", json.dumps({"trainedWords": ["w" * 501]}), "one over 500 characters"),
    ("x.civitai.info", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_bad_sidecar_values_are_reported_and_skipped_never_coerced(tmp_path, file, content, problem):
    (tmp_path / file).write_text(content, encoding="utf-8")
    cars = read(tmp_path)
    assert len(cars.problems) == 1 and problem in cars.problems[0] and cars.problems[0].startswith(file)
    assert all(f["field"] in ("base_model",) for f in cars.facts)  # an unknown baseModel is kept as text only


def test_oversized_sidecar_is_not_read(tmp_path, monkeypatch):
    from loraregistry.registry import sidecars

    monkeypatch.setattr(sidecars, "MAX_SIDECAR_BYTES", 100)
    (tmp_path / "x.json").write_text(json.dumps({"notes": "n" * 200}), encoding="utf-8")
    cars = read(tmp_path)
    assert cars.problems == ["x.json: larger than 100 bytes, not read"] and cars.facts == []


@pytest.mark.parametrize(("present", "chosen"), [
    (["x.png", "x.preview.png"], "x.png"),
    (["x.preview.png", "x.webp"], "x.webp"),
    (["x.preview.jpeg"], "x.preview.jpeg"),
    (["y.png", "x.safetensors.png"], None),
])
def test_preview_lookup_follows_a1111_order(tmp_path, present, chosen):
    for name in present:
        (tmp_path / name).write_bytes(b"img")
    cars = read(tmp_path)
    assert cars.preview == (str(tmp_path / chosen) if chosen else None)


def test_sidecar_names_cover_both_tools():
    names = sidecar_names("style.v2.safetensors")
    assert names[:2] == ("style.v2.json", "style.v2.civitai.info") and "style.v2.preview.png" in names


@pytest.mark.parametrize(("declared", "imported", "conflict"), [
    ({"trigger_words": ["PxlCat"]}, {"field": "trigger_words", "value": ["pxlcat"]}, False),
    ({"trigger_words": ["pxlcat"]}, {"field": "trigger_words", "value": ["other"]}, True),
    ({"trigger_words": []}, {"field": "trigger_words", "value": ["other"]}, False),
    ({"architecture": "sdxl-base"}, {"field": "architecture", "value": "sd1"}, True),
    ({"architecture": "sd2-512"}, {"field": "architecture", "value": None}, False),
    ({"name": "Cat"}, {"field": "name", "value": "Dog"}, True),
])
def test_merge_keeps_declared_values_and_names_conflicts(declared, imported, conflict):
    fact = {**imported, "source": "civitai-info", "file": "/x.civitai.info"}
    merged = merge_facts([fact], declared)
    assert merged["facts"] == [fact]
    assert bool(merged["conflicts"]) == conflict
    if conflict:
        assert merged["conflicts"][0]["declared"] == declared[imported["field"]]


def test_scan_records_sidecars_with_source_and_conflicts_without_overriding(tmp_path):
    lib = tmp_path / "loras"
    path = adapter(lib, "x.safetensors", arch="sd1", name="Declared Name", trigger_words=["own"])
    (lib / "x.civitai.info").write_text(json.dumps({"baseModel": "SDXL 1.0", "trainedWords": ["theirs"],
                                                    "model": {"name": "Civitai Name"}}), encoding="utf-8")
    (lib / "x.preview.png").write_bytes(b"\x89PNG")
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
        entry = reg.show("declared name")
        assert entry.name == "Declared Name" and entry.trigger_words == ("own",) and entry.architecture == "sd1"
        assert entry.all_trigger_words == ("own", "theirs")
        assert {c["field"] for c in entry.imported["conflicts"]} == {"name", "trigger_words", "architecture"}
        assert entry.imported_values("name") == [("Civitai Name", "civitai-info")]
        assert entry.preview == str((lib / "x.preview.png").resolve())
        assert entry.sub_base == "SDXL 1.0"
        # editing a sidecar is seen by the next scan without re-reading the adapter
        (lib / "x.civitai.info").write_text(json.dumps({"trainedWords": ["own"]}), encoding="utf-8")
        result = reg.scan([lib])
        assert (result.hashed, result.unchanged) == (0, 1)
        entry = reg.show("declared name")
        assert entry.imported["conflicts"] == [] and entry.sub_base is None
        assert [e.name for e in reg.search("theirs")] == []
        (lib / "x.preview.png").unlink()
        reg.scan([lib])
        assert reg.show("declared name").preview is None
    assert path.exists()


def test_every_civitai_name_of_the_architecture_table_maps_to_the_same_architecture():
    for arch in ids.ARCHITECTURES.values():
        for name in arch.civitai:
            assert civitai_base(name) is not None, name
            assert civitai_base(name).architecture == arch.id, name


@pytest.mark.parametrize(("name", "architecture", "finer"), [
    ("Pony", "sdxl-base", True), ("illustrious", "sdxl-base", True), ("NoobAI", "sdxl-base", True),
    ("SDXL 1.0", "sdxl-base", False), ("SD 1.5", "sd1", False), ("SD 3.5 Large", "sd35-large", False),
    ("Flux.1 D", "flux1-dev", False), ("Flux.1 S", "flux1-schnell", False),
])
def test_civitai_base_models_map_to_architectures_as_sub_bases(name, architecture, finer):
    row = civitai_base(name)
    assert row.architecture == architecture and row.finer == finer
    assert (finer_base(name) is not None) == finer
    assert name.lower() in {label.lower() for label in known_labels()}


@pytest.mark.parametrize(("value", "architecture"), [("SD1", "sd1"), ("SDXL", "sdxl-base"), ("SD2", None),
                                                      ("Unknown", "missing"), (3, "missing")])
def test_a1111_sd_version(value, architecture):
    row = a1111_base(value)
    assert (row.architecture if row else "missing") == architecture
