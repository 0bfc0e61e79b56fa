"""The embedded registry: add/search/show/remove/export, FTS, concurrency, corruption + rebuild, permissions."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from loraregistry.errors import InvalidSafetensorsError, LoraregError, UnknownAdapterFormat
from loraregistry.registry import (
    AmbiguousEntry,
    EntryNotFound,
    Origin,
    Registry,
    RegistryCorrupt,
    RegistryNotWritable,
    rebuild,
)
from loraregistry.schema import AdapterMetadata, to_header_value
from loraregistry.verify import verify

from .adapters import lora_tensors, write_adapter


def make_adapter(folder: Path, name: str, *, seed: int = 0, **record) -> Path:
    meta = AdapterMetadata(name=name, base={"architecture": "sd1"}, **record)
    return write_adapter(folder / f"{name.replace(' ', '_')}.safetensors", lora_tensors("sd1", seed=seed),
                         {"lorareg": to_header_value(meta)})


@pytest.fixture
def reg(tmp_path):
    with Registry.open(tmp_path / "reg") as registry:
        yield registry


def test_add_show_and_content_addressed_store(reg, tmp_path):
    path = make_adapter(tmp_path, "Pixel Cat", trigger_words=["pxlcat"], tags=["cat", "pixel-art"])
    entry = reg.add(path, report=verify(path))
    assert Path(entry.path).read_bytes() == path.read_bytes()
    assert Path(entry.path).parent.name == entry.sha256[:2]
    assert entry.architecture == "sd1" and entry.format == "kohya" and entry.rank == 2
    assert entry.verdict is not None and entry.verdict.ok
    assert entry.origins == (Origin.local(str(path.resolve())),)
    assert reg.show(entry.sha256[:6]) == entry
    assert reg.show("pixel cat").sha256 == entry.sha256


def test_adding_same_bytes_twice_keeps_one_entry_and_both_origins(reg, tmp_path):
    path = make_adapter(tmp_path, "Twice")
    reg.add(path)
    hub = Origin.hub(endpoint="http://127.0.0.1:1", repo="a/b", revision="0" * 40, file="Twice.safetensors")
    entry = reg.add(path, origin=hub)
    assert len(reg.list()) == 1
    assert {o.kind for o in entry.origins} == {"file", "hub"}


def test_search_by_text_trigger_tag_architecture_and_rating(reg, tmp_path):
    cat = reg.add(make_adapter(tmp_path, "Pixel Cat", seed=1, trigger_words=["pxlcat"], tags=["Cat"],
                               description="Cats in pixel art"))
    dog = reg.add(make_adapter(tmp_path, "Oil Dog", seed=2, trigger_words=["oildog painting"], tags=["dog"],
                               content_rating="mature"))
    ids = lambda entries: [e.sha256 for e in entries]  # noqa: E731
    assert ids(reg.search("pix")) == [cat.sha256]  # prefix match on the name
    assert ids(reg.search("art")) == [cat.sha256]  # description
    assert ids(reg.search(trigger="pxlcat")) == [cat.sha256]
    assert ids(reg.search(trigger="oildog painting")) == [dog.sha256]  # a trigger phrase
    assert ids(reg.search(trigger="painting oildog")) == []  # phrases keep their order
    assert ids(reg.search(tag="cat")) == [cat.sha256]  # exact, case-insensitive
    assert ids(reg.search(rating="mature")) == [dog.sha256]
    assert len(reg.search(architecture="SD 1.5")) == 2  # aliases resolve
    assert reg.search(architecture="sdxl") == []
    assert reg.search('"unbalanced AND (') == []  # FTS syntax in user text is defused, not an error


def test_show_errors(reg, tmp_path):
    (tmp_path / "a").mkdir()
    reg.add(make_adapter(tmp_path / "a", "Twin", seed=1))
    reg.add(make_adapter(tmp_path, "Twin", seed=2))
    with pytest.raises(EntryNotFound, match="no registry entry"):
        reg.show("ffffffffff")
    with pytest.raises(AmbiguousEntry, match="several entries"):
        reg.show("twin")


def test_remove_deletes_entry_and_file(reg, tmp_path):
    entry = reg.add(make_adapter(tmp_path, "Gone"))
    reg.remove(entry.id)
    assert reg.list() == [] and not Path(entry.path).exists()
    assert reg.search("gone") == []
    with pytest.raises(EntryNotFound):
        reg.show(entry.id)


def test_export_is_json_lines_of_entries(reg, tmp_path):
    for i in range(3):
        reg.add(make_adapter(tmp_path, f"Export {i}", seed=i))
    lines = [json.loads(line) for line in _export(reg).splitlines()]
    assert [d["name"] for d in lines] == ["Export 0", "Export 1", "Export 2"]
    assert all(d["schema_version"] == "1" and len(d["sha256"]) == 64 for d in lines)


def _export(reg) -> str:
    import io

    out = io.StringIO()
    reg.export_jsonl(out)
    return out.getvalue()


def test_files_that_are_not_adapters_are_refused_and_nothing_is_stored(reg, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InvalidSafetensorsError):
        reg.add(junk)
    other = write_adapter(tmp_path / "other.safetensors", {"foo.bar": np.zeros(4, np.float16)})
    with pytest.raises(UnknownAdapterFormat):
        reg.add(other)
    assert reg.list() == [] and not list((reg.root / "store").rglob("*.safetensors"))


# --- concurrency ----------------------------------------------------------------------------------


def _add_all(args: tuple[str, list[str]]) -> list[str]:
    root, paths = args
    with Registry.open(root) as registry:
        return [registry.add(p).sha256 for p in paths]


def test_eight_processes_adding_at_once_lose_nothing(tmp_path):
    files = [make_adapter(tmp_path, f"Proc {i}", seed=i) for i in range(24)]
    shared = make_adapter(tmp_path, "Shared", seed=99)
    root = str(tmp_path / "reg")
    batches = [(root, [str(p) for p in files[i::8]] + [str(shared)]) for i in range(8)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(8) as pool:
        added = pool.map(_add_all, batches)
    with Registry.open(root) as registry:
        entries = registry.list()
        assert len(entries) == 25
        assert {e.sha256 for e in entries} == {h for batch in added for h in batch}
        shared_entry = registry.show("shared")
        assert len(shared_entry.origins) == 1  # the same file from 8 processes: one entry, one origin
        for e in entries:
            assert Path(e.path).stat().st_size == e.size
        assert len(registry.search("proc")) == 24
    assert not list((tmp_path / "reg" / "store").rglob("*.tmp"))


# --- corruption and permissions -------------------------------------------------------------------------


def test_corrupt_database_is_detected_and_rebuild_recovers_everything(tmp_path):
    root = tmp_path / "reg"
    path = make_adapter(tmp_path, "Survivor", trigger_words=["srv"])
    hub = Origin.hub(endpoint="http://127.0.0.1:1", repo="a/b", revision="1" * 40, file="s.safetensors")
    with Registry.open(root) as registry:
        before = registry.add(path, origin=hub, report=verify(path))
    (root / "registry.db").write_bytes(b"\x00garbage" * 512)
    for side in ("registry.db-wal", "registry.db-shm"):
        (root / side).unlink(missing_ok=True)
    with pytest.raises(RegistryCorrupt, match="lorareg registry rebuild"):
        Registry.open(root)
    result = rebuild(root)
    assert result.indexed == 1 and result.skipped == [] and Path(result.moved_aside).exists()
    with Registry.open(root) as registry:
        after = registry.show("survivor")
        assert after.sha256 == before.sha256
        assert after.origins == before.origins and after.verdict == before.verdict  # from the journal
        assert registry.search(trigger="srv")[0].sha256 == before.sha256


def test_malformed_database_pages_are_detected(tmp_path):
    root = tmp_path / "reg"
    with Registry.open(root) as registry:
        for i in range(3):
            registry.add(make_adapter(tmp_path, f"Page {i}", seed=i))
    db = root / "registry.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page * 2: page * 3] = b"\xff" * page  # smash a page in the middle, keep the file header
    db.write_bytes(bytes(data))
    with pytest.raises(RegistryCorrupt):
        with Registry.open(root) as registry:
            registry.list()
            registry.search("page")


def test_damaged_blob_is_reported_by_rebuild(tmp_path):
    root = tmp_path / "reg"
    with Registry.open(root) as registry:
        entry = registry.add(make_adapter(tmp_path, "Damaged"))
    blob = Path(entry.path)
    blob.chmod(0o644)  # the store's copies are read-only
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
    result = rebuild(root)
    assert result.indexed == 0 and "differs from its name" in result.skipped[0][1]


def test_registry_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RegistryNotWritable, match="LORAREG_HOME") as info:
        Registry.open(blocker / "reg")
    assert isinstance(info.value, LoraregError) and info.value.exit_code == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_registry_folder(tmp_path):
    root = tmp_path / "reg"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(RegistryNotWritable):
            Registry.open(root)
    finally:
        root.chmod(0o700)


def test_default_root_follows_lorareg_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "home"))
    with Registry.open() as registry:
        assert registry.root == tmp_path / "home"
    assert (tmp_path / "home" / "registry.db").exists()
