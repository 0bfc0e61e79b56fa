"""Operations take their inputs' provenance hashes from the registry's hash cache (``registry.hash_cache``).

Counted, not timed: every call of ``hashes.content_hashes`` (the read pass that hashes an input). Each recorded
parent's sha256 and AutoV3 are checked against hashlib over the file's own bytes. ``LORAREG_HOME`` is a fresh
folder per test (conftest): tests that want a registry create one there.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from loraregistry import hashes
from loraregistry.adapter import AdapterFile
from loraregistry.ops import io as ops_io
from loraregistry.ops.merge import MergeInput, merge
from loraregistry.ops.resize import ResizeSettings, resize
from loraregistry.registry import Registry, default_root, hash_cache
from loraregistry.safetensors_io import read_header
from tests.adapters import independent_hashes, sd1_adapter


def _recorded_parents(path: Path) -> list[tuple[str, str]]:
    record = json.loads(read_header(path).metadata["lorareg"])
    return [(p["sha256"], p["tensor_sha256"]) for p in record["provenance"]["parents"]]


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The paths ``hashes.content_hashes`` reads, in order (it still hashes them)."""
    paths: list[str] = []
    real = hashes.content_hashes

    def counting(path, data_offset):
        paths.append(os.fspath(path))
        return real(path, data_offset)

    monkeypatch.setattr(hashes, "content_hashes", counting)
    return paths


def _registry() -> Path:
    Registry.open().close()
    return default_root() / "registry.db"


def _rows(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT dev, inode, size, mtime_ns, sha256, hashes FROM file_hashes").fetchall()


def _rewrite_same_size(path: Path) -> None:
    """New tensor bytes, same size, in place (same inode): the mtime moves (set explicitly, so a coarse clock
    cannot hide the write)."""
    old = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    with path.open("r+b") as f:
        f.write(raw)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000))


def _replace_keeping_mtime(path: Path) -> None:
    """Another file of the same size renamed over ``path``, given the old mtime back: only the inode differs."""
    old = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    other = path.with_name(".replacement")
    other.write_bytes(raw)
    os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(other, path)


def _rewrite_as_other_adapter(path: Path) -> None:
    old = path.stat()
    other = sd1_adapter(path.parent / "other", "b.safetensors", rank=8, seed=3).read_bytes()
    assert len(other) != old.st_size
    with path.open("r+b") as f:  # same inode
        f.write(other)
        f.truncate()
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


# --- inputs a registry scan has seen --------------------------------------------------------------------------


def test_scanned_inputs_are_not_read_for_hashing(tmp_path, hashed):
    a = sd1_adapter(tmp_path / "loras", "a.safetensors", rank=4, seed=1)
    b = sd1_adapter(tmp_path / "loras", "b.safetensors", rank=2, seed=2)
    with Registry.open() as reg:
        assert reg.scan([tmp_path / "loras"], verify_files=False).hashed == 2
    out = tmp_path / "m.safetensors"
    merge([MergeInput(a, 0.7), MergeInput(b, 0.4)], out, show_progress=False)
    assert hashed == []
    assert _recorded_parents(out) == [independent_hashes(a), independent_hashes(b)]


def test_an_operations_output_is_not_hashed_again_by_the_next_operation(tmp_path, hashed):
    database = _registry()
    a = sd1_adapter(tmp_path, "a.safetensors", rank=4, seed=1)
    b = sd1_adapter(tmp_path, "b.safetensors", rank=2, seed=2)
    merged = tmp_path / "m.safetensors"
    written = merge([MergeInput(a), MergeInput(b)], merged, show_progress=False).output
    assert hashed == [str(a), str(b)]  # not cached yet: read once each, and remembered
    assert (written.sha256, written.tensor_sha256) == independent_hashes(merged)
    resized = tmp_path / "r.safetensors"
    resize(merged, resized, ResizeSettings(rank=2), show_progress=False)
    merge([MergeInput(a), MergeInput(b)], tmp_path / "again.safetensors", show_progress=False)
    assert hashed == [str(a), str(b)]  # the merge's output and the inputs came from the cache
    assert _recorded_parents(resized) == [independent_hashes(merged)]
    assert len(_rows(database)) == 5  # a, b, the merge, the resize, the second merge


def test_a_remembered_row_keeps_what_a_scan_recorded(tmp_path):
    loras = tmp_path / "loras"
    a = sd1_adapter(loras, "a.safetensors")
    with Registry.open() as reg:
        reg.scan([loras], verify_files=False)
    database = default_root() / "registry.db"
    [before] = _rows(database)
    assert hash_cache.remember(a, *independent_hashes(a))
    assert _rows(database) == [before]  # nothing new to add: the scan's CRC32 and AutoV1 stay
    assert json.loads(before[5])["crc32"]


# --- files that changed ---------------------------------------------------------------------------------------

