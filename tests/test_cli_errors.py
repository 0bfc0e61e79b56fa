"""Exit 0/1/2 always, one line naming the file: symlink loops, a full disk, unreadable files, absurd inputs,
click's usage errors, and ``fix`` on files every other command rejects."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from loraregistry.cli import main
from loraregistry.verify.findings import CODES
from tests.adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter

OUT = "out.safetensors"
# Each operation on INPUT, writing OUT (placeholders filled per test).
OPERATIONS = {
    "convert": ["convert", "INPUT", "-o", "OUT", "--to", "peft"],
    "resize": ["resize", "INPUT", "-o", "OUT", "--rank", "1"],
    "merge": ["merge", "INPUT", "OTHER", "-o", "OUT"],
    "fix": ["fix", "INPUT", "-o", "OUT"],
}


@pytest.fixture
def good(tmp_path) -> Path:
    return write_adapter(tmp_path / "good.safetensors", lora_tensors("sd1", rank=2, seed=1))


def _argv(template: list[str], **paths: Path) -> list[str]:
    return [str(paths[a.lower()]) if a.lower() in paths else a for a in template]


def _one_error_line(err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lorareg: error: "), err
    assert all(name in lines[0] for name in names), err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


def _leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


@pytest.mark.parametrize("operation", [*OPERATIONS, "inspect"])
def test_symlink_loop_as_input_is_one_line(tmp_path, good, capsys, operation):
    loop = tmp_path / "loop.safetensors"
    os.symlink(tmp_path / "other_end", loop)
    os.symlink(loop, tmp_path / "other_end")
    template = OPERATIONS.get(operation, ["inspect", "INPUT"])
    assert main(_argv(template, input=loop, other=good, out=tmp_path / OUT)) == 2
    assert "symbolic links" in _one_error_line(capsys.readouterr().err, str(loop))
    assert not (tmp_path / OUT).exists()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_symlink_loop_as_output_never_crashes(tmp_path, good, capsys, operation):
    loop = tmp_path / "loop.safetensors"
    os.symlink(tmp_path / "other_end", loop)
    os.symlink(loop, tmp_path / "other_end")
    code = main(_argv(OPERATIONS[operation], input=good, other=good, out=loop))
    err = capsys.readouterr().err
    assert code in (0, 1), err  # the link is replaced by the output, as a link to a real file would be
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("operation", OPERATIONS)
def test_full_disk_is_one_line_naming_the_output_and_changes_nothing(tmp_path, good, capsys, monkeypatch, operation):
    def full_disk(fd):  # the data is in the temp file's pages; flushing them to disk finds no room
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # every writer ends its temp file with fsync, before the rename
    before = good.read_bytes()
    out = tmp_path / OUT
    assert main(_argv(OPERATIONS[operation], input=good, other=good, out=out)) == 2
    line = _one_error_line(capsys.readouterr().err, str(out))
    assert "no space left on device" in line
    assert good.read_bytes() == before and _leftovers(tmp_path, good) == []


@pytest.mark.parametrize("raised, phrase", [
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (MemoryError(), "not enough memory"),
    (OSError(errno.EIO, "Input/output error"), "input/output error"),
], ids=["unreadable", "recursion", "memory", "io-error"])
@pytest.mark.parametrize("operation", [*OPERATIONS, "inspect"])
def test_os_and_resource_errors_are_one_line_naming_the_input(tmp_path, good, capsys, monkeypatch, raised, phrase,
                                                              operation):
    import loraregistry.inspection
    from loraregistry.adapter import AdapterFile

    def failing_open(*args, **kwargs):
        raise raised

    monkeypatch.setattr(AdapterFile, "open", classmethod(failing_open))
    monkeypatch.setattr(loraregistry.inspection, "inspect_adapter", failing_open)
    template = OPERATIONS.get(operation, ["inspect", "INPUT"])
    assert main(_argv(template, input=good, other=good, out=tmp_path / OUT)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert phrase in line and ("good.safetensors" in line or OUT in line)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
@pytest.mark.parametrize("operation", [*OPERATIONS, "inspect"])
def test_really_unreadable_file_is_lorareg_one_line_not_click_usage(tmp_path, good, capsys, operation):
    good.chmod(0)
    template = OPERATIONS.get(operation, ["inspect", "INPUT"])
    assert main(_argv(template, input=good, other=good, out=tmp_path / OUT)) == 2
    _one_error_line(capsys.readouterr().err, str(good))


def test_unreadable_file_skips_clicks_readable_check(monkeypatch, tmp_path, good, capsys):
    """click.Path checks os.access(R_OK) and prints its usage block; lorareg's commands leave reading to the
    library, whose error is one line naming the file."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(good) else real_access(p, mode))
    for template in [*OPERATIONS.values(), ["inspect", "INPUT"]]:
        main(_argv(template, input=good, other=good, out=tmp_path / OUT))
        err = capsys.readouterr().err
        assert "Usage:" not in err and "is not readable" not in err, err


