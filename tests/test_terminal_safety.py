"""Strings from a file never drive the terminal: control characters are shown escaped and rich markup in a value
is printed literally (an unbalanced ``[/bold]`` used to crash ``inspect``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loraregistry.cli import main
from loraregistry.cli.output import cell, markup_safe, safe_line
from tests.adapters import lora_tensors, write_adapter

# What a hostile metadata value can hold; each must reach the terminal inert.
HOSTILE = {
    "ansi colour": "a\x1b[31mred\x1b[0m",
    "clear screen": "\x1b[2J\x1b[H",
    "osc title": "\x1b]0;owned\x07",
    "carriage return": "visible\rhidden",
    "bell": "ding\x07",
    "c1 csi": "\x9b31mred",
    "bidi override": "txt.\u202eexe",
    "line separator": "one\u2028two",
    "unbalanced markup": "[/bold]",
    "markup": "[red]x[/red] [link=file:///etc/passwd]click[/link]",
    "newline": "first\nsecond",
}
# Raw characters that must not appear in text output (escaped forms like \x1b are fine).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[31mb", "a\\x1b[31mb"), ("x\ry", "x\\x0dy"), ("\x9b", "\\x9b"), ("\u202e", "\\u202e"),
    ("tab\there", "tab\\x09here"), ("plain ünïcode ✓", "plain ünïcode ✓"), ("[/bold]", "[/bold]"),
])
def test_safe_line_makes_controls_visible(text, shown):
    assert safe_line(text) == shown


def test_cells_and_markup_safe_never_interpret_markup():
    from rich.console import Console

    console = Console(record=True, width=80, color_system=None)
    console.print(cell("[/bold] [red]x[/red]"))
    console.print(f"[bold]{markup_safe('[/bold] [red]x[/red]')}[/bold]")
    assert console.export_text().splitlines() == ["[/bold] [red]x[/red]", "[/bold] [red]x[/red]"]


def _hostile_file(folder: Path, value: str) -> Path:
    record = {"schema_version": "1", "name": value, "description": value, "trigger_words": [value], "tags": [value]}
    metadata = {"lorareg": json.dumps(record), "modelspec.title": value, "ss_training_comment": value,
                f"tool{value}": value}
    return write_adapter(folder / "hostile.safetensors", lora_tensors("sd1", rank=2), metadata)


def _assert_inert(text: str) -> None:
    assert not RAW_CONTROL.search(text), repr(RAW_CONTROL.search(text).group())


@pytest.mark.parametrize("name", HOSTILE)
def test_inspect_text_shows_hostile_metadata_escaped(tmp_path, capsys, name):
    value = HOSTILE[name]
    path = _hostile_file(tmp_path, value)
    assert main(["inspect", str(path), "--no-hashes"]) == 0
    out = capsys.readouterr().out
    _assert_inert(out)
    assert safe_line(value) in out  # shown, escaped, markup literal


@pytest.mark.parametrize("name", HOSTILE)
def test_inspect_json_is_exact_and_inert(tmp_path, capsys, name):
    value = HOSTILE[name]
    path = _hostile_file(tmp_path, value)
    assert main(["inspect", str(path), "--no-hashes", "--json"]) == 0
    out = capsys.readouterr().out
    _assert_inert(out.replace("\n", ""))
    assert json.loads(out)[0]["metadata"]["name"] == value


@pytest.mark.parametrize("name", HOSTILE)
def test_meta_show_and_verify_are_inert(tmp_path, capsys, name):
    path = _hostile_file(tmp_path, HOSTILE[name])
    for argv in (["meta", "show", str(path)], ["verify", str(path)], ["verify", str(path), "--json"]):
        assert main(argv) in (0, 1)
        captured = capsys.readouterr()
        _assert_inert(captured.out.replace("\n", "") + captured.err.replace("\n", ""))


def test_verify_findings_quote_hostile_keys_escaped(tmp_path, capsys):
    tensors = lora_tensors("sd1", rank=2)
    tensors["evil\x1b[2J\x9b[/bold].weight"] = tensors[next(iter(tensors))]
    path = write_adapter(tmp_path / "keys.safetensors", tensors)
    main(["verify", str(path)])
    out = capsys.readouterr().out
    _assert_inert(out.replace("\n", ""))
    assert "evil\\x1b[2J\\x9b[/bold]" in out


def test_error_lines_escape_what_they_quote(tmp_path, capsys):
    missing = tmp_path / "no\x1b[31mfile\u202e.safetensors"
    assert main(["convert", str(missing), "-o", str(tmp_path / "out.safetensors"), "--to", "peft"]) == 2
    err = capsys.readouterr().err
    _assert_inert(err.replace("\n", ""))
    assert "no\\x1b[31mfile\\u202e.safetensors" in err


@pytest.mark.parametrize("name", ["unbalanced markup", "ansi colour", "bidi override"])
def test_registry_list_shows_hostile_titles_literally(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "registry"))
    path = _hostile_file(tmp_path, HOSTILE[name])
    assert main(["registry", "add", str(path)]) == 0
    _assert_inert(capsys.readouterr().out.replace("\n", ""))
    assert main(["registry", "list"]) == 0  # an unbalanced [/bold] in a title was exit 70 (MarkupError)
    out = capsys.readouterr().out
    _assert_inert(out.replace("\n", ""))


@pytest.mark.parametrize("name", ["unbalanced markup", "ansi colour", "bidi override"])
def test_registry_show_and_scan_print_hostile_strings_escaped(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("LORAREG_HOME", str(tmp_path / "registry"))
    folder = tmp_path / ("loras" + HOSTILE[name].replace("/", "_"))  # a hostile folder name reaches the scan too
    folder.mkdir()
    path = _hostile_file(folder, HOSTILE[name])
    assert main(["registry", "scan", str(folder), "--no-verify"]) == 0
    _assert_inert(capsys.readouterr().out.replace("\n", ""))
    assert main(["registry", "add", str(path)]) == 0
    ref = capsys.readouterr().out.split()[0]
    assert main(["registry", "show", ref]) == 0
    _assert_inert(capsys.readouterr().out.replace("\n", ""))
