"""``lorareg convert / merge / resize`` on the command line: JSON summaries, and the bad-input table
(each a specific error, exit 2, no output file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loraregistry.cli import cli, main
from loraregistry.safetensors_io import write_safetensors
from tests.adapters import lora_tensors

OPS = {"convert": "loraregistry.cli.ops_cmd:convert", "merge": "loraregistry.cli.ops_cmd:merge",
       "resize": "loraregistry.cli.ops_cmd:resize"}


@pytest.fixture(autouse=True)
def _ops_commands(monkeypatch):
    for name, target in OPS.items():  # until cli/__init__.py lists them
        monkeypatch.setitem(cli.lazy_commands, name, target)


@pytest.fixture
def sd1(tmp_path) -> Path:
    path = tmp_path / "sd1.safetensors"
    write_safetensors(path, lora_tensors("sd1", rank=4, alpha=2.0, seed=1))
    return path


@pytest.fixture
def sd1_b(tmp_path) -> Path:
    path = tmp_path / "sd1_b.safetensors"
    write_safetensors(path, lora_tensors("sd1", rank=2, alpha=None, seed=2))
    return path


@pytest.fixture
def sdxl(tmp_path) -> Path:
    path = tmp_path / "sdxl.safetensors"
    write_safetensors(path, lora_tensors("sdxl-base", rank=2, seed=3))
    return path


def test_help_for_each_command(capsys):
    for name in OPS:
        assert main([name, "--help"]) == 0
    assert "ADAPTER[:WEIGHT]" in capsys.readouterr().out


def test_convert_json(sd1, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(sd1), "-o", str(out), "--to", "peft", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["to"] == "peft" and summary["verify_ok"] and out.exists()


def test_merge_json(sd1, sd1_b, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["merge", f"{sd1}:0.8", f"{sd1_b}:-0.5", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {m["rank"] for m in summary["per_module"]} == {6} and summary["verify_ok"]


def test_resize_json_and_dynamic(sd1, tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    assert main(["resize", str(sd1), "-o", str(out), "--rank", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rank_after"] == {"2": summary["modules"]} and 0 < summary["retained_fro_min"] <= 1
    assert main(["resize", str(sd1), "-o", str(out), "--dynamic", "sv_fro=0.5", "--json"]) == 0
    assert all(m["rank_after"] <= 4 for m in json.loads(capsys.readouterr().out)["per_module"])


def _unknown(tmp_path: Path) -> Path:
    path = tmp_path / "unknown.safetensors"
    write_safetensors(path, {"foo.bar": np.zeros((2, 2), np.float16)})
    return path


BAD = [
    ("different bases", lambda p, a, b, x: ["merge", str(a), str(x)], "different bases"),
    ("unknown format", lambda p, a, b, x: ["convert", str(_unknown(p)), "--to", "peft"], "no known key format"),
    ("rank above merged rank", lambda p, a, b, x: ["merge", str(a), str(b), "--rank", "7"], "above the merged rank"),
    ("rank above every module", lambda p, a, b, x: ["resize", str(a), "--rank", "5"], "above every module"),
    ("weight not a number", lambda p, a, b, x: ["merge", f"{a}:abc", str(b)], "not a finite number"),
    ("weight not finite", lambda p, a, b, x: ["merge", f"{a}:nan", str(b)], "not a finite number"),
    ("bad dynamic", lambda p, a, b, x: ["resize", str(a), "--dynamic", "sv_fro"], "METHOD=VALUE"),
    ("unknown dynamic", lambda p, a, b, x: ["resize", str(a), "--dynamic", "sv_x=1"], "unknown dynamic"),
    ("no rank", lambda p, a, b, x: ["resize", str(a)], "--rank R or --dynamic"),
    ("bad dialect", lambda p, a, b, x: ["convert", str(a), "--to", "kohya", "--dialect", "nonsense"], "KEY=VALUE"),
]


@pytest.mark.parametrize(("case", "args", "phrase"), BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_specific_error_with_exit_2_and_no_file(case, args, phrase, sd1, sd1_b, sdxl, tmp_path,
                                                              capsys):
    out = tmp_path / "out.safetensors"
    assert main([*args(tmp_path, sd1, sd1_b, sdxl), "-o", str(out)]) == 2
    assert phrase in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("command", [["convert", "--to", "peft"], ["resize", "--rank", "2"], ["merge"]])
def test_output_equal_to_an_input_is_refused(command, sd1, capsys):
    before = sd1.read_bytes()
    args = [command[0], str(sd1), *command[1:], "-o", str(sd1)]
    assert main(args) == 2
    assert "one of the inputs" in capsys.readouterr().err
    assert sd1.read_bytes() == before


def test_failing_output_is_refused_unless_forced(tmp_path, capsys):
    src = Path(__file__).parent / "golden" / "sd1_kohya.safetensors"  # tiny-model shapes: fits no real base
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), "-o", str(out), "--to", "peft"]) == 1
    assert "fails verify" in capsys.readouterr().err and not out.exists()
    assert not list(tmp_path.iterdir())
    assert main(["convert", str(src), "-o", str(out), "--to", "peft", "--force"]) == 0
    assert out.exists()
