"""Report: verdict, exit codes, JSON shape; verify never raises for a bad file, only for bad usage."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraregistry.errors import FileAccessError, LoraregError
from loraregistry.verify import REPORT_SCHEMA_VERSION, Report, verify
from loraregistry.verify.findings import finding
from tests.adapters import lora_tensors, write_adapter


def test_exit_codes():
    clean = Report(path="a", findings=[finding("missing-license", "m")])
    warned = Report(path="a", findings=[finding("conv-shaped-linear", "m")])
    failed = Report(path="a", findings=[finding("non-finite-values", "m")])
    assert (clean.ok, clean.exit_code(), clean.exit_code(strict=True)) == (True, 0, 0)
    assert (warned.ok, warned.exit_code(), warned.exit_code(strict=True)) == (True, 0, 1)
    assert (failed.ok, failed.exit_code(), failed.exit_code(strict=True)) == (False, 1, 1)
    assert failed.summary == {"error": 1, "warning": 0, "info": 0}


def test_to_dict_is_json_with_a_schema_version(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    data = verify(path).to_dict()
    assert data["schema_version"] == REPORT_SCHEMA_VERSION
    assert json.loads(json.dumps(data)) == data
    assert data["detected_architecture"] == "sd1" and data["format"] == "kohya" and data["network_type"] == "lora"
    assert data["modules"] == 19 and data["tensors_checked"] is True and data["ok"] is True
    assert {f["code"] for f in data["findings"]} == {"LRG502", "LRG503"}
    assert set(data["findings"][0]) == {"code", "name", "severity", "family", "message", "key", "hint"}


def test_usage_problems_raise(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    with pytest.raises(LoraregError):
        verify(path, base="not-a-base")
    with pytest.raises(FileAccessError):
        verify(tmp_path / "missing.safetensors")
    with pytest.raises(FileAccessError):
        verify(tmp_path)


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    tensors = lora_tensors("sd1", components=("text_encoder",))
    metadata = {"ss_network_dim": "2", "modelspec.architecture": "stable-diffusion-v1/lora",
                "lorareg": '{"schema_version":"1","license":"mit"}'}
    return write_adapter(path, tensors, metadata).read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_give_reports_not_tracebacks(good_bytes, tmp_path, data):
    blob = bytearray(good_bytes)
    (header_length,) = struct.unpack("<Q", blob[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        in_header = data.draw(st.booleans())
        at = data.draw(st.integers(8, 8 + header_length - 1) if in_header else st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(blob))
    report = verify(path)
    assert isinstance(report, Report)
    json.dumps(report.to_dict())


def test_verify_never_imports_torch(tmp_path):
    import subprocess
    import sys

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    code = ("import sys; from loraregistry.verify import verify; r = verify(sys.argv[1], base='sd1'); "
            "assert r.ok; bad = [m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_the_package_attribute_calls_verify_after_the_subpackage_is_imported(tmp_path):
    import loraregistry
    import loraregistry.verify  # binds loraregistry.verify to the subpackage

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    assert loraregistry.verify(path, base="sd1", tensors=False).ok
