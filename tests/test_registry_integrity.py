"""Registry integrity (issue 13 item 11): the store keeps its own copy, list/show flag a missing or changed
stored file, `registry check` re-hashes, `export` refuses a damaged registry, `rebuild` reports what it drops."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from loraregistry import cli
from loraregistry.registry import BlobIntegrityError, Registry, RegistryError, rebuild
from loraregistry.registry import store as store_module

from .test_registry import make_adapter


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def home(tmp_path) -> Path:
    return Path(os.environ["LORAREG_HOME"])  # conftest points it at a fresh folder per test


def add(tmp_path: Path, name: str, seed: int = 0):
    with Registry.open() as reg:
        return reg.add(make_adapter(tmp_path, name, seed=seed))


def tamper_same_size(blob: Path) -> None:
    """Flip the last byte and put the mtime back: only a re-hash can tell."""
    st = blob.stat()
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))


def append_byte(blob: Path) -> None:
    os.chmod(blob, 0o644)
    with blob.open("ab") as f:
        f.write(b"\0")


# --- the store's own copy --------------------------------------------------------------------------


def test_store_holds_a_read_only_copy_that_edits_of_the_users_file_do_not_reach(tmp_path):
    path = make_adapter(tmp_path, "Mine")
    original = path.read_bytes()
    with Registry.open() as reg:
        entry = reg.add(path)
    blob = Path(entry.path)
    assert os.stat(blob).st_ino != os.stat(path).st_ino and os.stat(blob).st_nlink == 1
    assert os.stat(blob).st_mode & 0o777 == 0o444
    with path.open("r+b") as f:  # the user edits their file in place
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")
    assert blob.read_bytes() == original
    with Registry.open() as reg:
        assert reg.show(entry.id).blob == "ok"
        assert all(c.ok for c in reg.check())


def test_a_clone_that_does_not_hold_the_hashed_bytes_is_refused(tmp_path, monkeypatch):
    """The reflink path hashes what the store ended up with, like the copy path does."""
    def bad_clone(src_fd: int, dst_fd: int) -> bool:
        os.write(dst_fd, b"not the same bytes")
        return True

    monkeypatch.setattr(store_module, "_reflink", bad_clone)
    path = make_adapter(tmp_path, "Cloned")
    with Registry.open() as reg:
        with pytest.raises(RegistryError, match="changed while it was being added"):
            reg.add(path)
        assert reg.list() == []
    assert not [p for p in reg.store.root.rglob("*") if p.is_file() and p.suffix != ".jsonl"]


def test_readding_repairs_a_damaged_blob_and_unlinks_an_old_hard_linked_one(tmp_path):
    path = make_adapter(tmp_path, "Repair")
    with Registry.open() as reg:
        blob = Path(reg.add(path).path)
    tamper_same_size(blob)
    with Registry.open() as reg:
        reg.add(path)
        assert blob.read_bytes() == path.read_bytes()
        # a store made by an older lorareg hard-linked the user's file
        blob.unlink()
        os.link(path, blob)
        [finding] = reg.check()
        assert finding.status == "linked" and finding.ok and "add the file again" in finding.detail
        reg.add(path)
        assert os.stat(blob).st_nlink == 1 and [c.status for c in reg.check()] == ["ok"]


# --- list / show / check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, state", [
    (lambda blob: blob.unlink(), "missing"),
    (append_byte, "changed"),
])
def test_list_and_show_flag_a_missing_or_changed_blob(tmp_path, capsys, damage, state):
    entry = add(tmp_path, "Flagged")
    damage(Path(entry.path))
    with Registry.open() as reg:
        assert reg.show(entry.id).blob == state
    code, out, err = run(capsys, "registry", "list")
    assert code == 0 and f"STORED FILE {state.upper()}" in out and "ok" not in out.split()
    assert "lorareg registry check" in err
    code, out, _ = run(capsys, "registry", "show", entry.id)
    assert code == 0 and f"STORED FILE {state.upper()}" in out and state.upper() + ":" in out
    code, out, _ = run(capsys, "registry", "list", "--json")
    assert json.loads(out)[0]["blob"] == state


def test_check_rehashes_and_exits_1_on_a_change_the_cheap_check_cannot_see(tmp_path, capsys):
    good = add(tmp_path, "Good", seed=1)
    bad = add(tmp_path, "Bad", seed=2)
    code, _, err = run(capsys, "registry", "check")
    assert code == 0 and "checked 2 stored file(s): 0 problem(s)" in err
    tamper_same_size(Path(bad.path))
    with Registry.open() as reg:
        assert reg.show(bad.id).blob == "ok"  # same size, same mtime
    code, out, err = run(capsys, "registry", "check")
    assert code == 1 and "1 problem(s)" in err
    assert f"{bad.id}  Bad: changed: its bytes now hash to" in out and good.id not in out
    code, out, _ = run(capsys, "registry", "check", "--json")
    by_id = {c["sha256"]: c for c in json.loads(out)}
    assert by_id[bad.sha256]["status"] == "changed" and not by_id[bad.sha256]["ok"]
    assert by_id[good.sha256]["status"] == "ok"


def test_check_reports_a_missing_blob_and_notes_an_unindexed_one(tmp_path, capsys, home):
    gone = add(tmp_path, "Gone", seed=1)
    Path(gone.path).unlink()
    kept = add(tmp_path, "Kept", seed=2)
    with Registry.open() as reg:  # an entry whose index row was lost (a crash before the index write)
        reg._conn.execute("DELETE FROM entries WHERE sha256 = ?", (kept.sha256,))
    code, out, err = run(capsys, "registry", "check")
    assert code == 1 and "1 problem(s)" in err
    assert f"{gone.id}  Gone: missing" in out and "unindexed" in out and "registry rebuild" in out


def test_a_touched_but_intact_blob_is_flagged_until_check_confirms_it(tmp_path):
    entry = add(tmp_path, "Touched")
    os.utime(entry.path, (1, 1))
    with Registry.open() as reg:
        assert reg.show(entry.id).blob == "changed"
        assert [c.status for c in reg.check()] == ["ok"]
        assert reg.show(entry.id).blob == "ok"  # the record was refreshed


def test_entries_of_a_database_without_mtime_records_check_size_only(tmp_path, home):
    entry = add(tmp_path, "Old schema")
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("ALTER TABLE entries DROP COLUMN blob_mtime_ns")  # as written by the first release
    conn.commit()
    conn.close()
    with Registry.open() as reg:
        assert reg.show(entry.id).blob == "ok"
    append_byte(Path(entry.path))
    with Registry.open() as reg:
        assert reg.show(entry.id).blob == "changed"


# --- export ------------------------------------------------------------------------------------------


def test_export_refuses_while_a_blob_is_damaged_and_writes_nothing(tmp_path, capsys):
    entry = add(tmp_path, "Exported", seed=1)
    add(tmp_path, "Other", seed=2)
    out_file = tmp_path / "registry.jsonl"
    code, _, _ = run(capsys, "registry", "export", "-o", str(out_file))
    assert code == 0 and len(out_file.read_text().splitlines()) == 2
    out_file.unlink()
    append_byte(Path(entry.path))
    code, out, err = run(capsys, "registry", "export", "-o", str(out_file))
    assert code == 1 and not out_file.exists()
    assert err.count("\n") == 1 and entry.id in err and "stored file changed" in err and "registry check" in err
    code, out, err = run(capsys, "registry", "export")
    assert code == 1 and out == ""
    with Registry.open() as reg, pytest.raises(BlobIntegrityError):
        list(reg.export())


# --- rebuild ----------------------------------------------------------------------------------------


def test_rebuild_reports_an_entry_whose_blob_is_gone_and_exits_1(tmp_path, capsys):
    gone = add(tmp_path, "Vanished", seed=1)
    add(tmp_path, "Stays", seed=2)
    Path(gone.path).unlink()
    code, out, err = run(capsys, "registry", "rebuild")
    assert code == 1 and "indexed 1 adapters" in out
    assert f"dropped {gone.id} Vanished.safetensors: its stored file is missing" in err
    result = rebuild()
    assert not result.ok and [d[0] for d in result.dropped] == [gone.sha256]
    assert result.to_dict()["dropped"][0]["sha256"] == gone.sha256


def test_rebuild_finds_drops_in_the_old_index_when_the_journal_is_gone_too(tmp_path, home):
    gone = add(tmp_path, "No trace", seed=1)
    with Registry.open() as reg:
        reg.store.remove(gone.sha256)  # blob and journal
    result = rebuild()
    assert result.indexed == 0 and result.dropped == [(gone.sha256, "No trace",
                                                       "listed in the old index, but its stored file is missing")]


def test_rebuild_of_an_intact_registry_exits_0(tmp_path, capsys):
    add(tmp_path, "Fine")
    code, out, err = run(capsys, "registry", "rebuild", "--json")
    assert code == 0 and json.loads(out)["dropped"] == [] and json.loads(out)["indexed"] == 1
