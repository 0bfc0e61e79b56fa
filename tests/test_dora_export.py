"""diffusers' SDXL DoRA export (``train_dreambooth_lora_sdxl.py --use_dora``) reads as one format and verifies clean.

The file is made by the code path the script runs, not typed by hand: peft DoRA adapters on the tiny SDXL UNet
and both text encoders, ``get_peft_model_state_dict``, ``convert_state_dict_to_diffusers`` (which renames
``lora_A``/``lora_B`` to ``.lora.down``/``.lora.up`` but keeps ``lora_magnitude_vector``) and
``StableDiffusionXLPipeline.save_lora_weights``. The up factors are perturbed as a few training steps would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.formats import detect_format, from_canonical, to_canonical
from loraregistry.verify import verify

from .test_train_support import diffusers_load, one_thread  # noqa: F401 - fixture

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the script's defaults
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _dora_state(model, targets: list[str], seed: int) -> dict:
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    config = LoraConfig(r=4, lora_alpha=4, use_dora=True, init_lora_weights="gaussian", target_modules=targets)
    if hasattr(model, "set_adapters"):  # the diffusers UNet: the script's unet.add_adapter
        model.add_adapter(config)
    else:  # what transformers' text_encoder.add_adapter does (it needs a newer peft than this venv's)
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained adapter: lora_B starts at zero, training moves it
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


@pytest.fixture(scope="module")
def sdxl_dora(tmp_path_factory) -> tuple[Path, Path]:
    """(the exported file, a saved copy of the tiny SDXL base it was made on)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from loraregistry.train.tiny import tiny_pipeline

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("sdxl-dora")
    base = folder / "base"
    tiny_pipeline("sdxl").save_pretrained(base)
    pipe = tiny_pipeline("sdxl")
    StableDiffusionXLPipeline.save_lora_weights(
        folder / "out",
        unet_lora_layers=_dora_state(pipe.unet, UNET_TARGETS, 0),
        text_encoder_lora_layers=_dora_state(pipe.text_encoder, TEXT_TARGETS, 1),
        text_encoder_2_lora_layers=_dora_state(pipe.text_encoder_2, TEXT_TARGETS, 2),
    )
    return folder / "out" / "pytorch_lora_weights.safetensors", base


def test_the_export_spells_dora_as_diffusers_does(sdxl_dora):
    path, _ = sdxl_dora
    keys = list(AdapterFile.open(path).header.tensors)
    # What makes it tricky: older-diffusers factors next to peft's magnitude spelling, in one file.
    assert any(k.endswith(".lora.down.weight") for k in keys)
    assert any(k.endswith(".lora_linear_layer.up.weight") for k in keys)
    assert any(k.endswith(".lora_magnitude_vector") for k in keys)
    assert not any(".lora_A." in k or ".lora_B." in k for k in keys)


def test_it_is_one_format_and_verifies_clean_against_its_base(sdxl_dora):
    path, base = sdxl_dora
    detection = detect_format(AdapterFile.open(path).header.tensors)
    assert (detection.format, detection.unknown_keys) == ("diffusers", [])
    report = verify(path, base=str(base))
    assert (report.format, report.network_type) == ("diffusers", "dora")
    adapter = AdapterFile.open(path)
    assert report.modules == len(adapter.modules)
    assert all(info.dora and info.rank == 4 for info in adapter.modules.values())
    assert [f.code for f in report.findings if f.severity != "info"] == []
    assert report.ok


def test_keys_round_trip_with_the_same_spelling(sdxl_dora):
    path, _ = sdxl_dora
    keys = sorted(AdapterFile.open(path).header.tensors)
    mapping = to_canonical(keys)
    written = from_canonical(list(mapping.mapped.values()), format=mapping.format, dialect=mapping.dialect)
    assert sorted(written.values()) == keys


def test_diffusers_loads_every_module_as_dora(sdxl_dora, one_thread):  # noqa: F811
    path, _ = sdxl_dora
    pipe, patched, warnings = diffusers_load(path, "sdxl")
    adapter = AdapterFile.open(path)
    expected = {c: sum(1 for m in adapter.modules if m.component == c) for c in adapter.components}
    assert {c: n for c, n in patched.items() if n} == expected, warnings
    dora_layers = sum(1 for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
                      for _, m in model.named_modules()
                      if getattr(m, "lora_magnitude_vector", None) and "trained" in m.lora_magnitude_vector)
    assert dora_layers == len(adapter.modules)
