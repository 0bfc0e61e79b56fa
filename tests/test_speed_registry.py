"""Registry work that scales with the library: ``add`` reads a file's bytes once, ``search`` queries per search,
not per entry. (Times are for benchmarks/registry.py; these tests check the work and the results.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraregistry import hashes as hashes_module
from loraregistry.hashes import hash_file
from loraregistry.registry import Registry
from loraregistry.registry.entry import Origin

from .test_registry import make_adapter


def test_add_hashes_each_byte_once_and_records_the_same_hashes(tmp_path, monkeypatch):
    path = make_adapter(tmp_path, "Once", trigger_words=["once"])
    expected = hash_file(path).as_dict()
    fed: list[int] = []
    update = hashes_module.StreamHasher.update

    def counting(self, chunk) -> None:
        fed.append(len(chunk))
        update(self, chunk)

    def second_read(*args, **kwargs):
        raise AssertionError("add read the file a second time to hash it")

    monkeypatch.setattr(hashes_module.StreamHasher, "update", counting)
    monkeypatch.setattr(hashes_module, "hash_file", second_read)
    with Registry.open(tmp_path / "reg") as reg:
        entry = reg.add(path)
    assert sum(fed) == path.stat().st_size  # every byte hashed, and once
    assert entry.hashes == expected and entry.sha256 == expected["sha256"]
    assert Path(entry.path).read_bytes() == path.read_bytes()


def test_readding_the_same_bytes_keeps_the_blob_and_adds_the_origin(tmp_path):
    path = make_adapter(tmp_path, "Twice")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    with Registry.open(tmp_path / "reg") as reg:
        first = reg.add(path)
        again = reg.add(copy)
        assert again.sha256 == first.sha256 and again.path == first.path
        assert {o.path for o in again.origins} == {str(path.resolve()), str(copy.resolve())}
        assert len(reg.list()) == 1


def _library(tmp_path: Path, count: int) -> Registry:
    reg = Registry.open(tmp_path / "reg")
    folder = tmp_path / "in-place"
    folder.mkdir()
    for i in range(count):
        path = make_adapter(tmp_path, f"Adapter {i}", seed=i, trigger_words=[f"trig{i}"], tags=["even" if i % 2
                                                                                             else "odd"])
        reg.add(path, origin=Origin.local(f"/elsewhere/{i}.safetensors") if i % 3 == 0 else None)
        if i % 2:
            reg.add(path)  # a second origin
        if i % 4 == 0:
            (folder / f"a{i}.safetensors").write_bytes(path.read_bytes())
    reg.scan([folder], verify_files=False)
    return reg


def test_a_search_builds_each_entry_as_show_does(tmp_path):
    """Origins and locations come in one query per search, grouped by entry: nothing leaks between entries."""
    with _library(tmp_path, 9) as reg:
        entries = reg.search()
        assert len(entries) == 9
        assert entries == [reg.show(entry.sha256) for entry in entries]
        assert any(len(e.origins) > 1 for e in entries) and any(e.locations for e in entries)
        assert [e.name for e in reg.search(trigger="trig4")] == ["Adapter 4"]


@pytest.mark.parametrize("count", [3, 30])
def test_a_search_makes_a_fixed_number_of_queries(tmp_path, count):
    with _library(tmp_path, count) as reg:
        statements: list[str] = []
        reg._conn.set_trace_callback(statements.append)
        assert len(reg.search()) == count
        reg._conn.set_trace_callback(None)
    assert len(statements) == 3  # the entries, their origins, their locations
