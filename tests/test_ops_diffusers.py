"""Op outputs in diffusers: they load into a tiny pipeline with nothing missing or unexpected, and a merged
adapter gives the UNet output of its parents stacked with the same weights."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.ops.convert import convert
from loraregistry.ops.merge import MergeInput, merge
from tests.tiny_models import tiny_pipeline

pytest.importorskip("diffusers")
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def sd1_dir(tmp_path_factory) -> str:
    """A saved tiny SD1 pipeline: the base the op outputs are verified against."""
    folder = tmp_path_factory.mktemp("tiny-sd1")
    tiny_pipeline("sd1").save_pretrained(folder)
    return str(folder)


def _load(pipe, path: Path, name: str) -> list[str]:
    """Load with diffusers' own loader; return the warnings it logged about keys."""
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Grab(level=logging.WARNING)
    loggers = [logging.getLogger("diffusers"), logging.getLogger("peft")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path), adapter_name=name)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    messages = records + [str(w.message) for w in caught]
    return [m for m in messages if any(w in m.lower() for w in ("unexpected", "missing", "not loaded", "not found"))]


def _patched(model, name: str) -> int:
    return sum(1 for _, m in model.named_modules() if hasattr(m, "lora_A") and name in m.lora_A)


def _unet_output(pipe):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return pipe.unet(x, 10, encoder_hidden_states=context).sample


@pytest.mark.parametrize("name", ["sd1_kohya", "sd1_lycoris_loha", "sd1_lycoris_lokr", "sd1_lycoris_locon"])
@pytest.mark.parametrize("to", ["peft", "diffusers"])
def test_converted_outputs_load_with_nothing_missing(tmp_path, sd1_dir, name, to):
    out = tmp_path / f"{name}.safetensors"
    result = convert(GOLDEN / f"{name}.safetensors", out, to=to, dtype="fp32", base=sd1_dir)
    assert result.output.report.ok
    adapter = AdapterFile.open(out)
    pipe = tiny_pipeline("sd1")
    assert _load(pipe, out, "x") == []
    expected = {c: sum(1 for m in adapter.modules if m.component == c) for c in ("unet", "text_encoder")}
    assert {"unet": _patched(pipe.unet, "x"), "text_encoder": _patched(pipe.text_encoder, "x")} == expected


def test_converted_kohya_gives_the_same_unet_output(tmp_path, sd1_dir):
    import torch

    src = GOLDEN / "sd1_kohya.safetensors"  # alpha 1, rank 4: scale 0.25 must survive
    pipe = tiny_pipeline("sd1")
    pipe.load_lora_weights(str(src), adapter_name="src")
    reference = _unet_output(pipe)
    for to in ("peft", "diffusers"):
        out = tmp_path / f"{to}.safetensors"
        convert(src, out, to=to, base=sd1_dir)
        other = tiny_pipeline("sd1")
        other.load_lora_weights(str(out), adapter_name="out")
        torch.testing.assert_close(_unet_output(other), reference, rtol=0, atol=0)


def test_merged_adapter_equals_the_stacked_parents(tmp_path, sd1_dir):
    import torch

    a, b = GOLDEN / "sd1_kohya.safetensors", GOLDEN / "sd1_diffusers_unet_te.safetensors"
    out = tmp_path / "merged.safetensors"
    result = merge([MergeInput(a, 0.8), MergeInput(b, -0.5)], out, dtype="fp32", base=sd1_dir)
    assert result.output.report.ok
    stacked = tiny_pipeline("sd1")
    stacked.load_lora_weights(str(a), adapter_name="a")
    stacked.load_lora_weights(str(b), adapter_name="b")
    stacked.set_adapters(["a", "b"], [0.8, -0.5])
    merged = tiny_pipeline("sd1")
    assert _load(merged, out, "m") == []
    expected = _unet_output(stacked)
    torch.testing.assert_close(_unet_output(merged), expected, rtol=1e-4, atol=1e-5)
