"""Edits that never lose data: concurrent `meta set`, compare-and-swap, symlinks, hard links, temp files of
killed writers (issue 13 items 9, 10, 12)."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import loraregistry.meta as meta_module
from loraregistry.adapter import AdapterFile
from loraregistry.atomic_write import (
    ConcurrentEditError,
    check_unchanged,
    is_temp_name,
    snapshot,
    sweep_stale_temps,
    temp_path,
)
from loraregistry.cli import main
from loraregistry.safetensors_io import read_header, rewrite_metadata, write_safetensors

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock, hard links and kill -9 are POSIX")

SD1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
ROOT = Path(__file__).resolve().parent.parent


def make_kohya(path: Path, *, width: int = 320, rank: int = 4) -> Path:
    rng = np.random.default_rng(0)
    write_safetensors(path, {
        f"{SD1_Q}.lora_down.weight": rng.standard_normal((rank, width)).astype(np.float16),
        f"{SD1_Q}.lora_up.weight": rng.standard_normal((width, rank)).astype(np.float16),
        f"{SD1_Q}.alpha": np.array(float(rank), dtype=np.float16),
    }, {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"})
    return path


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def data_section(path: Path) -> bytes:
    return path.read_bytes()[read_header(path).data_offset:]


# --- concurrent edits -------------------------------------------------------------------------------

ROUNDS = 30


def _edit_rounds(path: str, option: str, start, done, checked, results) -> None:
    for i in range(ROUNDS):
        start.wait()
        code, err = run_cli("meta", "set", path, option, f"{option[2:]}-{i}")
        results.put((option, i, code, err.strip()))
        done.wait()
        if option == "--name":  # one of the two reads back what both wrote in this round
            meta = AdapterFile.open(path).metadata
            results.put(("state", i, meta.name, meta.description))
        checked.wait()


def test_two_processes_setting_different_fields_at_once_both_land_every_round(tmp_path):
    path = make_kohya(tmp_path / "shared.safetensors")
    data_before = data_section(path)
    ctx = multiprocessing.get_context("fork")
    start, done, checked = ctx.Barrier(2), ctx.Barrier(2), ctx.Barrier(2)
    results = ctx.Queue()
    workers = [ctx.Process(target=_edit_rounds, args=(str(path), option, start, done, checked, results))
               for option in ("--name", "--description")]
    for w in workers:
        w.start()
    got = [results.get(timeout=300) for _ in range(ROUNDS * 3)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    edits = [g for g in got if g[0] != "state"]
    failures = [g for g in edits if g[2] != 0]
    assert failures == [], failures  # the lock makes edits take turns: neither has to give up
    states = sorted(g[1:] for g in got if g[0] == "state")
    assert states == [(i, f"name-{i}", f"description-{i}") for i in range(ROUNDS)]
    assert all("tensor data changed" not in g[3] for g in edits)
    assert data_section(path) == data_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.safetensors"]


def test_a_change_by_another_program_during_the_edit_fails_truthfully_and_writes_nothing(tmp_path, monkeypatch):
    path = make_kohya(tmp_path / "a.safetensors")
    real_rewrite = meta_module.rewrite_metadata

    def other_program_writes_first(source, header, **kwargs):
        rewrite_metadata(source, {"ss_output_name": "theirs"})  # no lock: like a foreign tool
        return real_rewrite(source, header, **kwargs)

    monkeypatch.setattr(meta_module, "rewrite_metadata", other_program_writes_first)
    code, err = run_cli("meta", "set", str(path), "--name", "mine")
    assert code == 2 and err.count("\n") == 1
    assert str(path) in err and "another program replaced the file" in err
    assert "nothing was written" in err and "tensor data changed" not in err
    assert read_header(path).metadata.get("ss_output_name") == "theirs"  # their edit stays
    assert AdapterFile.open(path).metadata.name != "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


@pytest.mark.parametrize("change, phrase", [
    (lambda p: p.write_bytes(p.read_bytes()), "another program modified"),  # same inode, new mtime
    (lambda p: os.replace(make_kohya(p.with_name("other.safetensors"), width=640), p), "another program replaced"),
])
def test_compare_and_swap_names_what_happened(tmp_path, change, phrase):
    path = make_kohya(tmp_path / "a.safetensors")
    seen = snapshot(path)
    time.sleep(0.01)  # a rewrite in the same clock tick would keep the mtime
    change(path)
    after = path.read_bytes()
    with pytest.raises(ConcurrentEditError, match=phrase):
        rewrite_metadata(path, {"x": "y"}, expect=seen)
    assert path.read_bytes() == after
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_compare_and_swap_notices_a_deleted_file(tmp_path):
    path = make_kohya(tmp_path / "a.safetensors")
    seen = snapshot(path)
    check_unchanged(path, seen)  # nothing happened: passes
    path.unlink()
    with pytest.raises(ConcurrentEditError, match="another program deleted the file"):
        check_unchanged(path, seen)


def test_copied_tensor_bytes_that_do_not_match_the_hash_read_under_the_lock_change_nothing(tmp_path):
    path = make_kohya(tmp_path / "a.safetensors")
    before = path.read_bytes()
    with pytest.raises(ConcurrentEditError, match="tensor data changed while it was copied"):
        rewrite_metadata(path, {"x": "y"}, tensor_sha256="0" * 64)
    assert path.read_bytes() == before


# --- symlinks and hard links ---------------------------------------------------------------------------


def test_meta_set_through_a_symlink_edits_the_real_file_and_keeps_the_link(tmp_path):
    real_dir = tmp_path / "models"
    real_dir.mkdir()
    real = make_kohya(real_dir / "real.safetensors")
    link = tmp_path / "link.safetensors"
    link.symlink_to(os.path.relpath(real, tmp_path))
    data_before = data_section(real)
    code, err = run_cli("meta", "set", str(link), "--name", "Through the link")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert AdapterFile.open(real).metadata.name == "Through the link"
    assert data_section(real) == data_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "models"]
    assert sorted(p.name for p in real_dir.iterdir()) == ["real.safetensors"]


def test_symlink_loop_is_a_one_line_error(tmp_path):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop.name)
    code, err = run_cli("meta", "set", str(loop), "--name", "x")
    assert code == 2 and err.count("\n") == 1 and str(loop) in err


def test_hard_linked_file_is_refused_unless_asked_to_break_the_links(tmp_path):
    path = make_kohya(tmp_path / "a.safetensors")
    other = tmp_path / "b.safetensors"
    os.link(path, other)
    before = path.read_bytes()
    code, err = run_cli("meta", "set", str(path), "--name", "New")
    assert code == 2 and err.count("\n") == 1
    assert str(path) in err and "2 hard links" in err and "--break-hardlinks" in err
    assert path.read_bytes() == before and os.stat(path).st_nlink == 2

    code, err = run_cli("meta", "set", str(path), "--name", "New", "--break-hardlinks")
    assert code == 0, err
    assert AdapterFile.open(path).metadata.name == "New"
    assert other.read_bytes() == before  # the other link keeps the old content, as the flag says
    assert os.stat(path).st_nlink == 1 and os.stat(other).st_nlink == 1


def test_hard_links_of_the_input_do_not_matter_when_writing_a_copy(tmp_path):
    path = make_kohya(tmp_path / "a.safetensors")
    os.link(path, tmp_path / "b.safetensors")
    code, err = run_cli("meta", "set", str(path), "-o", str(tmp_path / "c.safetensors"), "--name", "Copy")
    assert code == 0, err
    assert AdapterFile.open(tmp_path / "c.safetensors").metadata.name == "Copy"


# --- temp files ------------------------------------------------------------------------------------


def test_temp_names_are_hidden_lorareg_names_that_are_not_adapters(tmp_path):
    name = temp_path(tmp_path / "style.safetensors").name
    assert name.startswith(".style.safetensors.lorareg-tmp-")
    assert not name.endswith(".safetensors") and is_temp_name(name)
    assert f"-{os.getpid()}-" in name
    assert not is_temp_name("style.safetensors") and not is_temp_name(".hidden.safetensors")
    long = temp_path(tmp_path / ("x" * 250 + ".safetensors")).name
    assert len(long.encode()) < 255 and is_temp_name(long)


_SLOW_WRITER = """
import sys, time
from loraregistry.atomic_write import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"\\0" * (1 << 20))
    f.flush()
    print("writing", flush=True)
    while True:  # a large file, written slowly: killed before it ends
        f.write(b"\\1" * (1 << 20))
        f.flush()
        time.sleep(0.05)