USAGE = [
    ["convert", "x.safetensors", "--to", "peft"],  # missing -o
    ["convert", "x.safetensors", "-o", "y.safetensors", "--to", "nope"],  # bad choice
    ["resize", "x.safetensors", "-o", "y.safetensors", "--rank", "zero"],  # not an int
    ["resize", "x.safetensors", "-o", "y.safetensors", "--rank", "0"],  # out of range
    ["merge", "-o", "y.safetensors"],  # missing argument
    ["fix", "x.safetensors", "-o", "y.safetensors", "--bogus"],  # unknown option
    ["inspect"],  # missing argument
    ["nosuchcommand"],
]


@pytest.mark.parametrize("argv", USAGE, ids=lambda a: " ".join(a))
def test_usage_errors_are_one_line_and_a_pointer_to_help(argv, capsys):
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("lorareg: error: "), lines
    assert lines[1].startswith("try 'lorareg") and lines[1].endswith(" --help'")


def test_a_bug_is_still_exit_70_and_debug_still_raises(monkeypatch, good, tmp_path, capsys):
    from loraregistry.adapter import AdapterFile

    def buggy(cls, path, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(AdapterFile, "open", classmethod(buggy))
    assert main(["convert", str(good), "-o", str(tmp_path / OUT), "--to", "peft"]) == 70
    assert "internal error" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "convert", str(good), "-o", str(tmp_path / OUT), "--to", "peft"])


def test_lorareg_errors_keep_their_traceback_under_debug(tmp_path, capsys):
    from loraregistry.errors import LoraregError

    with pytest.raises(LoraregError):
        main(["--debug", "convert", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / OUT), "--to", "peft"])


# --- fix: non-zero wherever the other commands refuse the file ----------------------------------------------

STRUCTURAL = [b for b in KNOWN_BAD_ADAPTERS
              if b.code[:4] in ("LRG1", "LRG3", "LRG4") and CODES[b.code].severity == "error"]


@pytest.mark.parametrize("bad", STRUCTURAL, ids=lambda b: b.name)
def test_fix_never_says_fine_about_a_structurally_broken_file(tmp_path, capsys, bad):
    from loraregistry.verify import verify

    path = bad.build(tmp_path)
    assert bad.code in verify(path, base=bad.base).codes()
    out = tmp_path / OUT
    code = main(["fix", str(path), "-o", str(out), *(["--base", bad.base] if bad.base else [])])
    err = capsys.readouterr().err
    if code == 0:  # fix repaired it: the output must pass what the input failed
        fixed = verify(out, base=bad.base)
        assert bad.code not in fixed.codes(), err
    else:
        assert code in (1, 2) and not out.exists(), err
        _one_error_line(err, tmp_path.name)


def test_fix_on_a_nan_adapter_is_refused(tmp_path, capsys):
    tensors = lora_tensors("sd1", rank=2, seed=3)
    key = next(k for k in sorted(tensors) if k.endswith(".lora_up.weight"))
    tensors[key] = np.full_like(tensors[key], np.nan)
    path = write_adapter(tmp_path / "nan.safetensors", tensors)
    assert main(["fix", str(path), "-o", str(tmp_path / OUT), "--for", "comfyui"]) == 2
    assert "NaN" in _one_error_line(capsys.readouterr().err, str(path))


def test_fix_exits_1_where_verify_fails_and_nothing_can_be_fixed(tmp_path, capsys, monkeypatch):
    """The loaders' verdicts say "loads", but verify has a structural error that fix does not touch."""
    import loraregistry.verify as verify_module
    from loraregistry.verify.findings import Finding

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1", rank=2, seed=4),
                         {"ss_base_model_version": "sd_v1"})
    assert main(["fix", str(path), "-o", str(tmp_path / OUT), "--for", "comfyui"]) == 0  # clean: nothing to fix
    capsys.readouterr()
    original = verify_module.verify

    def verify_with_error(*args, **kwargs):  # fix imports verify when it runs, so the patch reaches it
        report = original(*args, **kwargs)
        report.findings.append(Finding(code="LRG302", name="rank-mismatch", severity="error",
                                       family="compatibility", message="made up for the test"))
        return report

    monkeypatch.setattr(verify_module, "verify", verify_with_error)
    assert main(["fix", str(path), "-o", str(tmp_path / OUT), "--for", "comfyui"]) == 1
    assert "LRG302" in _one_error_line(capsys.readouterr().err, str(path))
    assert not (tmp_path / OUT).exists()
