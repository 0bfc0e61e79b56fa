"""`lorareg verify` as a CI gate: exit codes, JSON (validated against its schema), JUnit, GitHub annotations."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from loraregistry.cli import main
from loraregistry.demo import DEMO_ADAPTERS, build_adapter
from loraregistry.safetensors_io import load_tensors, read_header, write_safetensors
from loraregistry.verify.outputs import VerifyRunModel


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A good SD1 adapter (real shapes) and the same one with a NaN in an up factor."""
    folder = tmp_path_factory.mktemp("adapters")
    good = build_adapter(DEMO_ADAPTERS[0], folder)
    tensors = load_tensors(good)
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    bad = folder / "nan_in_up.safetensors"
    write_safetensors(bad, tensors, read_header(good).metadata)
    return good, bad


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_good_file_exits_0(adapters, capsys):
    code, out, _ = run(capsys, "verify", str(adapters[0]))
    assert code == 0
    assert "OK" in out and "sd1" in out


def test_bad_file_exits_1_with_its_code(adapters, capsys):
    code, out, _ = run(capsys, "verify", str(adapters[1]))
    assert code == 1
    assert "FAIL" in out and "LRG4" in out


def test_strict_fails_on_warnings(tmp_path, capsys):
    path = build_adapter(DEMO_ADAPTERS[6], tmp_path)  # legacy diffusers keys: loads, with a warning or two
    code_default, _, _ = run(capsys, "verify", str(path))
    code_strict, out, _ = run(capsys, "verify", "--strict", "--json", str(path))
    doc = json.loads(out)
    if doc["summary"]["warning"]:
        assert (code_default, code_strict) == (0, 1)
    else:
        assert code_default == code_strict == 0


def test_json_validates_against_the_published_schema(adapters, capsys):
    code, out, _ = run(capsys, "verify", "--json", *map(str, adapters))
    assert code == 1
    doc = VerifyRunModel.model_validate_json(out)
    assert [f.ok for f in doc.files] == [True, False]
    assert doc.summary["files"] == 2 and doc.summary["failed"] == 1


def test_junit_and_github_outputs(adapters, tmp_path, capsys):
    junit = tmp_path / "out.xml"
    code, out, err = run(capsys, "verify", "--format", "github", "--junit", str(junit), *map(str, adapters))
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith("::error file=") and "title=LRG4" in line for line in lines)
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failures = suite.findall("testcase/failure")
    assert len(failures) == 1 and failures[0].get("type").startswith("LRG4")
    assert "1 failed" in err


def test_folder_is_searched_and_summarized(adapters, capsys):
    code, out, _ = run(capsys, "verify", str(adapters[0].parent))
    assert code == 1
    assert "2 file(s): 1 passed, 1 failed" in out


@pytest.mark.parametrize("args, phrase", [
    (["MISSING.safetensors"], "no such file"),
    (["--base", "sd9000", "{good}"], "known ids: sd1"),
    (["--base", "{folder}", "{good}"], "model"),
    (["{empty}"], "no .safetensors files"),
    (["{empty}/*.safetensors"], "matches no files"),
])
def test_usage_and_io_errors_exit_2(adapters, tmp_path, capsys, args, phrase):
    empty = tmp_path / "empty"
    empty.mkdir()
    values = {"good": str(adapters[0]), "folder": str(empty), "empty": str(empty)}
    code, _, err = run(capsys, "verify", *[a.format(**values) for a in args])
    assert code == 2
    assert phrase in err and "Traceback" not in err


def test_verify_never_modifies_files(adapters, capsys):
    before = [p.read_bytes() for p in adapters]
    run(capsys, "verify", *map(str, adapters))
    assert [p.read_bytes() for p in adapters] == before
