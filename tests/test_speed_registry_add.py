"""``Registry.add_many`` (what ``lorareg registry add`` runs): the same index, store and journals as one ``add`` per
file, in worker processes or not; a crash before the commit leaves no row naming a blob that is not durable; the
first bad file stops the batch as it stopped the loop of adds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from loraregistry.atomic_write import TEMP_MARK
from loraregistry.cli import main
from loraregistry.errors import InvalidSafetensorsError
from loraregistry.registry import Origin, Registry
from loraregistry.registry.entry import Verdict
from loraregistry.registry import add as add_module
from loraregistry.registry import core as core_module
from loraregistry.registry import store as store_module

from .test_registry import make_adapter

# Enough files for the worker processes (add.PARALLEL_FROM), a duplicate of one file's bytes under another name,
# and one path given twice.
FILES = max(add_module.PARALLEL_FROM, 16) + 2


def make_batch(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = [make_adapter(folder, f"Batch {i:02d}", seed=i % 5, trigger_words=[f"trig{i}"], tags=["t"])
             for i in range(FILES)]
    twin = folder / "twin.safetensors"
    shutil.copyfile(paths[3], twin)
    return [*paths[:5], twin, paths[2], *paths[5:]]


def timeless(value):
    """An entry's dict, a journal event or a row without the times, which differ between two adds."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k not in ("added_at", "blob_mtime_ns")}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def as_data(entry, root: Path) -> dict:
    """An entry's dict without times, its stored file's path relative to the registry."""
    data = timeless(entry.to_dict())
    data["path"] = os.path.relpath(data["path"], root)
    return data


def index_rows(root: Path) -> dict[str, list]:
    conn = sqlite3.connect(root / "registry.db")
    conn.row_factory = sqlite3.Row
    try:
        return {table: sorted((timeless(dict(row)) for row in conn.execute(f"SELECT * FROM {table}")),
                              key=lambda r: json.dumps(r, sort_keys=True))
                for table in ("entries", "origins", "entries_fts", "locations")}
    finally:
        conn.close()


def store_files(root: Path) -> dict[str, object]:
    """Every file under the store: blobs by bytes and mode, journals by their events (times left out)."""
    found: dict[str, object] = {}
    for path in sorted((root / "store").rglob("*")):
        if path.is_file():
            name = str(path.relative_to(root))
            if path.suffix == ".jsonl":
                found[name] = [timeless(json.loads(line)) for line in path.read_text().splitlines()]
            else:
                found[name] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return found


@pytest.mark.parametrize("jobs", [1, 2], ids=["in-process", "worker-processes"])
def test_a_batch_add_gives_what_one_add_per_file_gave(tmp_path, jobs):
    paths = make_batch(tmp_path / "files")
    origins = [Origin.hub(endpoint="https://hf.co", repo="org/repo", revision="main", file=p.name) if i % 4 == 1
               else None for i, p in enumerate(paths)]
    reports = [None] * len(paths)
    with Registry.open(tmp_path / "one-by-one") as reg:
        singly = [reg.add(p, origin=o, report=r) for p, o, r in zip(paths, origins, reports)]
    with Registry.open(tmp_path / "batch") as reg:
        batch = reg.add_many(paths, origins=origins, reports=reports, jobs=jobs)
    assert [as_data(e, tmp_path / "batch") for e in batch] == [as_data(e, tmp_path / "one-by-one") for e in singly]
    assert index_rows(tmp_path / "batch") == index_rows(tmp_path / "one-by-one")
    assert store_files(tmp_path / "batch") == store_files(tmp_path / "one-by-one")
    assert len({e.sha256 for e in batch}) == FILES  # the twin and the repeated path added no entry
    assert len(batch[5].origins) == 2  # the twin's bytes came from two paths


def test_verify_with_runs_per_file_in_order_and_records_each_verdict(tmp_path):
    from loraregistry.verify import verify

    paths = make_batch(tmp_path / "files")
    seen: list[Path] = []

    def verify_with(path: Path):
        seen.append(path)
        return verify(path)

    with Registry.open(tmp_path / "reg") as reg:
        entries = reg.add_many(paths, verify_with=verify_with, jobs=2)
    assert seen == paths
    assert [e.verdict for e in entries] == [Verdict.from_report(verify(p)) for p in paths]


def bad_file(folder: Path) -> Path:
    junk = folder / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    return junk


def temp_files(root: Path) -> list[Path]:
    return [p for p in (root / "store").rglob("*") if p.is_file() and TEMP_MARK in p.name]


