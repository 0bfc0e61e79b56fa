"""Key formats: detection, mapping to/from canonical keys, SGM names, network types (keys only)."""

from __future__ import annotations

import sys
import types

import pytest

from loraregistry.canonical import NETWORK_TYPES, CanonicalKey, KeyMapping, ModuleKey
from loraregistry.errors import UnknownAdapterFormat, UsageError
from loraregistry.formats import (
    FORMATS,
    KeyFormat,
    ParsedKey,
    detect_format,
    flat_names,
    from_canonical,
    fused_targets,
    kohya,
    mmdit,
    network_type,
    register_format,
    roles_by_module,
    sgm,
    to_canonical,
)
from loraregistry.formats.flat_names import split_flat

# --- real module paths, shared with the property tests ----------------------------------------


def _attention(prefix: str, depth: int = 1) -> list[str]:
    paths = [f"{prefix}.proj_in", f"{prefix}.proj_out"]
    for t in range(depth):
        block = f"{prefix}.transformer_blocks.{t}"
        for attn in ("attn1", "attn2"):
            paths += [f"{block}.{attn}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")]
        paths += [f"{block}.ff.net.0.proj", f"{block}.ff.net.2"]
    return paths


def _resnet(prefix: str, shortcut: bool) -> list[str]:
    return [f"{prefix}.conv1", f"{prefix}.conv2", f"{prefix}.time_emb_proj"] + ([f"{prefix}.conv_shortcut"] if shortcut else [])


def unet_paths(levels: int) -> list[str]:
    """Linear/conv module paths of the standard SD UNet: 4 levels = SD1/SD2, 3 levels = SDXL
    (one transformer block per attention; down-block shortcuts left out, they vary by width)."""
    down_attention = [True, True, True, False] if levels == 4 else [False, True, True]
    up_attention = down_attention[::-1]
    paths = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
    if levels == 3:
        paths += ["add_embedding.linear_1", "add_embedding.linear_2"]
    for b in range(levels):
        for j in range(2):
            paths += _resnet(f"down_blocks.{b}.resnets.{j}", shortcut=False)
            if down_attention[b]:
                paths += _attention(f"down_blocks.{b}.attentions.{j}")
        if b < levels - 1:
            paths.append(f"down_blocks.{b}.downsamplers.0.conv")
        for j in range(3):
            paths += _resnet(f"up_blocks.{b}.resnets.{j}", shortcut=True)
            if up_attention[b]:
                paths += _attention(f"up_blocks.{b}.attentions.{j}")
        if b < levels - 1:
            paths.append(f"up_blocks.{b}.upsamplers.0.conv")
    paths += _resnet("mid_block.resnets.0", False) + _resnet("mid_block.resnets.1", False)
    paths += _attention("mid_block.attentions.0")
    return paths


def clip_paths(layers: int) -> list[str]:
    paths = []
    for n in range(layers):
        layer = f"text_model.encoder.layers.{n}"
        paths += [f"{layer}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        paths += [f"{layer}.mlp.fc1", f"{layer}.mlp.fc2"]
    return paths


def t5_paths(blocks: int) -> list[str]:
    paths = []
    for n in range(blocks):
        paths += [f"encoder.block.{n}.layer.0.SelfAttention.{p}" for p in "qkvo"]
        paths += [f"encoder.block.{n}.layer.1.DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wo")]
    return paths


def transformer_paths(family: str, blocks: int = 2) -> list[str]:
    """Canonical transformer paths that have an original name in ``family`` (fused ones included)."""
    paths = []
    for template in mmdit.FAMILIES[family].values():
        paths += sorted({template.replace("{i}", str(i)) for i in range(blocks)})
    return paths


def split_transformer_paths(family: str, blocks: int = 2) -> list[str]:
    """The same modules as diffusers has them: fused paths expanded into their targets."""
    return [t for p in transformer_paths(family, blocks) for t in fused_targets(p)]


# --- real example keys -> canonical keys and dialect ------------------------------------------

U, TE, TE2, TE3, TR = "unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer"

