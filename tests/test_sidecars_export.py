"""`lorareg registry export-sidecars` (issue 16 item 3): A1111/Forge name.json written from declared facts,
atomically, keeping other fields and fields a user edited unless --force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loraregistry import cli
from loraregistry.registry import Registry
from loraregistry.registry.export_sidecars import sidecar_fields

from .test_registry_scan import adapter


@pytest.fixture
def scanned(tmp_path):
    lib = tmp_path / "loras"
    path = adapter(lib, "cat.safetensors", arch="sdxl-base", name="Cat", description="a cat",
                   trigger_words=["pxlcat", "pixel art"], recommended_weight=0.8)
    with Registry.open() as reg:
        reg.scan([lib])
    return path


def sidecar(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def export(*args: str) -> int:
    return cli.main(["registry", "export-sidecars", *args])


@pytest.mark.parametrize(("record", "fields"), [
    ({"description": "d", "trigger_words": ["a", "b"], "recommended_weight": 0.5, "base": {"architecture": "sd1"}},
     {"description": "d", "activation text": "a, b", "preferred weight": 0.5, "sd version": "SD1"}),
    ({"base": {"architecture": "SDXL 1.0"}}, {"sd version": "SDXL"}),
    ({"base": {"architecture": "flux1-dev"}}, {}),  # A1111 has no word for it: left out, not "Unknown"
    ({}, {}),  # inferred facts (the architecture from shapes) are never written
])
def test_sidecar_fields_are_the_declared_ones(record, fields):
    assert sidecar_fields(record) == fields


def test_export_writes_a1111_sidecar_then_is_idempotent(scanned, capsys):
    assert export() == 0
    assert sidecar(scanned) == {"description": "a cat", "activation text": "pxlcat, pixel art",
                                "preferred weight": 0.8, "sd version": "SDXL"}
    assert "written   " + str(scanned.with_suffix(".json").resolve()) in capsys.readouterr().out
    stamp = os.stat(scanned.with_suffix(".json")).st_mtime_ns
    assert export() == 0
    assert os.stat(scanned.with_suffix(".json")).st_mtime_ns == stamp  # nothing to change: not rewritten


def test_user_edits_and_unknown_fields_are_kept_unless_force(scanned, capsys):
    assert export() == 0
    data = sidecar(scanned)
    data.update({"activation text": "my own words", "notes": "works best at 0.6", "negative text": "blurry"})
    scanned.with_suffix(".json").write_text(json.dumps(data), encoding="utf-8")
    capsys.readouterr()
    assert export() == 0
    assert sidecar(scanned)["activation text"] == "my own words" and sidecar(scanned)["notes"] == "works best at 0.6"
    assert "kept your activation text" in capsys.readouterr().out
    assert export("--force") == 0
    assert sidecar(scanned)["activation text"] == "pxlcat, pixel art"
    assert sidecar(scanned)["notes"] == "works best at 0.6" and sidecar(scanned)["negative text"] == "blurry"


def test_a_sidecar_written_by_a1111_before_any_export_keeps_its_values(scanned):
    scanned.with_suffix(".json").write_text(json.dumps({"activation text": "theirs", "preferred weight": 0,
                                                        "sd version": "Unknown"}), encoding="utf-8")
    assert export() == 0
    data = sidecar(scanned)
    assert data["activation text"] == "theirs" and data["sd version"] == "Unknown"
    assert data["preferred weight"] == 0.8 and data["description"] == "a cat"  # 0 means "not set" in A1111


def test_a_sidecar_that_is_not_json_is_refused_exit_1_and_left_alone(scanned, capsys):
    scanned.with_suffix(".json").write_text("{broken", encoding="utf-8")
    assert export() == 1
    assert scanned.with_suffix(".json").read_text(encoding="utf-8") == "{broken"
    assert "refused" in capsys.readouterr().out
    assert export("--force") == 0 and sidecar(scanned)["description"] == "a cat"


def test_a_change_between_read_and_rename_is_refused(scanned, monkeypatch):
    from loraregistry.registry import export_sidecars as module

    real = module._read

    def read_then_user_saves(path):
        got = real(path)
        path.write_text(json.dumps({"notes": "saved by A1111 meanwhile"}), encoding="utf-8")
        os.utime(path, ns=(1, 10**18))
        return got

    monkeypatch.setattr(module, "_read", read_then_user_saves)
    assert export() == 1
    assert sidecar(scanned) == {"notes": "saved by A1111 meanwhile"}


def test_export_limited_to_folders(tmp_path, scanned):
    other = adapter(tmp_path / "other", "dog.safetensors", name="Dog", description="a dog")
    with Registry.open() as reg:
        reg.scan([tmp_path / "other"])
    assert export(str(tmp_path / "other")) == 0
    assert sidecar(other)["description"] == "a dog" and not scanned.with_suffix(".json").exists()
