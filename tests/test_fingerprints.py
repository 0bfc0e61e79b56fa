"""Shipped module fingerprints: data, shape signals, lookups, the kohya flat-name index, regeneration."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loraregistry.architectures import (
    ARCHITECTURES,
    ModuleSpec,
    fingerprint,
    fingerprint_names,
    flat_name_index,
    kohya_default_targets,
)
from loraregistry.architectures.fingerprints import flatten
from loraregistry.canonical import COMPONENTS
from loraregistry.errors import UnknownArchitecture, UsageError

ROOT = Path(__file__).resolve().parent.parent
ARCH_DIR = ROOT / "loraregistry" / "architectures"


def block_indices(fp_name: str, component: str, prefix: str) -> set[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return {int(m.group(1)) for p in fingerprint(fp_name).paths(component) if (m := pattern.match(p))}


def test_every_architecture_has_shipped_data_and_config():
    names = set(fingerprint_names())
    assert names == {a.fingerprint for a in ARCHITECTURES.values()}
    assert names == {p.stem for p in (ARCH_DIR / "configs").glob("*.json")}
    for arch in ARCHITECTURES.values():
        assert set(fingerprint(arch.id).components) == set(arch.components), arch.id


def test_fingerprint_accepts_names_ids_and_aliases():
    assert fingerprint("sd2-768-v") is fingerprint("sd2")
    assert fingerprint("stable-diffusion-xl-v1-base/lora").name == "sdxl-base"
    assert fingerprint("flux1-schnell").name == "flux1"
    with pytest.raises(UnknownArchitecture):
        fingerprint("sd9")


@pytest.mark.parametrize(
    ("name", "expected"),
    [  # FORMATS.md "Default kohya targets"; refiner/SD3/Flux counted from the diffusers models
        ("sd1", {"unet": 192, "text_encoder": 72}),
        ("sd2", {"unet": 192, "text_encoder": 138}),
        ("sdxl-base", {"unet": 722, "text_encoder": 72, "text_encoder_2": 192}),
        ("sdxl-refiner", {"unet": 462, "text_encoder_2": 192}),
        ("sd3-medium", {"transformer": 333, "text_encoder": 72, "text_encoder_2": 192, "text_encoder_3": 0}),
        ("flux1", {"transformer": 494, "text_encoder": 72, "text_encoder_2": 0}),
    ],
)
def test_kohya_default_target_counts(name, expected):
    assert {c: len(kohya_default_targets(name, c)) for c in expected} == expected


def test_kohya_targets_t5_on_request_and_unknown_component():
    assert len(kohya_default_targets("flux1", "text_encoder_2", include_t5=True)) == 24 * 7
    with pytest.raises(UsageError):
        kohya_default_targets("sd1", "transformer")


@pytest.mark.parametrize(("name", "context_dim"), [("sd1", 768), ("sd2", 1024), ("sdxl-base", 2048), ("sdxl-refiner", 1280)])
def test_unet_cross_attention_input_dim(name, context_dim):
    fp = fingerprint(name)
    to_k = [fp.modules[k] for k in fp.modules if k.component == "unet" and k.path.endswith("attn2.to_k")]
    assert to_k and {spec.in_features for spec in to_k} == {context_dim}


def test_proj_in_is_conv_for_sd1_and_linear_for_sd2():
    path = "down_blocks.0.attentions.0.proj_in"
    assert fingerprint("sd1").lookup("unet", path) == ModuleSpec("conv", 320, 320, (1, 1))
    assert fingerprint("sd2").lookup("unet", path) == ModuleSpec("linear", 320, 320, None)


def test_sdxl_has_no_attention_in_first_down_block():
    assert not any(p.startswith("down_blocks.0.attentions") for p in fingerprint("sdxl-base").paths("unet"))


def test_text_encoder_widths():
    assert fingerprint("sd1").lookup("text_encoder", "text_model.encoder.layers.11.mlp.fc1").in_features == 768
    assert fingerprint("sd2").lookup("text_encoder", "text_model.encoder.layers.22.mlp.fc1").in_features == 1024
    assert fingerprint("sd2").lookup("text_encoder", "text_model.encoder.layers.23.mlp.fc1") is None
    assert fingerprint("sdxl-base").lookup("text_encoder_2", "text_model.encoder.layers.31.mlp.fc1").in_features == 1280
    t5 = fingerprint("sd3-medium").lookup("text_encoder_3", "encoder.block.23.layer.1.DenseReluDense.wi_0")
    assert t5 == ModuleSpec("linear", 4096, 10240)


def test_sd3_medium_is_1536_wide_with_24_joint_blocks():
    assert block_indices("sd3-medium", "transformer", "transformer_blocks") == set(range(24))
    assert fingerprint("sd3-medium").lookup("transformer", "transformer_blocks.0.attn.to_q").in_features == 1536
    # the last block is context_pre_only: no context output projection
    assert fingerprint("sd3-medium").lookup("transformer", "transformer_blocks.23.attn.to_add_out") is None


def test_flux_is_3072_wide_with_19_double_and_38_single_blocks():
    assert block_indices("flux1", "transformer", "transformer_blocks") == set(range(19))
    assert block_indices("flux1", "transformer", "single_transformer_blocks") == set(range(38))
    assert fingerprint("flux1").lookup("transformer", "transformer_blocks.0.attn.to_q").in_features == 3072


def test_lookup_accepts_clip_paths_with_or_without_text_model():
    fp = fingerprint("sdxl-base")
    with_level = fp.lookup("text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj")
    assert with_level == ModuleSpec("linear", 1280, 1280)
    assert fp.lookup("text_encoder_2", "encoder.layers.0.self_attn.q_proj") == with_level
    assert fp.lookup("text_encoder_2", "text_projection") == ModuleSpec("linear", 1280, 1280)
    assert fp.lookup("text_encoder", "text_model.encoder.layers.12.self_attn.q_proj") is None
    assert fp.lookup("transformer", "transformer_blocks.0.attn.to_q") is None
    assert fingerprint("sd1").lookup("unet", "conv_in").weight_shape == (320, 4, 3, 3)


@pytest.mark.parametrize("component", COMPONENTS)
def test_flat_name_index_is_collision_free_and_complete(component):
    all_paths = {p for name in fingerprint_names() for p in fingerprint(name).paths(component)}
    index = flat_name_index(component)  # raises on a collision
    assert len(index) == len(all_paths)
    assert {flatten(p): p for p in all_paths} == index


def test_flat_name_index_examples():
    unet = flat_name_index("unet")
    assert unet["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] == (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    assert unet["up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj"].endswith("ff.net.0.proj")
    te = flat_name_index("text_encoder")
    assert te["text_model_encoder_layers_0_self_attn_q_proj"] == "text_model.encoder.layers.0.self_attn.q_proj"
    unet.clear()  # callers get a copy
    assert flat_name_index("unet")


def test_shipped_data_is_compact_and_torch_free():
    for path in (ARCH_DIR / "data").glob("*.json.gz"):
        if path.name == "index.json.gz":  # derived from the others: tests/test_speed_verify_fingerprints.py
            continue
        assert path.stat().st_size < 16_000, path
        assert json.loads(gzip.decompress(path.read_bytes()))["format"] == 1
    code = (
        "import sys, loraregistry.architectures as a; "
        "[a.flat_name_index(c) for c in ('unet', 'transformer')]; a.fingerprint('flux1'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_generator_reproduces_shipped_data(tmp_path):
    for module in ("torch", "diffusers", "transformers"):
        pytest.importorskip(module, reason=f"regenerating fingerprints needs {module} (the train extra)")
    spec = importlib.util.spec_from_file_location("gen_fingerprints", ROOT / "scripts" / "gen_fingerprints.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(out_dir=tmp_path)
    assert set(written) == set(fingerprint_names())
    for name, path in written.items():
        shipped = ARCH_DIR / "data" / f"{name}.json.gz"
        assert gzip.decompress(path.read_bytes()) == gzip.decompress(shipped.read_bytes()), (
            f"{name}: fingerprint changed; run scripts/gen_fingerprints.py and review the diff"
        )
        assert path.read_bytes() == shipped.read_bytes(), f"{name}: same content, different gzip bytes"
