"""Header-only verify (``verify_header``, remote files): the header checks on a parsed header alone, with
stored alpha values unknown rather than absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.safetensors_io import read_header
from loraregistry.verify import verify, verify_header
from tests.adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter

GOLDEN = Path(__file__).parent / "golden"
# Header checks that read alpha values: a header-only verify cannot report them.
ALPHA_VALUE_CODES = {"LRG304", "LRG305", "LRG509"}


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.safetensors")), ids=lambda p: p.stem)
def test_golden_header_verify_matches_local_header_verify(path):
    local = verify(path, tensors=False)
    remote = verify_header(read_header(path), source=f"hf://u/r/{path.name}", file_size=path.stat().st_size)
    assert set(remote.codes()) <= set(local.codes())
    assert set(local.codes()) - set(remote.codes()) <= ALPHA_VALUE_CODES  # LoKr: ss_network_alpha vs stored alpha
    assert (remote.format, remote.network_type, remote.detected_architecture, remote.modules, remote.fitted) == (
        local.format, local.network_type, local.detected_architecture, local.modules, local.fitted)
    assert remote.path == f"hf://u/r/{path.name}" and not remote.tensors_checked


def test_stored_alpha_is_unknown_not_absent():
    path = GOLDEN / "sd1_kohya.safetensors"
    opened = AdapterFile.open(path)
    remote = AdapterFile.from_header(read_header(path), path="hf://u/r/sd1_kohya.safetensors", file_size=None)
    assert remote.file_size == path.stat().st_size and remote.alphas_unknown and not opened.alphas_unknown
    for key, info in remote.modules.items():
        assert info.alpha is None and info.alpha_unknown and info.effective_alpha is None
        assert info.rank == opened.modules[key].rank and opened.modules[key].alpha == 1.0
    assert remote.facts.alpha is None and remote.facts.rank == opened.facts.rank == 4


def test_no_alpha_stored_is_still_alpha_equals_rank():
    path = GOLDEN / "sd1_diffusers_train_script.safetensors"
    remote = AdapterFile.from_header(read_header(path), path="x")
    assert not remote.alphas_unknown
    assert all(m.effective_alpha == float(m.rank) for m in remote.modules.values())


ALPHA_CASES = [c.build for c in KNOWN_BAD_ADAPTERS if c.code in ("LRG304", "LRG305")] + [
    lambda d: write_adapter(d / "declared_alpha_differs.safetensors", lora_tensors("sd1"),  # stored alpha 1.0
                            {"ss_network_dim": "2", "ss_network_alpha": "32"})]


@pytest.mark.parametrize("build", ALPHA_CASES)
def test_defects_in_alpha_values_are_unknown_from_the_header(build, tmp_path):
    path = build(tmp_path)
    assert set(verify(path, tensors=False).codes()) & ALPHA_VALUE_CODES
    remote = verify_header(read_header(path), source=str(path))
    assert not set(remote.codes()) & ALPHA_VALUE_CODES, remote.codes()


def test_declared_rank_is_still_checked_from_the_header(tmp_path):
    path = write_adapter(tmp_path / "r.safetensors", lora_tensors("sd1"), {"ss_network_dim": "64"})
    (found,) = [f for f in verify_header(read_header(path), source="r").findings if f.code == "LRG509"]
    assert found.message.startswith("network.rank:")


@pytest.mark.parametrize("case", [c for c in KNOWN_BAD_ADAPTERS if c.code.startswith(("LRG1", "LRG2", "LRG3"))
                                  and c.code not in ALPHA_VALUE_CODES], ids=lambda c: c.name)
def test_header_defects_found_from_the_header(case, tmp_path):
    path = case.build(tmp_path)
    try:
        header = read_header(path)
    except Exception:  # noqa: BLE001 - container defects are not header-level adapter defects
        pytest.skip("not a readable container")
    assert case.code in verify_header(header, base=case.base, source=str(path)).codes()


def test_sd1_against_sdxl_base_says_what_it_is(tmp_path):
    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    report = verify_header(read_header(path), base="sdxl-base", source="https://example.org/a.safetensors")
    (found,) = [f for f in report.findings if f.code == "LRG203"]
    assert "this is an sd1 adapter" in found.message and not report.ok
    assert report.requested_base == "sdxl-base"


@pytest.mark.parametrize(("delta", "code"), [(-4, "LRG002"), (8, "LRG012")])
def test_file_size_that_differs_from_the_header(tmp_path, delta, code):
    from loraregistry.verify.findings import CODES

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    header = read_header(path)
    report = verify_header(header, source="remote", file_size=header.total_size + delta)
    assert report.codes() == [code], [f.message for f in report.findings]
    assert CODES[code].name in ("truncated-file", "trailing-bytes")


def test_unreadable_keys_from_the_header(tmp_path):
    path = write_adapter(tmp_path / "e.safetensors", {"foo.bar": np.zeros(2, np.float16)})
    assert verify_header(read_header(path), source="e").codes() == ["LRG101"]


def test_remote_header_that_is_no_container_gives_a_report(monkeypatch):
    from loraregistry.errors import TruncatedFileError
    from loraregistry.hub import remote

    def broken(uri, **kwargs):
        raise TruncatedFileError("header length 4096 points past the end of the file (100 bytes)", path=uri)

    monkeypatch.setattr(remote, "read_remote_header", broken)
    report = remote.verify_remote("hf://u/r/a.safetensors", base="sd1")
    assert report.codes() == ["LRG003"] and report.path == "hf://u/r/a.safetensors"
    assert report.requested_base == "sd1" and not report.tensors_checked


def test_remote_verify_passes_size_and_base(monkeypatch, tmp_path):
    from loraregistry.hub import remote

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sd1"))
    header = read_header(path)
    monkeypatch.setattr(remote, "read_remote_header", lambda uri, **kw: remote.RemoteHeader(
        url=uri, header=header, file_size=path.stat().st_size + 8, bytes_read=8 + header.header_size))
    assert remote.verify_remote("https://h/a.safetensors").codes() == ["LRG012"]  # 8 trailing bytes
    monkeypatch.setattr(remote, "read_remote_header", lambda uri, **kw: remote.RemoteHeader(
        url=uri, header=header, file_size=path.stat().st_size, bytes_read=8 + header.header_size))
    assert "LRG203" in remote.verify_remote("https://h/a.safetensors", base="sdxl-base").codes()
