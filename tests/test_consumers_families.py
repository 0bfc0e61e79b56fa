"""Every family answered: SD3/FLUX files get real verdicts from the loaders that model them, and "not modelled"
(LRG608, info) from the others, which gates ``verify --target`` only under ``--strict``."""

from __future__ import annotations

import numpy as np
import pytest

from loraregistry.cli import main
from loraregistry.safetensors_io import write_safetensors
from tests.test_verify_mmdit import FLUX


@pytest.fixture
def kohya_flux(tmp_path):
    """sd-scripts ``networks.lora_flux`` layout at FLUX.1-dev shapes (rank 2)."""
    rng = np.random.default_rng(0)
    tensors = {}
    for name, fin, fout in FLUX:
        tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((2, fin)) * 0.01).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((fout, 2)) * 0.01).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(2.0, dtype=np.float16)
    path = tmp_path / "flux.safetensors"
    write_safetensors(path, tensors, {"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux"})
    return path


@pytest.mark.parametrize(("target", "strict", "code"), [
    ("comfyui", False, 0),  # ComfyUI maps every lora_unet_* Flux key: it loads (was LRG601 "loads nothing")
    ("forge", False, 0),
    ("kohya", False, 0),  # networks.lora does not model Flux: an info, no gate ...
    ("kohya", True, 1),  # ... unless --strict
    ("a1111", True, 1),
    ("peft", False, 1),  # kohya keys are no peft parameter names: really nothing loads
])
def test_kohya_flux_targets(kohya_flux, target, strict, code, capsys):
    args = ["verify", str(kohya_flux), "--target", target, "--json"] + (["--strict"] if strict else [])
    assert main(args) == code
    out = capsys.readouterr().out
    if target in ("comfyui", "forge"):
        assert "LRG601" not in out and "LRG602" not in out
    if target in ("kohya", "a1111"):
        assert "LRG608" in out and "LRG601" not in out


def test_sd35_fingerprints_come_from_their_configs():
    from loraregistry.architectures.fingerprints import fingerprint

    large, medium = fingerprint("sd35-large"), fingerprint("sd35-medium")
    assert large.lookup("transformer", "transformer_blocks.37.attn.to_q").in_features == 2432  # 38 heads x 64
    assert large.lookup("transformer", "transformer_blocks.38.attn.to_q") is None
    assert medium.lookup("transformer", "transformer_blocks.12.attn2.to_q").in_features == 1536  # MMDiT-X
    assert medium.lookup("transformer", "transformer_blocks.13.attn2.to_q") is None
    assert fingerprint("sd3-medium").lookup("transformer", "transformer_blocks.0.attn2.to_q") is None


@pytest.mark.parametrize(("name", "arch"), [("sd3.5-large", "sd35-large"), ("SD 3.5 Medium", "sd35-medium"),
                                            ("stabilityai/stable-diffusion-3.5-large-turbo", "sd35-large")])
def test_sd35_aliases(name, arch):
    from loraregistry.architectures.ids import resolve

    assert resolve(name).id == arch and resolve(name).family == "sd3"
