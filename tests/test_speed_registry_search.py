"""A search's cheap paths give what the plain ones gave: entries built without the frozen ``__init__`` equal those it
builds, a listing's order read from an index equals the sorted order (ties included, in an older index too), and the
hash cache a every operation consults imports the registry's path logic only. (Times: benchmarks/registry.py.)"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sqlite3
import subprocess
import sys

import pytest

import loraregistry.registry as registry_package
from loraregistry.registry import Registry
from loraregistry.registry.db import connect
from loraregistry.registry.entry import Entry, Origin, Verdict

from .test_registry import make_adapter
from .test_speed_registry import _library

ENTRY_FIELDS = {field.name for field in dataclasses.fields(Entry)}
ORDER_INDEXES = ("entries_added_at", "entries_architecture_added_at")


def _values() -> dict:
    return dict(sha256="ab" * 32, path="/store/ab", file_name="a.safetensors", size=7, added_at="2026-01-01",
                name="A", description=None, architecture="sd1", format="kohya", network_type="lora", rank=4,
                content_rating="general", trigger_words=("x",), tags=("t",), tensor_sha256=None,
                verdict=Verdict(ok=True), metadata={"name": "A"}, origins=(Origin.local("/a"),), blob="ok",
                sub_base=None, hashes={"sha256": "ab" * 32}, loaders={"diffusers": "loads"}, findings={},
                imported={}, locations=())


def test_from_index_builds_the_entry_init_builds():
    values = _values()
    assert set(values) == ENTRY_FIELDS
    fast, plain = Entry.from_index(**values), Entry(**values)
    assert fast == plain and hash(Origin.local("/a")) == hash(fast.origins[0])
    assert vars(fast) == vars(plain) and repr(fast) == repr(plain) and fast.to_dict() == plain.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.name = "B"  # type: ignore[misc]


def test_every_entry_read_from_the_index_has_every_field(tmp_path):
    """``from_index`` trusts its caller to give every field: stored and in-place entries, searched and shown."""
    with _library(tmp_path, 6) as reg:
        only_here = tmp_path / "only-here"
        only_here.mkdir()
        make_adapter(only_here, "Scanned only", seed=99)
        reg.scan([only_here], verify_files=False)
        entries = reg.search()
        assert {e.blob for e in entries} >= {"ok", "in_place"}
        for entry in [*entries, *(reg.show(e.sha256) for e in entries), *reg.search("adapter")]:
            assert set(vars(entry)) == ENTRY_FIELDS


def _traced_search(reg: Registry, **filters) -> tuple[list[Entry], str]:
    statements: list[str] = []
    reg._conn.set_trace_callback(statements.append)
    try:
        entries = reg.search(**filters)
    finally:
        reg._conn.set_trace_callback(None)
    return entries, statements[0]  # the entries' query; origins and locations follow


@pytest.mark.parametrize("filters", [{}, {"architecture": "sd1"}, {"architecture": "SD 1.5", "rating": "general"}])
def test_a_listing_reads_its_order_from_an_index(tmp_path, filters):
    with _library(tmp_path, 4) as reg:
        entries, statement = _traced_search(reg, **filters)
        assert len(entries) == 4
        plan = " | ".join(row[3] for row in reg._conn.execute("EXPLAIN QUERY PLAN " + statement))
    assert "TEMP B-TREE" not in plan and "_added_at" in plan, plan


def test_entries_added_at_the_same_instant_list_by_sha256(tmp_path):
    with _library(tmp_path, 7) as reg:
        reg._conn.execute("UPDATE entries SET added_at = '2026-01-01T00:00:00.000000+00:00'")
        shas = [e.sha256 for e in reg.search()]
        assert shas == sorted(shas)
        assert [e.sha256 for e in reg.search(architecture="sd1")] == shas


def test_an_older_index_gains_the_order_indexes_and_lists_the_same(tmp_path):
    with _library(tmp_path, 5) as reg:
        before = reg.search()
        by_architecture = reg.search(architecture="sd1")
    database = tmp_path / "reg" / "registry.db"
    conn = sqlite3.connect(database)
    for index in ORDER_INDEXES:
        conn.execute(f"DROP INDEX {index}")
    conn.commit()
    conn.close()
    connect(database).close()
    conn = sqlite3.connect(database)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert names >= set(ORDER_INDEXES)
    with Registry.open(tmp_path / "reg") as reg:
        assert reg.search() == before and reg.search(architecture="sd1") == by_architecture


def test_the_hash_cache_imports_the_path_logic_not_the_registry():
    code = ("import json, sys; import loraregistry.registry.hash_cache; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('loraregistry'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    assert loaded == ["loraregistry", "loraregistry.registry", "loraregistry.registry.hash_cache",
                      "loraregistry.registry.paths"]


@pytest.mark.parametrize("name", registry_package.__all__)
def test_the_package_names_load_on_first_use(name):
    module = importlib.import_module(f"loraregistry.registry.{registry_package._EXPORTS[name]}")
    assert getattr(registry_package, name) is getattr(module, name)
    assert name in dir(registry_package)


def test_the_package_refuses_an_unknown_name_and_still_imports_its_submodules():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        registry_package.nothing  # noqa: B018
    from loraregistry.registry import add, scan  # submodules, not exported names

    assert add.__name__ == "loraregistry.registry.add" and scan.__name__ == "loraregistry.registry.scan"