@pytest.mark.parametrize("jobs", [1, 2], ids=["in-process", "worker-processes"])
def test_a_bad_file_stops_the_batch_where_the_loop_of_adds_stopped(tmp_path, jobs):
    good = make_batch(tmp_path / "files")
    paths = [*good[:8], bad_file(tmp_path), *good[8:]]
    with Registry.open(tmp_path / "one-by-one") as reg:
        with pytest.raises(InvalidSafetensorsError) as one:
            for p in paths:
                reg.add(p)
    with Registry.open(tmp_path / "batch") as reg:
        with pytest.raises(InvalidSafetensorsError) as batch:
            reg.add_many(paths, jobs=jobs)
    assert str(batch.value) == str(one.value)
    assert index_rows(tmp_path / "batch") == index_rows(tmp_path / "one-by-one")
    assert not temp_files(tmp_path / "batch")  # the copies made ahead of the failure are gone


def test_the_cli_adds_in_order_and_stops_at_the_first_bad_file(tmp_path, capsys):
    good = make_batch(tmp_path / "files")
    code = main(["registry", "add", "--no-verify", str(good[0]), str(bad_file(tmp_path)), str(good[1])])
    assert code == 2
    assert "junk.safetensors" in capsys.readouterr().err
    with Registry.open() as reg:
        assert [e.file_name for e in reg.list()] == [good[0].name]


# --- crash safety: no row may name a blob whose bytes and name are not durable ---------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads fd targets from /proc/self/fd")
@pytest.mark.parametrize("jobs", [1, 2], ids=["in-process", "worker-processes"])
def test_every_blob_and_its_name_are_fsynced_before_the_commit_that_indexes_it(tmp_path, monkeypatch, jobs):
    """In this process (the workers' own fsyncs would not be seen here: they leave them to this one)."""
    paths = make_batch(tmp_path / "files")
    events: list[tuple[str, str]] = []
    fsync = os.fsync

    def logged_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(src, dst) -> None:
        events.append(("rename", f"{src} -> {dst}"))
        os.rename(src, dst)

    transaction = add_module.transaction

    @contextlib.contextmanager
    def logged_transaction(conn):
        with transaction(conn) as inner:
            yield inner
        events.append(("commit", ",".join(row[0] for row in conn.execute("SELECT sha256 FROM entries"))))

    monkeypatch.setattr(store_module.os, "fsync", logged_fsync)
    monkeypatch.setattr(store_module.os, "replace", logged_replace)
    monkeypatch.setattr(add_module, "transaction", logged_transaction)
    monkeypatch.setattr("loraregistry.atomic_write.os.fsync", logged_fsync)
    with Registry.open(tmp_path / "reg") as reg:
        entries = reg.add_many(paths, jobs=jobs)
    for entry in entries:
        blob = entry.path
        rename = next(i for i, (kind, what) in enumerate(events) if kind == "rename" and what.endswith(blob))
        temp = events[rename][1].split(" -> ")[0]
        commit = next(i for i, (kind, what) in enumerate(events) if kind == "commit" and entry.sha256 in what)
        data_synced = [i for i, (kind, what) in enumerate(events) if kind == "fsync" and what == temp]
        name_synced = [i for i, (kind, what) in enumerate(events)
                       if kind == "fsync" and what == os.path.dirname(blob) and rename < i < commit]
        assert data_synced and data_synced[0] < rename, "the blob's bytes must be durable before its name appears"
        assert name_synced, "the blob's name must be durable before a row names it"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads fd targets from /proc/self/fd")
@pytest.mark.parametrize("fail_at", ["blob fsync", "commit"])
def test_a_crash_before_the_commit_leaves_no_row_naming_a_missing_or_partial_blob(tmp_path, monkeypatch, fail_at):
    """A later chunk fails (a blob's fsync, or an insert: the transaction rolls back): the chunks before it stay
    indexed, every row names an intact blob, no temp file is left."""
    paths = make_batch(tmp_path / "files")
    fsync, insert = os.fsync, core_module._insert
    count = {"blob fsync": 0, "commit": 0}

    def failing_fsync(fd: int) -> None:
        if TEMP_MARK in os.readlink(f"/proc/self/fd/{fd}"):
            count["blob fsync"] += 1
            if count["blob fsync"] == 14:
                raise OSError(5, "Input/output error")
        fsync(fd)

    def failing_insert(*args, **kwargs) -> None:
        count["commit"] += 1
        if count["commit"] == 14:
            raise OSError(5, "Input/output error")
        insert(*args, **kwargs)

    monkeypatch.setattr(add_module, "CHUNK_FILES", 10)
    if fail_at == "blob fsync":
        monkeypatch.setattr(store_module.os, "fsync", failing_fsync)
    else:
        monkeypatch.setattr(core_module, "_insert", failing_insert)
    with Registry.open(tmp_path / "reg") as reg:
        with pytest.raises(OSError, match="Input/output error"):
            reg.add_many(paths, jobs=1)
    monkeypatch.undo()
    with Registry.open(tmp_path / "reg") as reg:
        indexed = reg.list()
        checks = reg.check()
    assert 0 < len(indexed) < 14 and all(e.blob == "ok" for e in indexed)  # the chunks before the failure
    assert all(c.ok for c in checks)  # every named blob holds the bytes its name says
    assert not temp_files(tmp_path / "reg")
