"""The CLI as a user meets it: exit codes, one-line errors, no tracebacks, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loraregistry.cli import COMMANDS, main

from .known_bad import KNOWN_BAD


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_bad_file_is_one_line_and_exit_2(tmp_path, capsys, bad):
    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("lorareg: error: ")
    assert bad.phrase in err
    assert "Traceback" not in err
    assert path.read_bytes() == bad.content  # never modified


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_missing_path_and_folder(tmp_path, capsys, case):
    target = tmp_path / "nope.safetensors" if case == "missing" else tmp_path
    code, _, err = run(capsys, "inspect", str(target))
    assert code == 2
    assert ("no such file" if case == "missing" else "is a folder") in err


def test_many_files_report_each_and_exit_2_when_one_fails(tmp_path, capsys):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    from .known_bad import good_file

    good.write_bytes(good_file())
    bad.write_bytes(b"")
    code, out, err = run(capsys, "inspect", "--json", str(good), str(bad))
    assert code == 2
    reports = json.loads(out)
    assert [("error" in r) for r in reports] == [False, True]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "Usage:" in out


def test_usage_error_exit_2(capsys):
    code, _, err = run(capsys, "inspect")
    assert code == 2
    assert "Missing argument" in err


def test_inspect_imports_neither_torch_nor_diffusers_nor_peft(tmp_path):
    from .known_bad import good_file

    path = tmp_path / "a.safetensors"
    path.write_bytes(good_file())
    code = (
        "import sys\n"
        "from loraregistry.cli import main\n"
        f"rc = main(['inspect', '--json', {str(path)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy, rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY [] 0" in result.stdout