CASES = [
    pytest.param("kohya", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight":
            (U, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down"),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight":
            (U, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "up"),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha":
            (U, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "alpha"),
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0.lora_down.weight":
            (U, "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0", "down"),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight":
            (U, "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "down"),
        "lora_unet_down_blocks_1_attentions_1_proj_in.lora_down.weight":
            (U, "down_blocks.1.attentions.1.proj_in", "down"),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
            (TE, "text_model.encoder.layers.0.self_attn.q_proj", "down"),
        "lora_te_text_model_encoder_layers_11_mlp_fc2.alpha": (TE, "text_model.encoder.layers.11.mlp.fc2", "alpha"),
    }, {"unet_names": "diffusers", "te_prefix": "lora_te", "text_encoder.text_model": "yes"}, id="kohya-sd1"),
    pytest.param("kohya", {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight":
            (U, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "down"),
        "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2.lora_up.weight":
            (U, "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2", "up"),
        "lora_unet_middle_block_1_proj_out.alpha": (U, "mid_block.attentions.0.proj_out", "alpha"),
        "lora_unet_middle_block_2_emb_layers_1.lora_down.weight": (U, "mid_block.resnets.1.time_emb_proj", "down"),
        "lora_unet_output_blocks_0_1_transformer_blocks_3_attn1_to_out_0.lora_down.weight":
            (U, "up_blocks.0.attentions.0.transformer_blocks.3.attn1.to_out.0", "down"),
        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": (U, "down_blocks.0.resnets.0.conv1", "down"),
        "lora_unet_input_blocks_5_0_out_layers_3.lora_mid.weight": (U, "down_blocks.1.resnets.1.conv2", "mid"),
        "lora_unet_output_blocks_3_0_skip_connection.lora_down.weight": (U, "up_blocks.1.resnets.0.conv_shortcut", "down"),
        "lora_unet_input_blocks_3_0_op.lora_down.weight": (U, "down_blocks.0.downsamplers.0.conv", "down"),
        "lora_unet_output_blocks_2_2_conv.lora_down.weight": (U, "up_blocks.0.upsamplers.0.conv", "down"),
        "lora_unet_time_embed_0.lora_down.weight": (U, "time_embedding.linear_1", "down"),
        "lora_unet_label_emb_0_2.lora_down.weight": (U, "add_embedding.linear_2", "down"),
        "lora_unet_input_blocks_0_0.lora_down.weight": (U, "conv_in", "down"),
        "lora_unet_out_2.lora_down.weight": (U, "conv_out", "down"),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (TE, "text_model.encoder.layers.0.mlp.fc1", "down"),
        "lora_te2_text_model_encoder_layers_31_self_attn_out_proj.lora_up.weight":
            (TE2, "text_model.encoder.layers.31.self_attn.out_proj", "up"),
    }, {"unet_names": "sgm", "unet_levels": "3", "te_prefix": "lora_te1", "text_encoder.text_model": "yes",
        "text_encoder_2.text_model": "yes"}, id="kohya-sdxl-sgm"),
    pytest.param("kohya", {
        "lora_unet_output_blocks_2_1_conv.lora_down.weight": (U, "up_blocks.0.upsamplers.0.conv", "down"),
        "lora_unet_input_blocks_11_0_emb_layers_1.lora_down.weight": (U, "down_blocks.3.resnets.1.time_emb_proj", "down"),
    }, {"unet_names": "sgm", "unet_levels": "4"}, id="kohya-sd1-sgm-upsampler"),
    pytest.param("kohya", {
        "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (TR, "transformer_blocks.0.attn.{to_q,to_k,to_v}", "down"),
        "lora_unet_joint_blocks_0_x_block_attn_proj.lora_up.weight": (TR, "transformer_blocks.0.attn.to_out.0", "up"),
        "lora_unet_joint_blocks_3_context_block_attn_qkv.alpha":
            (TR, "transformer_blocks.3.attn.{add_q_proj,add_k_proj,add_v_proj}", "alpha"),
        "lora_unet_joint_blocks_3_context_block_mlp_fc2.lora_down.weight": (TR, "transformer_blocks.3.ff_context.net.2", "down"),
        "lora_unet_joint_blocks_1_x_block_adaLN_modulation_1.lora_down.weight": (TR, "transformer_blocks.1.norm1.linear", "down"),
        "lora_unet_final_layer_linear.lora_down.weight": (TR, "proj_out", "down"),
        "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight":
            (TE, "text_model.encoder.layers.0.self_attn.k_proj", "down"),
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight":
            (TE2, "text_model.encoder.layers.0.self_attn.k_proj", "down"),
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": (TE3, "encoder.block.0.layer.0.SelfAttention.q", "down"),
    }, {"transformer_names": "sd3", "te_prefix": "lora_te1", "text_encoder.text_model": "yes",
        "text_encoder_2.text_model": "yes", "t5_component": "text_encoder_3"}, id="kohya-sd3"),
    pytest.param("kohya", {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (TR, "transformer_blocks.0.attn.{to_q,to_k,to_v}", "down"),
        "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": (TR, "transformer_blocks.0.attn.to_out.0", "down"),
        "lora_unet_double_blocks_18_txt_mlp_0.lora_up.weight": (TR, "transformer_blocks.18.ff_context.net.0.proj", "up"),
        "lora_unet_double_blocks_2_txt_mod_lin.alpha": (TR, "transformer_blocks.2.norm1_context.linear", "alpha"),
        "lora_unet_single_blocks_0_linear1.lora_down.weight":
            (TR, "single_transformer_blocks.0.{attn.to_q,attn.to_k,attn.to_v,proj_mlp}", "down"),
        "lora_unet_single_blocks_37_linear2.lora_up.weight": (TR, "single_transformer_blocks.37.proj_out", "up"),
        "lora_unet_single_blocks_5_modulation_lin.lora_up.weight": (TR, "single_transformer_blocks.5.norm.linear", "up"),
        "lora_unet_img_in.lora_down.weight": (TR, "x_embedder", "down"),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
            (TE, "text_model.encoder.layers.0.self_attn.q_proj", "down"),
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0.lora_down.weight":
            (TE2, "encoder.block.0.layer.1.DenseReluDense.wi_0", "down"),
    }, {"transformer_names": "flux", "te_prefix": "lora_te1", "text_encoder.text_model": "yes",
        "t5_component": "text_encoder_2"}, id="kohya-flux"),
    pytest.param("kohya", {
        "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight":
            (TR, "single_transformer_blocks.0.attn.to_q", "down"),
        "lora_transformer_transformer_blocks_3_ff_context_net_0_proj.lora_up.weight":
            (TR, "transformer_blocks.3.ff_context.net.0.proj", "up"),
    }, {"transformer_names": "diffusers"}, id="kohya-transformer-diffusers-names"),
    pytest.param("kohya", {
        "lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a": (U, "down_blocks.0.resnets.0.conv1", "hada_w1_a"),
        "lora_unet_down_blocks_0_resnets_0_conv1.hada_w2_b": (U, "down_blocks.0.resnets.0.conv1", "hada_w2_b"),
        "lora_unet_down_blocks_0_resnets_0_conv1.hada_t1": (U, "down_blocks.0.resnets.0.conv1", "hada_t1"),
        "lora_unet_down_blocks_0_resnets_0_conv2.lokr_w1": (U, "down_blocks.0.resnets.0.conv2", "lokr_w1"),
        "lora_unet_down_blocks_0_resnets_0_conv2.lokr_w2_a": (U, "down_blocks.0.resnets.0.conv2", "lokr_w2_a"),
        "lora_unet_down_blocks_0_resnets_0_conv2.lokr_t2": (U, "down_blocks.0.resnets.0.conv2", "lokr_t2"),
        "lora_unet_up_blocks_0_resnets_0_conv_shortcut.diff": (U, "up_blocks.0.resnets.0.conv_shortcut", "diff"),
        "lora_unet_up_blocks_0_resnets_0_conv_shortcut.diff_b": (U, "up_blocks.0.resnets.0.conv_shortcut", "diff_b"),
        "lora_te_text_model_encoder_layers_0_self_attn_v_proj.dora_scale":
            (TE, "text_model.encoder.layers.0.self_attn.v_proj", "dora_scale"),
    }, {"unet_names": "diffusers", "te_prefix": "lora_te", "text_encoder.text_model": "yes"}, id="kohya-lycoris-suffixes"),
    pytest.param("kohya", {
        "lora_te_encoder_layers_0_self_attn_q_proj.lora_down.weight": (TE, "text_model.encoder.layers.0.self_attn.q_proj", "down"),
    }, {"te_prefix": "lora_te", "text_encoder.text_model": "no"}, id="kohya-te-without-text-model"),
    pytest.param("peft", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
            (U, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "down"),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight":
            (U, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "up"),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight":
            (TE, "text_model.encoder.layers.0.self_attn.q_proj", "down"),
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": (TE2, "text_model.encoder.layers.0.mlp.fc1", "up"),
    }, {"component_prefix": "yes", "text_encoder.text_model": "yes", "text_encoder_2.text_model": "yes"}, id="peft-sdxl"),
    pytest.param("peft", {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (TR, "transformer_blocks.0.attn.to_q", "down"),
        "transformer.single_transformer_blocks.3.proj_mlp.lora_B.weight": (TR, "single_transformer_blocks.3.proj_mlp", "up"),
        "transformer.single_transformer_blocks.3.proj_mlp.lora_B.bias": (TR, "single_transformer_blocks.3.proj_mlp", "up_bias"),
        "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": (TR, "transformer_blocks.0.attn.to_q", "dora_scale"),
    }, {"component_prefix": "yes", "dora_suffix": ""}, id="peft-flux-dora-bias"),
    pytest.param("peft", {
        "down_blocks.0.attentions.0.proj_in.lora_A.weight": (U, "down_blocks.0.attentions.0.proj_in", "down"),
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight":
            (U, "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", "up"),
    }, {"component_prefix": "no", "component": "unet"}, id="peft-bare-unet"),
    pytest.param("peft", {
        "base_model.model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight":
            (TE, "text_model.encoder.layers.0.self_attn.q_proj", "down"),
        "base_model.model.encoder.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight":
            (TE, "text_model.encoder.layers.0.self_attn.q_proj", "dora_scale"),
    }, {"outer_prefix": "base_model.model.", "component_prefix": "no", "component": "text_encoder",
        "adapter_name": "default", "dora_suffix": ".weight", "text_encoder.text_model": "no"}, id="peft-base-model-adapter-name"),
    pytest.param("diffusers", {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight":
            (U, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down"),
        "unet.up_blocks.1.resnets.0.conv1.lora.up.weight": (U, "up_blocks.1.resnets.0.conv1", "up"),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight":
            (TE, "text_model.encoder.layers.0.self_attn.q_proj", "down"),
        "text_encoder_2.text_model.encoder.layers.5.mlp.fc2.lora_linear_layer.up.weight":
            (TE2, "text_model.encoder.layers.5.mlp.fc2", "up"),
    }, {"component_prefix": "yes", "unet.layer": "lora", "text_encoder.layer": "lora_linear_layer",
        "text_encoder_2.layer": "lora_linear_layer", "text_encoder.text_model": "yes",
        "text_encoder_2.text_model": "yes"}, id="diffusers-lora-down"),
    pytest.param("attn_procs", {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight":
            (U, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down"),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight":
            (U, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "up"),
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_v_lora.up.weight":
            (U, "mid_block.attentions.0.transformer_blocks.0.attn2.to_v", "up"),
    }, {"component_prefix": "no", "component": "unet", "processor": "yes"}, id="attn-procs"),
    pytest.param("attn_procs", {
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight":
            (TE, "text_model.encoder.layers.0.self_attn.k_proj", "down"),
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out_lora.down.weight":
            (U, "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0", "down"),
    }, {"component_prefix": "yes", "processor": "no", "text_encoder.text_model": "yes"}, id="attn-procs-old-te"),
]


@pytest.mark.parametrize(("fmt", "expected", "dialect"), CASES)
def test_real_keys_map_to_canonical_and_back(fmt, expected, dialect):
    keys = list(expected)
    assert detect_format(keys).format == fmt
    mapping = to_canonical(keys)
    assert mapping.format == fmt
    assert mapping.unknown == []
    assert mapping.mapped == {k: CanonicalKey(*v) for k, v in expected.items()}
    assert mapping.dialect == dialect
    emitted = from_canonical(mapping.mapped.values(), format=fmt, dialect=mapping.dialect)
    assert {v: k for k, v in emitted.items()} == mapping.mapped


def test_mixed_formats_are_detected_and_each_key_mapped_by_its_claimant():
    keys = [
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "unet.down_blocks.0.attentions.0.proj_out.lora_A.weight",
        "bundle_emb.0.string_to_param.*",
    ]
    detection = detect_format(keys)
    assert detection.format == "mixed"
    assert detection.counts == {"kohya": 1, "peft": 1}
    assert detection.unknown_keys == ["bundle_emb.0.string_to_param.*"]
    mapping = to_canonical(keys)
    assert mapping.format == "mixed"
    assert mapping.mapped[keys[1]] == CanonicalKey("unet", "down_blocks.0.attentions.0.proj_out", "down")
    assert mapping.unknown == ["bundle_emb.0.string_to_param.*"]
    assert mapping.dialect["formats"] == "kohya,peft"
    assert mapping.dialect["kohya.unet_names"] == "diffusers"
    with pytest.raises(UsageError):
        from_canonical(mapping.mapped.values(), format="mixed")


_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
_TE_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(("keys", "expected", "counts"), [
    # diffusers' --use_dora export: .lora.down/.lora.up, peft's magnitude spelling kept (with or without .weight)
    ([f"{_Q}.lora.down.weight", f"{_Q}.lora.up.weight", f"{_Q}.lora_magnitude_vector"], "diffusers", {"diffusers": 3}),
    ([f"{_TE_Q}.lora_linear_layer.down.weight", f"{_TE_Q}.lora_linear_layer.up.weight",
      f"{_TE_Q}.lora_magnitude_vector.weight"], "diffusers", {"diffusers": 3}),
    # the same magnitude key next to lora_A/lora_B stays peft's
    ([f"{_Q}.lora_A.weight", f"{_Q}.lora_B.weight", f"{_Q}.lora_magnitude_vector"], "peft", {"peft": 3}),
    # keys no other claimed format reads keep the file mixed
    ([f"{_Q}.lora.down.weight", f"{_Q}.lora.up.weight", f"{_TE_Q}.lora_A.weight"], "mixed",
     {"diffusers": 2, "peft": 1}),
])
def test_a_key_two_formats_read_goes_to_the_format_of_the_other_keys(keys, expected, counts):
    detection = detect_format(keys)
    assert (detection.format, detection.counts) == (expected, counts)
    mapping = to_canonical(keys)
    assert mapping.format == expected
    if expected != "mixed":
        roles = sorted(ck.role for ck in mapping.mapped.values())
        assert roles == sorted(["down", "up", "dora_scale"])
        assert sorted(from_canonical(mapping.mapped.values(), format=expected, dialect=mapping.dialect).values()) \
            == sorted(keys)


@pytest.mark.parametrize("foreign", [
    "bundle_emb.0.string_to_param.*",
    "lora_unet_nonexistent_block_xyz.lora_down.weight",
    "lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks",  # LyCORIS OFT: no canonical role yet
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.bias",
    "unet.down_blocks.0.attentions.0.proj_in.lora_embedding_A",
    "some.module.lora_A.weight",  # bare path of no known component
    "lora_unet_input_blocks_3_1_proj_in.lora_down.weight",  # SGM level-0 downsampler holds no attention
])
def test_foreign_keys_are_unknown_and_kept(foreign):
    keys = ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", foreign]
    detection = detect_format(keys)
    assert (detection.format, detection.unknown_keys) == ("kohya", [foreign])
    mapping = to_canonical(keys)
    assert mapping.unknown == [foreign] and len(mapping.mapped) == 1


def test_no_known_key_raises_unknown_format():
    assert detect_format(["bundle_emb.0.string_to_param.*"]).format == "unknown"
    with pytest.raises(UnknownAdapterFormat):
        to_canonical(["bundle_emb.0.string_to_param.*"])
    with pytest.raises(UnknownAdapterFormat):
        to_canonical([])


def test_explicit_format_reports_keys_it_does_not_understand():
    mapping = to_canonical(["unet.conv_in.lora_A.weight", "lora_unet_conv_in.lora_down.weight"], format="kohya")
    assert mapping.unknown == ["unet.conv_in.lora_A.weight"]
    with pytest.raises(UsageError, match="unknown key format"):
        to_canonical(["x"], format="nope")


def test_two_keys_for_one_slot_keep_the_second_as_unknown():
    keys = ["unet.conv_in.lora_A.default.weight", "unet.conv_in.lora_A.other.weight"]
    mapping = to_canonical(keys)
    assert list(mapping.mapped) == keys[:1] and mapping.unknown == keys[1:]


def test_component_hint_maps_bare_t5_keys():
    key = "encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
    assert detect_format([key]).format == "unknown"
    mapping = to_canonical([key], component="text_encoder_3")
    assert mapping.mapped[key] == CanonicalKey("text_encoder_3", "encoder.block.0.layer.0.SelfAttention.q", "down")


# --- writing: defaults and impossible requests ------------------------------------------------


def test_peft_refuses_alpha_and_fused_modules():
    alpha = CanonicalKey("unet", "conv_in", "alpha")
    with pytest.raises(UsageError, match="alpha"):
        from_canonical([alpha], format="peft")
    assert "alpha" not in FORMATS["peft"].roles  # what a converter filters on
    fused = CanonicalKey("transformer", "transformer_blocks.0.attn.{to_q,to_k,to_v}", "down")
    with pytest.raises(UsageError, match="fused"):
        from_canonical([fused], format="peft")


def test_kohya_defaults_without_dialect():
    keys = from_canonical([
        CanonicalKey("unet", "down_blocks.1.attentions.0.proj_in", "down"),
        CanonicalKey("text_encoder", "text_model.encoder.layers.0.mlp.fc1", "up"),
    ], format="kohya")
    assert sorted(keys.values()) == [
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
    ]


def test_kohya_writes_flux_t5_as_te3_and_infers_the_family():
    keys = from_canonical([
        CanonicalKey("text_encoder_2", "encoder.block.0.layer.0.SelfAttention.q", "down"),
        CanonicalKey("transformer", "single_transformer_blocks.0.proj_out", "down"),
        CanonicalKey("transformer", "transformer_blocks.0.attn.to_out.0", "down"),
    ], format="kohya")
    assert sorted(keys.values()) == [
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight",
        "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight",
        "lora_unet_single_blocks_0_linear2.lora_down.weight",
    ]


@pytest.mark.parametrize(("ckey", "dialect", "message"), [
    (CanonicalKey("transformer", "transformer_blocks.0.attn.to_out.0", "down"), {}, "differently"),
    (CanonicalKey("transformer", "transformer_blocks.0.attn.to_q", "down"), {"transformer_names": "flux"}, "no original"),
    (CanonicalKey("unet", "up_blocks.0.upsamplers.0.conv", "down"), {"unet_names": "sgm"}, "levels"),
    (CanonicalKey("unet", "custom.module", "down"), {"unet_names": "sgm"}, "standard SD UNet"),
    (CanonicalKey("unet", "my_custom_thing.proj", "down"), {}, "reads back"),
    (CanonicalKey("unet", "conv_in", "up_bias"), {}, "up_bias"),
])
def test_kohya_refuses_what_it_cannot_spell(ckey, dialect, message):
    with pytest.raises(UsageError, match=message):
        from_canonical([ckey], format="kohya", dialect=dialect)


def test_bare_keys_need_one_component():
    ckeys = [CanonicalKey("unet", "conv_in", "down"), CanonicalKey("text_encoder", "text_model.encoder.layers.0.mlp.fc1", "down")]
    with pytest.raises(UsageError, match="component prefix"):
        from_canonical(ckeys, format="peft", dialect={"component_prefix": "no"})
    with pytest.raises(UsageError, match="read back"):
        from_canonical([CanonicalKey("text_encoder_2", "text_model.x", "down")], format="peft",
                       dialect={"component_prefix": "no"})


def test_attn_procs_only_hold_attention_projections():
    with pytest.raises(UsageError, match="q/k/v/out"):
        from_canonical([CanonicalKey("unet", "down_blocks.0.resnets.0.conv1", "down")], format="attn_procs")


def test_registry_accepts_new_formats_in_order():
    class Upper(KeyFormat):
        name = "upper_test"
        roles = frozenset({"down"})

        def parse(self, key, *, component=None):
            return ParsedKey(CanonicalKey("unet", key.lower(), "down")) if key.isupper() else None

        def emit_one(self, ckey, dialect):
            return ckey.path.upper()

    register_format(Upper(), before="kohya")
    try:
        assert list(FORMATS)[0] == "upper_test"
        assert to_canonical(["CONV_IN"]).mapped == {"CONV_IN": CanonicalKey("unet", "conv_in", "down")}
        with pytest.raises(UsageError):
            register_format(Upper())
    finally:
        del FORMATS["upper_test"]


# --- SGM <-> diffusers UNet names ------------------------------------------------------------


@pytest.mark.parametrize("levels", [3, 4])
def test_sgm_map_is_a_bijection_on_the_standard_layout(levels):
    paths = unet_paths(levels) + ["conv_norm_out", "down_blocks.0.resnets.0.norm1", "mid_block.resnets.1.norm2",
                                  "up_blocks.1.attentions.0.norm", "up_blocks.1.attentions.0.transformer_blocks.0.norm3"]
    sgm_paths = [sgm.diffusers_to_sgm(p, levels=levels) for p in paths]
    assert None not in sgm_paths
    assert len(set(sgm_paths)) == len(paths)
    assert [sgm.sgm_to_diffusers(s, levels=levels) for s in sgm_paths] == paths


@pytest.mark.parametrize(("diffusers_path", "sgm_path", "levels"), [
    ("conv_in", "input_blocks.0.0", 3),
    ("down_blocks.0.resnets.1.conv2", "input_blocks.2.0.out_layers.3", 3),
    ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op", 3),
    ("down_blocks.3.resnets.1.conv_shortcut", "input_blocks.11.0.skip_connection", 4),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1", 3),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv", 4),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv", 3),
    ("up_blocks.2.upsamplers.0.conv", "output_blocks.8.2.conv", 4),
    ("up_blocks.1.attentions.2.proj_out", "output_blocks.5.1.proj_out", 3),
    ("add_embedding.linear_1", "label_emb.0.0", 3),
    ("conv_out", "out.2", 3),
])
def test_sgm_names(diffusers_path, sgm_path, levels):
    assert sgm.diffusers_to_sgm(diffusers_path, levels=levels) == sgm_path
    assert sgm.sgm_to_diffusers(sgm_path) == diffusers_path


@pytest.mark.parametrize("path", [
    "down_blocks.2.downsamplers.0.conv",  # the deepest SDXL level has no downsampler
    "up_blocks.2.upsamplers.0.conv",  # nor up-sampler in the last up block
    "down_blocks.3.resnets.0.conv1",  # SDXL has 3 levels
    "down_blocks.0.resnets.2.conv1",  # 2 layers per down block
    "mid_block.resnets.2.conv1",
])
def test_sgm_rejects_paths_outside_the_layout(path):
    assert sgm.diffusers_to_sgm(path, levels=3) is None


# --- flat-name resolution --------------------------------------------------------------------


@pytest.mark.parametrize(("flat", "dotted"), [
    ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    ("mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    ("text_model_encoder_layers_3_self_attn_out_proj", "text_model.encoder.layers.3.self_attn.out_proj"),
    ("encoder_block_2_layer_1_DenseReluDense_wi_1", "encoder.block.2.layer.1.DenseReluDense.wi_1"),
    ("up_blocks_1_resnets_2_conv_shortcut", "up_blocks.1.resnets.2.conv_shortcut"),
    ("nonexistent_block_xyz", None),
])
def test_split_flat(flat, dotted):
    assert split_flat(flat) == dotted


@pytest.fixture
def fake_fingerprints(monkeypatch):
    """Install an ``architectures.fingerprints`` module with a given flat-name index."""

    def install(index_by_component):
        module = types.ModuleType("loraregistry.architectures.fingerprints")
        module.flat_name_index = lambda component: index_by_component[component]
        monkeypatch.setitem(sys.modules, "loraregistry.architectures.fingerprints", module)
        flat_names.name_index.cache_clear()
        kohya._sgm_index.cache_clear()

    yield install
    flat_names.name_index.cache_clear()
    kohya._sgm_index.cache_clear()


def test_the_fingerprint_index_resolves_names_the_splitter_does_not_know(fake_fingerprints):
    odd = "down_blocks.0.attentions.0.custom_adapter.gate_proj"
    index = {p.replace(".", "_"): p for p in unet_paths(3) + [odd]}
    fake_fingerprints({"unet": index, "text_encoder": {"text_model_encoder_layers_0_mlp_fc1": "text_model.encoder.layers.0.mlp.fc1"}})
    keys = [
        "lora_unet_down_blocks_0_attentions_0_custom_adapter_gate_proj.lora_down.weight",
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",  # SGM spelling found through the index
        "lora_te_encoder_layers_0_mlp_fc1.lora_down.weight",
        "lora_unet_nonexistent_block_xyz.lora_down.weight",
    ]
    mapping = to_canonical(keys)
    assert [k.path for k in mapping.mapped.values()] == [
        odd, "down_blocks.1.attentions.0.proj_in", "text_model.encoder.layers.0.mlp.fc1"]
    assert mapping.unknown == keys[3:]
    assert mapping.dialect["text_encoder.text_model"] == "no"
    assert from_canonical([CanonicalKey("unet", odd, "down")], format="kohya") == {
        CanonicalKey("unet", odd, "down"): keys[0]}


def test_missing_fingerprint_module_falls_back_to_the_splitter(monkeypatch):
    monkeypatch.setitem(sys.modules, "loraregistry.architectures.fingerprints", None)  # import fails
    flat_names.name_index.cache_clear()
    try:
        assert flat_names.name_index("unet") == {}
        assert to_canonical(["lora_unet_conv_in.alpha"]).mapped
    finally:
        flat_names.name_index.cache_clear()


# --- network types ----------------------------------------------------------------------------


def _modules(*entries):
    return {ModuleKey(c, p): set(roles) for c, p, roles in entries}


@pytest.mark.parametrize(("modules", "expected"), [
    (_modules(("unet", "down_blocks.0.attentions.0.proj_in", ["down", "up", "alpha"])), "lora"),
    (_modules(("unet", "down_blocks.0.resnets.0.conv1", ["down", "up", "alpha"])), "locon"),
    (_modules(("unet", "down_blocks.0.attentions.0.proj_in", ["down", "up", "mid"])), "locon"),
    (_modules(("unet", "x", ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"])), "loha"),
    (_modules(("unet", "x", ["lokr_w1", "lokr_w2", "alpha"])), "lokr"),
    (_modules(("unet", "x", ["down", "up"]), ("text_encoder", "y", ["down", "up", "dora_scale"])), "dora"),
    (_modules(("unet", "x", ["diff", "diff_b"])), "full"),
    ({}, "lora"),
])
def test_network_type(modules, expected):
    assert network_type(modules) == expected
    assert expected in NETWORK_TYPES


def test_network_type_uses_conv_modules_when_given():
    proj_in = ModuleKey("unet", "down_blocks.0.attentions.0.proj_in")
    assert network_type({proj_in: {"down", "up"}}, conv_modules=[proj_in]) == "locon"
    conv = ModuleKey("unet", "down_blocks.0.resnets.0.conv1")
    assert network_type({conv: {"down", "up"}}, conv_modules=[]) == "lora"


def test_roles_by_module_feeds_network_type():
    mapping = to_canonical([
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
    ])
    roles = roles_by_module(mapping)
    assert roles == {ModuleKey("unet", "down_blocks.0.resnets.0.conv1"): {"down", "up"}}
    assert network_type(roles) == "locon"


def test_fused_targets():
    assert fused_targets("single_transformer_blocks.0.{attn.to_q,attn.to_k,attn.to_v,proj_mlp}") == (
        "single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
        "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp")
    assert fused_targets("proj_out") == ("proj_out",)


def test_formats_import_no_torch():
    import subprocess

    code = "import sys, loraregistry.formats as f; f.to_canonical(['lora_unet_conv_in.alpha']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_key_mapping_is_the_contract_type():
    assert isinstance(to_canonical(["lora_unet_conv_in.alpha"]), KeyMapping)
