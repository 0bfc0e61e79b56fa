"""``lorareg verify hf://... --target``: the loader verdicts of a remote file, from its header alone, are the
verdicts the same file gets on disk (they depend on keys and shapes, which the header holds)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

import json
from pathlib import Path

import pytest

from loraregistry import cli
from loraregistry.verify.consumers import known_targets

from .test_hub import hf_env, hub, make_adapter  # noqa: F401  (fixtures)

GOLDEN = Path(__file__).parent / "golden"


def adapters(tmp_path: Path) -> list[Path]:
    return [make_adapter(tmp_path), *sorted(GOLDEN.glob("*.safetensors"))]


def verify_json(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["verify", "--json", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    (report,) = json.loads(out)["files"]
    return code, report


def consumer_findings(report: dict) -> list[tuple[str, str, str]]:
    return [(f["code"], f["severity"], f["message"]) for f in report["findings"] if f["family"] == "consumer"]


@pytest.mark.parametrize("target", ["all", *known_targets()])
def test_remote_target_verdicts_equal_the_local_ones(hub, tmp_path, capsys, monkeypatch, target):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    heard = 0
    for path in adapters(tmp_path):
        hub.state.add_files("alice/files", {path.name: path.read_bytes()})
        local_code, local = verify_json(capsys, str(path), "--no-tensors", "--target", target)
        remote_code, remote = verify_json(capsys, f"hf://alice/files/{path.name}", "--target", target)
        heard += len(consumer_findings(local))
        assert consumer_findings(remote) == consumer_findings(local), path.name
        assert remote_code == local_code, path.name
    assert heard  # some file gets a verdict finding from this target: the comparison compared something


def test_remote_target_gates_the_exit_code(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    path = make_adapter(tmp_path)  # a kohya-layout file: peft loads none of it
    hub.state.add_files("alice/cat", {path.name: path.read_bytes()})
    code, report = verify_json(capsys, f"hf://alice/cat/{path.name}", "--target", "peft")
    assert code == 1 and any(f["code"] == "LRG601" for f in report["findings"])
    code, report = verify_json(capsys, f"hf://alice/cat/{path.name}")
    assert code == 0 and consumer_findings(report) == []


def test_unknown_target_is_a_usage_error_before_any_request(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    code = cli.main(["verify", "hf://alice/cat/x.safetensors", "--target", "nonsense"])
    assert code == 2 and hub.state.requests == []
