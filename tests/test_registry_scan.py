"""`lorareg registry scan` (issue 16 item 1): folders indexed in place, the hash cache, moved / removed /
duplicate detection, verify and per-loader verdicts, and search by architecture, finer base and loader."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from loraregistry import cli
from loraregistry.registry import Registry
from loraregistry.schema import AdapterMetadata, to_header_value

from .adapters import lora_tensors, write_adapter


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def adapter(folder: Path, file_name: str, *, arch: str = "sd1", seed: int = 0, **record) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"lorareg": to_header_value(AdapterMetadata(base={"architecture": arch}, **record))} if record else None
    return write_adapter(folder / file_name, lora_tensors(arch, seed=seed), metadata)


@pytest.fixture
def reg(tmp_path):
    with Registry.open(tmp_path / "reg") as registry:
        yield registry


def refuse_reads(monkeypatch) -> None:
    """From here on, fail the test if the scan opens an adapter file (the cache must answer)."""
    from loraregistry import adapter as adapter_module

    def refuse(cls, path):
        raise AssertionError(f"the scan read {path}")

    monkeypatch.setattr(adapter_module.AdapterFile, "open", classmethod(refuse))


def test_scan_indexes_in_place_with_hashes_and_verdicts_and_copies_nothing(reg, tmp_path):
    lib = tmp_path / "loras"
    path = adapter(lib / "styles", "cat.safetensors", name="Pixel Cat", trigger_words=["pxlcat"])
    result = reg.scan([lib])
    assert result.new == [str(path.resolve())] and result.hashed == 1
    entry = reg.show("pixel cat")
    assert entry.in_place and entry.blob == "in_place" and entry.path == str(path.resolve())
    assert not any(reg.store.blobs())  # no copy in the store
    from loraregistry.hashes import hash_file

    assert entry.hashes == hash_file(path).as_dict()
    assert entry.verdict is not None and entry.verdict.ok and entry.architecture == "sd1"
    from loraregistry.verify.consumers import known_targets

    assert set(entry.loaders) == set(known_targets()) and "comfyui" in entry.loaders
    assert entry.loaders["comfyui"] == "loads" and entry.loaders["peft"] == "fails"
    assert entry.findings["loaders"]["comfyui"] == []
    assert [f["code"] for f in entry.findings["loaders"]["peft"]] == ["LRG601", "LRG602"]
    assert all(f["message"].startswith("peft: ") for f in entry.findings["loaders"]["peft"])


def test_rescan_of_unchanged_files_reads_nothing(reg, tmp_path, monkeypatch):
    lib = tmp_path / "loras"
    for i in range(5):
        adapter(lib, f"a{i}.safetensors", seed=i)
    assert reg.scan([lib]).hashed == 5
    refuse_reads(monkeypatch)
    second = reg.scan([lib])
    assert (second.hashed, second.cached, second.unchanged, second.new, second.changed) == (0, 0, 5, [], [])


def test_a_renamed_file_is_moved_and_its_hashes_come_from_the_cache(reg, tmp_path, monkeypatch):
    lib = tmp_path / "loras"
    old = adapter(lib, "old.safetensors", name="Mover")
    reg.scan([lib])
    (lib / "sub").mkdir()
    new = lib / "sub" / "new.safetensors"
    os.rename(old, new)
    refuse_reads(monkeypatch)
    result = reg.scan([lib])
    assert result.moved == [(str(old.resolve()), str(new.resolve()))]
    assert (result.hashed, result.cached, result.new, result.removed) == (0, 1, [str(new.resolve())], [])
    entry = reg.show("mover")
    assert entry.path == str(new.resolve())
    assert [(loc["path"], loc["state"], loc["moved_to"]) for loc in entry.locations] == [
        (str(new.resolve()), "present", None), (str(old.resolve()), "moved", str(new.resolve()))]


def test_a_file_moved_between_two_roots_scanned_together_is_moved_not_removed(reg, tmp_path):
    a, b = tmp_path / "comfy", tmp_path / "a1111"
    b.mkdir()
    old = adapter(a, "x.safetensors", name="Hopper")
    reg.scan([a, b])
    shutil.move(old, b / "x.safetensors")
    result = reg.scan([a, b])
    assert result.moved == [(str(old.resolve()), str((b / "x.safetensors").resolve()))] and result.removed == []


def test_a_deleted_file_is_marked_removed_and_its_entry_gone(reg, tmp_path, capsys):
    lib = tmp_path / "loras"
    path = adapter(lib, "bye.safetensors", name="Bye")
    reg.scan([lib])
    path.unlink()
    result = reg.scan([lib])
    assert result.removed == [str(path.resolve())] and result.moved == []
    entry = reg.show("bye")
    assert entry.blob == "gone" and entry.locations[0]["state"] == "removed"
    assert reg.scan([lib]).removed == []  # reported once, when it happened


def test_a_changed_file_is_read_again(reg, tmp_path):
    lib = tmp_path / "loras"
    path = adapter(lib, "edit.safetensors", name="Before")
    reg.scan([lib])
    adapter(lib, "edit.safetensors", name="After", seed=3)
    os.utime(path, ns=(1, 10**18))  # a different mtime even on a coarse-clock filesystem
    result = reg.scan([lib])
    assert result.changed == [str(path.resolve())] and result.hashed == 1
    assert reg.show("after").path == str(path.resolve())
    assert reg.show("before").blob == "gone"


def test_duplicates_are_the_same_tensors_under_two_names_even_with_other_metadata(reg, tmp_path):
    lib = tmp_path / "loras"
    one = adapter(lib, "one.safetensors", seed=7, name="One")
    two = adapter(lib / "copies", "two.safetensors", seed=7, name="Two, renamed in metadata")
    other = adapter(lib, "other.safetensors", seed=8, name="Other")
    result = reg.scan([lib])
    assert len(result.duplicates) == 1
    assert result.duplicates[0]["paths"] == sorted([str(one.resolve()), str(two.resolve())])
    assert str(other.resolve()) not in result.duplicates[0]["paths"]
    assert reg.show("one").sha256 != reg.show("two, renamed in metadata").sha256


def test_files_that_are_no_adapter_are_skipped_with_a_reason_and_hidden_ones_ignored(reg, tmp_path):
    lib = tmp_path / "loras"
    adapter(lib, "good.safetensors", name="Good")
    (lib / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    (lib / ".hidden.safetensors").write_bytes(b"junk")
    (lib / ".trash").mkdir()
    adapter(lib / ".trash", "deleted.safetensors", name="Deleted")
    result = reg.scan([lib])
    assert result.new == [str((lib / "good.safetensors").resolve())]
    assert [p for p, _ in result.skipped] == [str((lib / "broken.safetensors").resolve())]
    assert "broken.safetensors" in result.skipped[0][1]


def test_adding_a_scanned_file_gives_it_a_stored_copy(reg, tmp_path):
    lib = tmp_path / "loras"
    path = adapter(lib, "keep.safetensors", name="Keep")
    reg.scan([lib])
    entry = reg.add(path)
    assert entry.blob == "ok" and Path(entry.path).read_bytes() == path.read_bytes()
    assert entry.loaders["comfyui"] == "loads"  # the scan's verdicts stay
    assert [c.status for c in reg.check()] == ["ok"]


def test_export_and_check_accept_in_place_entries(reg, tmp_path):
    lib = tmp_path / "loras"
    adapter(lib, "exp.safetensors", name="Exported")
    reg.scan([lib])
    exported = list(reg.export())
    assert [e["blob"] for e in exported] == ["in_place"] and exported[0]["locations"][0]["state"] == "present"
    assert reg.check() == []


def write_sidecars(path: Path, *, a1111: dict | None = None, civitai: dict | None = None) -> None:
    stem = path.with_suffix("")
    if a1111 is not None:
        Path(f"{stem}.json").write_text(json.dumps(a1111), encoding="utf-8")
    if civitai is not None:
        Path(f"{stem}.civitai.info").write_text(json.dumps(civitai), encoding="utf-8")


@pytest.fixture
def library(reg, tmp_path):
    lib = tmp_path / "loras"
    pony = adapter(lib, "pony_style.safetensors", arch="sdxl-base", seed=1)
    write_sidecars(pony, civitai={"id": 11, "modelId": 1, "baseModel": "Pony", "trainedWords": ["score_9"]})
    illu = adapter(lib, "illu_style.safetensors", arch="sdxl-base", seed=2)
    write_sidecars(illu, civitai={"id": 12, "modelId": 2, "baseModel": "Illustrious", "trainedWords": ["ilxl"]})
    adapter(lib, "plain_xl.safetensors", arch="sdxl-base", seed=3)
    sd1 = adapter(lib, "sd1_cat.safetensors", arch="sd1", seed=4)
    write_sidecars(sd1, a1111={"activation text": "pxlcat, pixel art", "sd version": "SD1"})
    reg.scan([lib])
    return lib


@pytest.mark.parametrize(("base", "files"), [
    ("Pony", ["pony_style.safetensors"]),
    ("illustrious", ["illu_style.safetensors"]),
    ("sdxl", ["illu_style.safetensors", "plain_xl.safetensors", "pony_style.safetensors"]),
    ("SDXL 1.0", ["illu_style.safetensors", "plain_xl.safetensors", "pony_style.safetensors"]),
    ("SD 1.5", ["sd1_cat.safetensors"]),
])
def test_search_by_architecture_or_finer_base(reg, library, base, files):
    assert sorted(e.file_name for e in reg.search(architecture=base)) == files


def test_sidecar_trigger_words_are_searchable_and_loader_filter_works(reg, library):
    assert [e.file_name for e in reg.search("pxlcat")] == ["sd1_cat.safetensors"]
    assert [e.file_name for e in reg.search(trigger="score_9")] == ["pony_style.safetensors"]
    assert len(reg.search(loader="comfyui")) == 4
    assert reg.search(loader="peft", outcome="loads") == []  # peft does not load kohya files
    assert len(reg.search(loader="peft", outcome="fails")) == 4


def test_cli_scan_list_show(tmp_path, capsys):
    lib = tmp_path / "loras"
    path = adapter(lib, "cli.safetensors", arch="sdxl-base", name="Cli Lora")
    write_sidecars(path, civitai={"id": 5, "modelId": 6, "baseModel": "NoobAI", "trainedWords": ["nai"]})
    code, out, err = run(capsys, "registry", "scan", str(lib))
    assert code == 0 and out.strip() == f"new      {path.resolve()}"
    assert "scanned 1 file(s)" in err and "1 read" in err
    code, out, _ = run(capsys, "registry", "list", "--base", "NoobAI", "--loads-in", "comfyui")
    assert code == 0 and "Cli Lora" in out and "sdxl-base (NoobAI)" in out and "nai" in out
    code, out, _ = run(capsys, "registry", "show", "cli lora")
    assert "finer base      NoobAI" in out and "loader          comfyui: loads" in out
    assert f"location        {path.resolve()} (present)" in out
    code, out, _ = run(capsys, "registry", "scan", "--json", str(lib))
    data = json.loads(out)
    assert (data["unchanged"], data["hashed"], data["new"]) == (1, 0, [])


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: adapter(p, "file.safetensors"), "is a file, expected a folder"),
])
def test_bad_root_is_one_line_exit_2(tmp_path, capsys, make, message):
    target = make(tmp_path)
    code, out, err = run(capsys, "registry", "scan", str(target))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) <= 2 and message in err and "Traceback" not in err


def test_unknown_loader_filter_is_a_usage_error(reg, tmp_path):
    from loraregistry.errors import UsageError

    with pytest.raises(UsageError, match="unknown target"):
        reg.search(loader="photoshop")


def test_rebuild_says_in_place_entries_need_a_rescan(tmp_path):
    from loraregistry.registry import rebuild

    lib = tmp_path / "loras"
    adapter(lib, "inplace.safetensors", name="In Place")
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
        sha = reg.show("in place").sha256
    result = rebuild(tmp_path / "reg")
    assert result.dropped == [(sha, "In Place", "indexed in place: run `lorareg registry scan` on its folder again")]


def test_demo_scan_step_indexes_the_folder_and_prints_the_serve_command(tmp_path, monkeypatch):
    from loraregistry.registry.demo_scan import scan_step

    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "demo out" / ".work" / "registry"))
    adapter(tmp_path / "demo out" / "formats", "a.safetensors", seed=1)
    adapter(tmp_path / "demo out", "b.safetensors", seed=1, name="Same weights")
    lines: list[str] = []
    shown = scan_step(tmp_path / "demo out", lines.append)
    assert shown["indexed"] == 2 and len(shown["scan"]["duplicates"]) == 1
    assert lines[0].startswith("8. Indexing ") and "2 files, 2 read and verified, 1 group(s)" in lines[0]
    assert "comfyui 2/2" in lines[1]
    assert lines[2] == (f"   browse them: LORAREG_HOME='{tmp_path / 'demo out' / '.work' / 'registry'}' lorareg serve"
                        "   (then open http://127.0.0.1:8765/)")


@pytest.mark.parametrize("jobs", [1, 2])
def test_worker_processes_index_the_same_as_one_process(tmp_path, jobs):
    lib = tmp_path / "loras"
    for i in range(20):
        adapter(lib / f"d{i % 3}", f"f{i:02d}.safetensors", seed=i % 10, name=f"n{i}")
    (lib / "d0" / "broken.safetensors").write_bytes(b"\x00" * 20)
    with Registry.open(tmp_path / f"reg{jobs}") as reg:
        result = reg.scan([lib], jobs=jobs)
        entries = {e.sha256: (e.name, e.loaders, e.verdict, e.hashes) for e in reg.list()}
    assert result.hashed == 20 and len(result.skipped) == 1 and len(result.new) == 20
    assert len(result.duplicates) == 10  # seeds repeat: two files share each tensor set
    with Registry.open(tmp_path / "reg-serial") as reg:
        reg.scan([lib], jobs=1)
        assert {e.sha256: (e.name, e.loaders, e.verdict, e.hashes) for e in reg.list()} == entries


def test_a_nested_root_scanned_on_its_own_changes_nothing_for_the_outer_one(reg, tmp_path):
    lib = tmp_path / "loras"
    inner = adapter(lib / "sub", "inner.safetensors", name="Inner")
    adapter(lib, "outer.safetensors", name="Outer")
    reg.scan([lib])
    again = reg.scan([lib / "sub"])
    assert (again.unchanged, again.new, again.removed) == (1, [], [])
    outer = reg.scan([lib])
    assert (outer.unchanged, outer.new, outer.removed, outer.moved) == (2, [], [], [])
    inner.unlink()
    assert reg.scan([lib / "sub"]).removed == [str(inner.resolve())]


def test_files_in_a_folder_that_cannot_be_listed_are_not_called_removed(reg, tmp_path, monkeypatch):
    from loraregistry.registry import scan as scan_module

    lib = tmp_path / "loras"
    adapter(lib / "locked", "hidden_from_us.safetensors", name="Locked")
    reg.scan([lib])
    real = os.scandir

    def scandir(path):  # as a folder without read permission answers (root ignores the bits, so simulate it)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(scan_module.os, "scandir", scandir)
    result = reg.scan([lib])
    assert result.removed == [] and result.skipped == [(str((lib / "locked").resolve()),
                                                        "cannot list this folder (Permission denied)")]
    assert reg.show("locked").blob == "in_place"


def test_linked_folders_are_followed_once_without_looping(reg, tmp_path):
    lib = tmp_path / "ComfyUI" / "models" / "loras"
    big = tmp_path / "big_disk" / "loras"
    adapter(big, "far.safetensors", name="Far")
    lib.mkdir(parents=True)
    (lib / "linked").symlink_to(big, target_is_directory=True)
    (big / "loop").symlink_to(lib, target_is_directory=True)  # a cycle back to the root
    result = reg.scan([lib])
    assert result.new == [str(lib.resolve() / "linked" / "far.safetensors")] and result.skipped == []
