"""``convert --rank`` does what it says or refuses; ``--max-error`` bounds what a lowering may cost (exit 1,
nothing written, unless ``--force``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loraregistry.cli import main
from loraregistry.ops.convert import DEFAULT_MAX_ERROR
from loraregistry.ops.delta import module_delta
from tests.adapters import lora_tensors, write_adapter

GOLDEN = Path(__file__).parent / "golden"
LOHA = GOLDEN / "sd1_lycoris_loha.safetensors"  # tiny-model shapes: its outputs fail verify (no base fits)
LORA = GOLDEN / "sd1_kohya.safetensors"


@pytest.fixture
def loha_sd1(tmp_path) -> Path:
    """A LoHa (rank 2 x 2: exact as plain LoRA at rank 4) on real SD1.5 modules, so that outputs pass verify."""
    rng = np.random.default_rng(5)
    tensors = {}
    for key, array in lora_tensors("sd1", rank=2, seed=5).items():
        stem, _, suffix = key.partition(".")
        if suffix == "lora_down.weight":
            for half in ("1", "2"):
                tensors[f"{stem}.hada_w{half}_b"] = rng.normal(0, 0.3, array.reshape(2, -1).shape).astype(np.float16)
        elif suffix == "lora_up.weight":
            for half in ("1", "2"):
                tensors[f"{stem}.hada_w{half}_a"] = rng.normal(0, 0.3, array.reshape(-1, 2).shape).astype(np.float16)
        else:
            tensors[key] = array
    return write_adapter(tmp_path / "loha.safetensors", tensors)


def _convert(tmp_path, src, *options):
    out = tmp_path / "out.safetensors"
    return main(["convert", str(src), "-o", str(out), *options]), out


@pytest.mark.parametrize("src, options, phrase", [
    (LOHA, ["--to", "kohya", "--rank", "2"], "kohya keeps LoCon, LoHa and LoKr"),
    (LORA, ["--to", "peft", "--rank", "2"], "no module of this adapter has to become plain LoRA"),
    (LORA, ["--to", "diffusers", "--rank", "1"], "no module of this adapter has to become plain LoRA"),
], ids=["loha-to-kohya", "lora-to-peft", "lora-to-diffusers"])
def test_rank_that_would_be_ignored_is_refused(tmp_path, capsys, src, options, phrase):
    code, out = _convert(tmp_path, src, *options)
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and str(src) in err and "lorareg resize" in err
    assert not out.exists()


def test_lossy_rank_beyond_max_error_exits_1_and_writes_nothing(tmp_path, capsys):
    code, out = _convert(tmp_path, LOHA, "--to", "peft", "--rank", "2")  # fails before verify: up to 80% error
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"more than --max-error {DEFAULT_MAX_ERROR:g}" in err and "nothing written" in err and str(LOHA) in err
    assert "text_encoder:" in err  # names the worst modules
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_max_error_allows_the_loss_and_reports_it_per_module(tmp_path, capsys, loha_sd1):
    code, out = _convert(tmp_path, loha_sd1, "--to", "peft", "--rank", "2", "--max-error", "0.95", "--json")
    captured = capsys.readouterr()
    assert code == 0 and out.exists(), captured.err
    summary = json.loads(captured.out)
    assert summary["max_error"] == 0.95 and summary["over_max_error"] == 0
    errors = [c["rel_error"] for c in summary["changed"] if c["change"] == "lowered"]
    assert errors and 0.01 < max(errors) <= 0.95 and summary["max_rel_error"] == max(errors)


def test_force_writes_a_lossy_result_with_a_warning(tmp_path, capsys):
    code, out = _convert(tmp_path, LOHA, "--to", "peft", "--rank", "2", "--force", "--json")
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 0 and out.exists() and summary["over_max_error"] > 0
    assert "changed by more than --max-error" in captured.err


def test_rank_that_keeps_lowering_exact_is_accepted(tmp_path, capsys, loha_sd1):
    from loraregistry.adapter import AdapterFile
    from loraregistry.ops.common import by_module
    from loraregistry.ops.io import load_canonical

    code, out = _convert(tmp_path, loha_sd1, "--to", "peft", "--rank", "4", "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["lowered"] > 0 and summary["approximate"] == 0
    before = by_module(load_canonical(AdapterFile.open(loha_sd1)))
    after = by_module(load_canonical(AdapterFile.open(out)))
    for module, roles in before.items():
        d0 = module_delta(roles)
        d1 = module_delta(after[module]).reshape(d0.shape)
        assert np.linalg.norm(d1 - d0) <= 1e-3 * np.linalg.norm(d0)


@pytest.mark.parametrize("value", ["-0.1", "nan", "x"])
def test_max_error_must_be_a_number_at_least_0(tmp_path, capsys, value):
    code, out = _convert(tmp_path, LOHA, "--to", "peft", "--max-error", value)
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.startswith("lorareg: error: ")


def test_library_refuses_a_lossy_conversion_too(tmp_path):
    from loraregistry.ops.convert import convert
    from loraregistry.ops.errors import TooLossy

    with pytest.raises(TooLossy) as caught:
        convert(LOHA, tmp_path / "out.safetensors", to="peft", rank=1, max_error=0.5)
    assert caught.value.exit_code == 1 and caught.value.path == str(LOHA)
    assert not (tmp_path / "out.safetensors").exists()
