"""`lorareg inspect` on files written by the real tools (tests/golden): format, network, rank, alpha."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraregistry.cli import main
from loraregistry.inspection import inspect_adapter

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))


def expected(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


@pytest.mark.parametrize("name", CASES)
def test_inspect_reports_what_the_writer_wrote(name):
    want = expected(name)
    got = inspect_adapter(GOLDEN / want["file"])
    assert got["format"] == want["format"]
    assert got["network_type"] == want["network_type"]
    assert got["components"] == {c: n for c, n in sorted(want["modules_per_component"].items(),
                                                         key=lambda kv: (-kv[1], kv[0]))}
    assert got["tensor_count"] == want["key_count"]
    assert got["unknown_keys"] == []
    network = got["metadata"]["network"]
    assert network["rank"] == want["rank"]
    assert got["hashes"]["autov3"] == want["tensor_sha256"]
    assert got["hashes"]["sha256"] == want["file_sha256"]
    stored_alpha = want["format"] == "kohya" or "lora_adapter_metadata" in want["metadata"]
    if stored_alpha:  # the weights' most common alpha (LyCORIS LoKr stores alpha = dim on full factors)
        most_common = max(want["alpha_values"].items(), key=lambda kv: kv[1])[0] if "alpha_values" in want else None
        assert network["alpha"] == float(most_common or want["alpha"])
    else:  # nothing in the file says alpha: the loaders' convention alpha = rank, marked as inferred
        assert network["alpha"] == want["rank"]
        assert "network.alpha" in got["inferred"]


def test_inspect_json_is_a_list_and_stable(capsys):
    files = [str(GOLDEN / expected(n)["file"]) for n in CASES[:3]]
    assert main(["inspect", "--json", *files]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in reports] == files
    assert all(r["schema_version"] == 1 for r in reports)


def test_inspect_human_output_names_format_rank_alpha(capsys):
    assert main(["inspect", str(GOLDEN / "sd1_kohya.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "kohya" in out and "4 x84" in out and "1 x84" in out


def test_deeply_nested_foreign_json_is_ignored_not_fatal(tmp_path):
    """Found by scripts/fuzz_verify.py: a lora_adapter_metadata of 100,000 nested arrays hit RecursionError."""
    from loraregistry.safetensors_io import read_header, rewrite_metadata
    from loraregistry.verify import verify

    path = tmp_path / "nested.safetensors"
    path.write_bytes((GOLDEN / "sd1_diffusers_unet_te.safetensors").read_bytes())
    meta = dict(read_header(path).metadata)
    meta["lora_adapter_metadata"] = "[" * 100_000 + "]" * 100_000
    rewrite_metadata(path, meta)
    report = inspect_adapter(path)
    assert report["format"] == "peft"
    assert verify(path).findings is not None