"""


def test_kill_9_mid_write_leaves_the_target_whole_and_the_next_write_sweeps_the_temp(tmp_path):
    target = make_kohya(tmp_path / "model.safetensors")
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == b"writing"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_bytes() == before  # the old file, whole
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.safetensors"]
    assert len(leftovers) == 1 and is_temp_name(leftovers[0].name)
    assert f"-{proc.pid}-" in leftovers[0].name and not leftovers[0].name.endswith(".safetensors")
    assert leftovers[0].stat().st_size >= 1 << 20

    # a folder scan does not take it for an adapter
    code, err = run_cli("verify", str(tmp_path))
    assert code == 0, err

    # the next write into the folder removes it (its writer is dead)
    code, err = run_cli("meta", "set", str(target), "--name", "After the crash")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_sweep_keeps_temps_of_live_writers_and_removes_old_or_orphaned_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "live": f".a.safetensors.lorareg-tmp-{live.pid}-0123abcd",
            "dead": f".b.safetensors.lorareg-tmp-{dead.pid}-0123abcd",
            "old_live": f".c.safetensors.lorareg-tmp-{live.pid}-89abcdef",
            "legacy_old": ".d.safetensors.0123abcd.lorareg-tmp.safetensors",
            "legacy_new": ".e.safetensors.0123abcd.lorareg-tmp.safetensors",
            "not_ours": ".f.safetensors.tmp",
            "adapter": "g.safetensors",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        seven_hours_ago = time.time() - 7 * 3600
        for key in ("old_live", "legacy_old", "not_ours"):
            os.utime(tmp_path / names[key], (seven_hours_ago, seven_hours_ago))
        removed = {p.name for p in sweep_stale_temps(tmp_path)}
    finally:
        live.kill()
        live.wait()
    assert removed == {names["dead"], names["old_live"], names["legacy_old"]}
    assert {p.name for p in tmp_path.iterdir()} == {names[k] for k in ("live", "legacy_new", "not_ours", "adapter")}


def test_convert_writes_through_a_lorareg_temp_name_and_sweeps_leftovers(tmp_path, monkeypatch):
    import loraregistry.verify as verify_module

    real_verify, verified = verify_module.verify, []

    def spy(path, **kwargs):
        verified.append(Path(path).name)
        return real_verify(path, **kwargs)

    monkeypatch.setattr(verify_module, "verify", spy)
    import loraregistry.ops.written_verify as written_verify  # the output's verify from what the writer holds

    real_written = written_verify.verify_written
    monkeypatch.setattr(written_verify, "verify_written", lambda path, *a, **k: verified.append(Path(path).name)
                        or real_written(path, *a, **k))
    source = make_kohya(tmp_path / "in.safetensors")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".out.safetensors.lorareg-tmp-{dead.pid}-0123abcd"  # a killed convert's
    leftover.write_bytes(b"partial")
    code, err = run_cli("convert", str(source), "-o", str(tmp_path / "out.safetensors"), "--to", "peft")
    assert code == 0, err
    assert verified and is_temp_name(verified[0]) and not verified[0].endswith(".safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "out.safetensors"]


def test_a_new_output_may_replace_a_hard_linked_file_but_an_edit_may_not(tmp_path):
    from loraregistry.atomic_write import HardLinkedFile, atomic_write

    path, other = tmp_path / "out.jsonl", tmp_path / "other.jsonl"
    path.write_bytes(b"old")
    os.link(path, other)
    with pytest.raises(HardLinkedFile, match="2 hard links"), atomic_write(path, break_hardlinks=False) as f:
        f.write(b"edited")
    assert path.read_bytes() == other.read_bytes() == b"old"
    with atomic_write(path) as f:  # an output written afresh (export, junit, bake): the path gets the new file
        f.write(b"new")
    assert path.read_bytes() == b"new" and other.read_bytes() == b"old"


@pytest.mark.parametrize("leftover", [
    ".model.safetensors.0123abcd.lorareg-tmp.safetensors",  # convert/merge/resize before this release
    ".model.safetensors.89abcdef.lorareg-fix.safetensors",  # fix
    ".t.0123456789ab.tmp.safetensors",  # train export
])
def test_verify_of_a_folder_skips_temp_leftovers_of_earlier_releases(tmp_path, leftover):
    make_kohya(tmp_path / "model.safetensors")
    (tmp_path / leftover).write_bytes(b"half a file")
    code, err = run_cli("verify", str(tmp_path))
    assert code == 0, err