CHANGES = {
    "rewritten in place, same size, new mtime": _rewrite_same_size,
    "replaced by rename, same size, old mtime set back (new inode)": _replace_keeping_mtime,
    "rewritten in place as another adapter, old mtime set back (new size)": _rewrite_as_other_adapter,
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_file_changed_after_caching_is_hashed_again(change, tmp_path, hashed):
    database = _registry()
    a = sd1_adapter(tmp_path, "a.safetensors")
    first = ops_io.parent_record(AdapterFile.open(a))
    assert hashed == [str(a)] and len(_rows(database)) == 1
    assert hash_cache.lookup(a) == (first.sha256, first.tensor_sha256)
    change(a)
    assert hash_cache.lookup(a) is None
    second = ops_io.parent_record(AdapterFile.open(a))
    assert hashed == [str(a), str(a)]
    assert (second.sha256, second.tensor_sha256) == independent_hashes(a) != (first.sha256, first.tensor_sha256)
    assert hash_cache.lookup(a) == independent_hashes(a)  # the new key remembered beside the old one


def test_a_file_that_changes_during_a_lookup_is_not_answered(tmp_path, monkeypatch):
    _registry()
    a = sd1_adapter(tmp_path, "a.safetensors")
    assert hash_cache.remember(a, *independent_hashes(a))
    real = hash_cache.file_key
    calls = []

    def changing_after_first_stat(path):
        key = real(path)
        if not calls:
            _rewrite_same_size(Path(path))
        calls.append(key)
        return key

    monkeypatch.setattr(hash_cache, "file_key", changing_after_first_stat)
    assert hash_cache.lookup(a) is None
    assert len(calls) == 2


def test_hashes_of_a_file_that_changed_while_read_are_not_remembered(tmp_path):
    database = _registry()
    a = sd1_adapter(tmp_path, "a.safetensors")
    key = hash_cache.file_key(a)
    sha256, autov3 = independent_hashes(a)
    _rewrite_same_size(a)
    assert not hash_cache.remember(a, sha256, autov3, key=key)
    assert _rows(database) == []


# --- no registry, a damaged one, a busy one --------------------------------------------------------------------


def test_without_a_registry_nothing_is_created_and_no_database_opened(tmp_path, hashed, monkeypatch):
    def no_connect(*args, **kwargs):
        raise AssertionError("sqlite3.connect without a registry")

    monkeypatch.setattr(sqlite3, "connect", no_connect)
    a = sd1_adapter(tmp_path, "a.safetensors")
    out = tmp_path / "r.safetensors"
    resize(a, out, ResizeSettings(rank=2), show_progress=False)
    resize(out, tmp_path / "rr.safetensors", ResizeSettings(rank=1), show_progress=False)
    assert hashed == [str(a), str(out)]
    assert not default_root().exists()
    assert hash_cache.lookup(a) is None and not hash_cache.remember(a, *independent_hashes(a))
    assert not default_root().exists()


def _garbage(database: Path, path: Path) -> None:
    database.write_bytes(b"this is not a database" * 100)


def _old_without_table(database: Path, path: Path) -> None:
    with sqlite3.connect(database) as conn:
        conn.execute("DROP TABLE file_hashes")


def _row_without_autov3(database: Path, path: Path) -> None:
    """A row of the right key whose JSON lacks AutoV3 (what an older scan of a file might have left)."""
    sha256, _ = independent_hashes(path)
    with sqlite3.connect(database) as conn:
        conn.execute("INSERT INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)",
                     (*hash_cache.file_key(path), sha256, json.dumps({"sha256": sha256, "crc32": "00000000"})))


def _row_disagreeing(database: Path, path: Path) -> None:
    """A row whose JSON names another sha256 than its own column."""
    sha256, autov3 = independent_hashes(path)
    with sqlite3.connect(database) as conn:
        conn.execute("INSERT INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)",
                     (*hash_cache.file_key(path), sha256, json.dumps({"sha256": "0" * 64, "autov3": autov3})))


DAMAGE = {"not a database": _garbage, "a registry from before the hash cache": _old_without_table,
          "a row without AutoV3": _row_without_autov3, "a row that disagrees with itself": _row_disagreeing}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cache_falls_back_to_hashing(damage, tmp_path, hashed):
    database = _registry()
    a = sd1_adapter(tmp_path, "a.safetensors")
    damage(database, a)
    assert hash_cache.lookup(a) is None
    out = tmp_path / "out" / "r.safetensors"
    out.parent.mkdir()
    resize(a, out, ResizeSettings(rank=2), show_progress=False)
    assert hashed == [str(a)]
    assert _recorded_parents(out) == [independent_hashes(a)]


def test_a_row_without_autov3_gains_it_and_keeps_its_other_hashes(tmp_path):
    database = _registry()
    a = sd1_adapter(tmp_path, "a.safetensors")
    _row_without_autov3(database, a)
    assert hash_cache.lookup(a) is None
    assert hash_cache.remember(a, *independent_hashes(a))
    [row] = _rows(database)
    assert json.loads(row[5]) == {"sha256": row[4], "autov2": row[4][:10], "autov3": independent_hashes(a)[1],
                                  "crc32": "00000000"}
    assert hash_cache.lookup(a) == independent_hashes(a)


def test_a_locked_registry_falls_back_to_hashing_without_waiting_long(tmp_path, hashed):
    database = _registry()
    a = sd1_adapter(tmp_path, "a.safetensors")
    assert hash_cache.remember(a, *independent_hashes(a))
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode = DELETE")  # WAL readers never wait: a rollback journal's lock blocks them
        holder.execute("BEGIN EXCLUSIVE")
        assert hash_cache.lookup(a) is None
        parent = ops_io.parent_record(AdapterFile.open(a))
        assert hashed == [str(a)]
        assert (parent.sha256, parent.tensor_sha256) == independent_hashes(a)
        assert not hash_cache.remember(a, parent.sha256, parent.tensor_sha256)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert hash_cache.lookup(a) == independent_hashes(a)  # the lock gone, the row is there again
