"""kohya SD3/Flux files name fused modules (img_attn_qkv, linear1) that diffusers splits: they fit their base."""

from __future__ import annotations

import numpy as np
import pytest

from loraregistry.architectures.fingerprints import fingerprint
from loraregistry.safetensors_io import write_safetensors
from loraregistry.verify import verify

FLUX = [("lora_unet_double_blocks_0_img_attn_qkv", 3072, 3 * 3072),
        ("lora_unet_double_blocks_0_txt_attn_qkv", 3072, 3 * 3072),
        ("lora_unet_single_blocks_0_linear1", 3072, 3 * 3072 + 12288),
        ("lora_unet_single_blocks_0_linear2", 3072 + 12288, 3072)]


@pytest.mark.parametrize("path, want", [
    ("transformer_blocks.0.attn.{to_q,to_k,to_v}", (3072, 9216)),
    ("single_transformer_blocks.0.{attn.to_q,attn.to_k,attn.to_v,proj_mlp}", (3072, 21504)),
    ("transformer_blocks.0.attn.{to_q,nonexistent}", None),
])
def test_fused_paths_look_up_as_their_stacked_targets(path, want):
    spec = fingerprint("flux1").lookup("transformer", path)
    assert (spec.in_features, spec.out_features) == want if want else spec is None


def test_kohya_flux_file_verifies_clean(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {}
    for name, fin, fout in FLUX:
        tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((4, fin)) * 0.01).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((fout, 4)) * 0.01).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(4.0, dtype=np.float16)
    path = tmp_path / "flux.safetensors"
    write_safetensors(path, tensors, {"ss_base_model_version": "flux1"})
    report = verify(path)
    assert report.ok, [f.message for f in report.findings]
    assert report.detected_architecture == "flux1-dev"
    assert "LRG300" not in report.codes()
