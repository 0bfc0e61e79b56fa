"""SD3 / SD3.5 LoRA key formats (kohya ``lora_unet_joint_blocks_*``, peft, BFL-native ``diffusion_model.joint_blocks``)
and exact conversions, against a tiny seeded ``SD3Transformer2DModel`` with an SD3.5-medium-style ``attn2`` block and
a ``context_pre_only`` last block; plus the fused-target facts checked against every shipped SD3/Flux fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraregistry.architectures import fingerprint
from loraregistry.canonical import CanonicalKey
from loraregistry.formats import from_canonical, fused_targets, mmdit, to_canonical
from loraregistry.ops.convert import convert
from loraregistry.ops.fused import split_sizes
from loraregistry.safetensors_io import load_tensors
from tests.test_formats_flux import (
    TR,
    assert_diffusers_loads_exactly,
    assert_same_deltas,
    expected_deltas,
    file_deltas,
    kohya_native_file,
    native_modules,
)

SD3_TINY = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
                dual_attention_layers=(0,))
# the last block is context_pre_only: its context adaLN stores [shift, scale] like the final layer
SWAPPED = {"norm_out.linear", "transformer_blocks.1.norm1_context.linear"}


def tiny_sd3():
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(**SD3_TINY).eval()


@pytest.fixture(scope="module")
def sd3_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3_base")
    tiny_sd3().save_pretrained(folder / "transformer")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    return folder


@pytest.fixture(scope="module")
def sd3_modules():
    return native_modules(tiny_sd3(), mmdit.SD3, blocks=2)


def _sizes(modules):
    return {path: outs for path, outs, _ in modules.values()}


def test_the_tiny_model_has_every_kind_of_sd3_module(sd3_modules):
    names = set(sd3_modules)
    assert {"joint_blocks.0.x_block.attn2.qkv", "joint_blocks.1.context_block.adaLN_modulation.1",
            "final_layer.adaLN_modulation.1", "context_embedder"} <= names
    assert "joint_blocks.1.context_block.mlp.fc1" not in names  # context_pre_only: no context MLP
    path, outs, inn = sd3_modules["joint_blocks.1.context_block.adaLN_modulation.1"]
    assert sum(outs) == 2 * inn  # [shift, scale] only: the shape that tells the swapped block


KEYS = [
    ("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight", (TR, "transformer_blocks.0.attn.{to_q,to_k,to_v}", "up")),
    ("lora_unet_joint_blocks_0_x_block_attn2_qkv.alpha", (TR, "transformer_blocks.0.attn2.{to_q,to_k,to_v}", "alpha")),
    ("lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.lora_down.weight",
     (TR, "transformer_blocks.1.norm1_context.linear", "down")),
    ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
     ("text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj", "down")),
    ("lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight",
     ("text_encoder_3", "encoder.block.0.layer.0.SelfAttention.q", "down")),
]
BFL_KEYS = [
    ("diffusion_model.joint_blocks.3.context_block.attn.qkv.lora_A.weight",
     (TR, "transformer_blocks.3.attn.{add_q_proj,add_k_proj,add_v_proj}", "down")),
    ("diffusion_model.y_embedder.mlp.2.lora_B.weight", (TR, "time_text_embed.text_embedder.linear_2", "up")),
    ("text_encoders.clip_g.transformer.text_model.encoder.layers.31.mlp.fc2.lora_A.weight",
     ("text_encoder_2", "text_model.encoder.layers.31.mlp.fc2", "down")),
    ("text_encoders.t5xxl.transformer.encoder.block.23.layer.1.DenseReluDense.wo.lora_B.weight",
     ("text_encoder_3", "encoder.block.23.layer.1.DenseReluDense.wo", "up")),
]


@pytest.mark.parametrize(("keys", "fmt"), [(KEYS, "kohya"), (BFL_KEYS, "bfl")], ids=["kohya", "bfl"])
def test_sd3_keys_map_to_canonical_and_back(keys, fmt):
    mapping = to_canonical([k for k, _ in keys])
    assert mapping.format == fmt and mapping.unknown == [] and mapping.dialect["transformer_names"] == "sd3"
    assert {k: tuple(v) for k, v in mapping.mapped.items()} == dict(keys)
    written = from_canonical(mapping.mapped.values(), format=fmt, dialect=mapping.dialect)
    assert {written[c]: c for c in mapping.mapped.values()} == mapping.mapped


@settings(max_examples=150, deadline=None)
@given(template=st.sampled_from(sorted(mmdit.SD3.items())), block=st.integers(0, 37),
       prefix=st.sampled_from(["diffusion_model.", ""]), role=st.sampled_from(["down", "up", "alpha"]))
def test_property_sd3_bfl_and_kohya_names_agree(template, block, prefix, role):
    native, canonical = (t.replace("{i}", str(block)) for t in template)
    ckey = CanonicalKey(TR, canonical, role)
    suffix = {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha"}[role]
    for fmt, dialect in (("bfl", {"bfl_prefix": prefix, "transformer_names": "sd3"}),
                         ("kohya", {"transformer_names": "sd3"})):
        key = from_canonical([ckey], format=fmt, dialect=dialect)[ckey]
        assert key == (f"{prefix}{native}.{suffix}" if fmt == "bfl" else f"lora_unet_{native.replace('.', '_')}.{suffix}")
        assert set(to_canonical([key]).mapped.values()) == {ckey}


@pytest.mark.parametrize("name", ["sd3-medium", "sd35-medium", "sd35-large", "flux1"])
def test_fused_targets_and_split_sizes_fit_the_shipped_fingerprints(name):
    """Every fused original module's targets exist at their real shapes, share the input, and the structural rule
    used for unknown (tiny) shapes gives the same split as the fingerprint."""
    fp = fingerprint(name)
    table = mmdit.FLUX if name.startswith("flux") else mmdit.SD3
    checked = 0
    for canonical in table.values():
        if not mmdit.is_fused(canonical.replace("{i}", "0")):
            continue
        path = canonical.replace("{i}", "0")
        specs = [fp.lookup(TR, t) for t in fused_targets(path)]
        if name != "sd35-medium" and ".attn2." in path:
            assert specs == [None] * 3  # only SD3.5 medium has the second (dual) attention
            continue
        assert all(specs), path
        assert len({s.in_features for s in specs}) == 1
        outs = [s.out_features for s in specs]
        assert split_sizes(fused_targets(path), sum(outs), label=path) == outs
        weights = [4 if t.endswith("proj_mlp") else 1 for t in fused_targets(path)]
        assert [o // outs[0] for o in outs] == weights and all(o % outs[0] == 0 for o in outs)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("chain", [["bfl", "kohya"], ["peft", "kohya"], ["peft", "bfl", "peft", "kohya"]])
def test_sd3_round_trips_are_bitwise(tmp_path, sd3_base, sd3_modules, chain):
    src = tmp_path / "kohya.safetensors"
    original = kohya_native_file(src, sd3_modules, dtype=np.float16, alpha=2.0, seed=2)  # alpha != rank 4
    current = src
    for i, fmt in enumerate(chain):
        out = tmp_path / f"{i}_{fmt}.safetensors"
        assert convert(current, out, to=fmt, base=str(sd3_base)).output.report.ok
        current = out
    back = load_tensors(current)
    assert back.keys() == original.keys()
    for key, value in original.items():
        if not key.endswith("alpha"):
            assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes(), key
        else:
            assert float(back[key]) == float(value)


def test_sd3_conversions_keep_every_delta_with_scale_shift_rows_reordered(tmp_path, sd3_base, sd3_modules):
    src = tmp_path / "kohya.safetensors"
    tensors = kohya_native_file(src, sd3_modules, rank=3, alpha=1.0, seed=4)
    want = {f"{TR}:{k}": v for k, v in expected_deltas(tensors, sd3_modules, SWAPPED).items()}
    for fmt in ("peft", "diffusers", "bfl"):
        out = tmp_path / f"out_{fmt}.safetensors"
        convert(src, out, to=fmt, base=str(sd3_base))
        native = fmt == "bfl"
        assert_same_deltas(file_deltas(out, _sizes(sd3_modules), SWAPPED if native else set()), want)


@pytest.mark.slow
def test_diffusers_loads_our_peft_conversion_of_a_kohya_sd3_lora(tmp_path, sd3_base, sd3_modules):
    import torch

    src = tmp_path / "kohya.safetensors"
    tensors = kohya_native_file(src, sd3_modules, rank=4, alpha=8.0, seed=5)
    peft = tmp_path / "pytorch_lora_weights.safetensors"
    convert(src, peft, to="peft", base=str(sd3_base))
    want = {f"{TR}:{k}": v for k, v in expected_deltas(tensors, sd3_modules, SWAPPED).items()}
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(1, 3, 16, generator=g),
                  pooled_projections=torch.randn(1, 16, generator=g), timestep=torch.tensor([500.0]))
    assert_diffusers_loads_exactly(tiny_sd3(), peft, want, inputs)


@pytest.mark.parametrize(("name", "last"), [("sd3-medium", 23), ("sd35-medium", 23), ("sd35-large", 37)])
def test_real_shapes_detect_and_convert_exactly(tmp_path, name, last):
    """First and last (context_pre_only) blocks at the fingerprint's real shapes: the file is detected as that
    base, converts to peft with verify clean, and every delta (probed: the dense ones are large) is the file's."""
    from loraregistry.adapter import AdapterFile
    from tests.test_formats_flux import probe

    fp = fingerprint(name)
    modules = {}
    for native, canonical in mmdit.SD3.items():
        for i in [0, last] if "{i}" in native else [None]:
            native_name, path = native.replace("{i}", str(i)), canonical.replace("{i}", str(i))
            specs = [fp.lookup(TR, t) for t in fused_targets(path)]
            if all(specs) and specs[0].kind == "linear":
                modules[native_name] = (path, [s.out_features for s in specs], specs[0].in_features)
    src = tmp_path / "kohya.safetensors"
    tensors = kohya_native_file(src, modules, rank=2, alpha=1.0, seed=9)
    assert AdapterFile.open(src).format == "kohya"
    out = tmp_path / "peft.safetensors"
    result = convert(src, out, to="peft")
    assert [f.code for f in result.output.report.findings if f.severity != "info"] == []
    assert result.output.report.detected_architecture == name
    right = probe(2)
    swapped = {"norm_out.linear", f"transformer_blocks.{last}.norm1_context.linear"}
    want = {f"{TR}:{k}": v for k, v in expected_deltas(tensors, modules, swapped, right).items()}
    assert_same_deltas(file_deltas(out, right=right), want)
