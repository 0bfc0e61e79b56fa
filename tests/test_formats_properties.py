"""Round trips through the canonical form, for every format and dialect (Hypothesis), and the key
tables checked against real (tiny, meta-device) diffusers/transformers models (slow)."""

from __future__ import annotations

import sys
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraregistry.canonical import CanonicalKey
from loraregistry.formats import FORMATS, flat_names, from_canonical, fused_targets, kohya, mmdit, sgm, to_canonical
from loraregistry.formats.flat_names import flatten, split_flat

from .test_formats import clip_paths, split_transformer_paths, t5_paths, transformer_paths, unet_paths

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNET = {levels: unet_paths(levels) for levels in (3, 4)}
CLIP = clip_paths(3)
T5 = t5_paths(2)
KOHYA_ROLES = sorted(FORMATS["kohya"].roles)


def _modules(component: str, paths: list[str]):
    return st.lists(st.sampled_from(paths), min_size=1, max_size=6, unique=True).map(
        lambda chosen: [(component, p) for p in chosen])


def _ckeys(modules, roles):
    """Canonical key sets: each chosen module with a non-empty subset of ``roles``."""
    return modules.flatmap(lambda mods: st.tuples(*[
        st.lists(st.sampled_from(roles), min_size=1, max_size=3, unique=True).map(
            lambda rs, m=m: [CanonicalKey(m[0], m[1], r) for r in rs])
        for m in mods
    ])).map(lambda groups: frozenset(k for g in groups for k in g))


def _union(*parts):
    return st.tuples(*parts).map(lambda lists: [m for part in lists for m in part])


@st.composite
def kohya_cases(draw):
    base = draw(st.sampled_from(["sd1", "sd2", "sdxl", "sd3", "flux"]))
    text_model = draw(st.sampled_from(["yes", "no"]))
    dialect = {"text_encoder.text_model": text_model}
    if base in ("sd1", "sd2", "sdxl"):
        levels = 3 if base == "sdxl" else 4
        dialect |= {"unet_names": draw(st.sampled_from(["sgm", "diffusers"])), "unet_levels": str(levels)}
        parts = [_modules("unet", UNET[levels]), _modules("text_encoder", CLIP)]
        if base == "sdxl":
            parts.append(_modules("text_encoder_2", CLIP))
            dialect |= {"te_prefix": "lora_te1", "text_encoder_2.text_model": text_model}
        else:
            dialect["te_prefix"] = draw(st.sampled_from(["lora_te", "lora_te1"]))
    elif base == "sd3":
        names = draw(st.sampled_from(["sd3", "diffusers"]))
        paths = transformer_paths("sd3") if names == "sd3" else split_transformer_paths("sd3")
        parts = [_modules("transformer", paths), _modules("text_encoder", CLIP), _modules("text_encoder_2", CLIP),
                 _modules("text_encoder_3", T5)]
        dialect |= {"transformer_names": names, "te_prefix": "lora_te1", "text_encoder_2.text_model": text_model}
    else:
        parts = [_modules("transformer", transformer_paths("flux")), _modules("text_encoder", CLIP),
                 _modules("text_encoder_2", T5)]
        dialect |= {"transformer_names": "flux", "te_prefix": "lora_te1"}
    ckeys = draw(_ckeys(_union(*parts), KOHYA_ROLES))
    return ckeys, dialect


@st.composite
def peft_cases(draw):
    prefixed = draw(st.booleans())
    text_model = draw(st.sampled_from(["yes", "no"]))
    dialect = {
        "outer_prefix": draw(st.sampled_from(["", "base_model.model."])),
        "component_prefix": "yes" if prefixed else "no",
        "adapter_name": draw(st.sampled_from(["", "default", "style_v2"])),
        "dora_suffix": draw(st.sampled_from(["", ".weight"])),
        "text_encoder.text_model": text_model,
        "text_encoder_2.text_model": text_model,
    }
    sources = {
        "unet": _modules("unet", UNET[3] + UNET[4]),
        "text_encoder": _modules("text_encoder", CLIP),
        "transformer": _modules("transformer", split_transformer_paths("flux") + split_transformer_paths("sd3")),
    }
    if prefixed:
        sources["text_encoder_2"] = _modules("text_encoder_2", CLIP)
        modules = _union(*sources.values())
    else:
        modules = sources[draw(st.sampled_from(sorted(sources)))]
    ckeys = draw(_ckeys(modules, sorted(FORMATS["peft"].roles)))
    return ckeys, dialect


@st.composite
def diffusers_cases(draw):
    prefixed = draw(st.booleans())
    dialect = {"component_prefix": "yes" if prefixed else "no",
               "text_encoder.text_model": draw(st.sampled_from(["yes", "no"])),
               "unet.layer": "lora", "text_encoder.layer": draw(st.sampled_from(["lora", "lora_linear_layer"]))}
    parts = [_modules("unet", UNET[3])]
    if prefixed:
        parts.append(_modules("text_encoder", CLIP))
    return draw(_ckeys(_union(*parts), ["down", "up"])), dialect


ATTENTION_PROJECTIONS = [p for p in UNET[4] if p.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
CLIP_PROJECTIONS = [p for p in CLIP if p.endswith("_proj")]


@st.composite
def attn_procs_cases(draw):
    prefixed = draw(st.booleans())
    dialect = {"component_prefix": "yes" if prefixed else "no", "processor": draw(st.sampled_from(["yes", "no"])),
               "text_encoder.text_model": "yes"}
    parts = [_modules("unet", ATTENTION_PROJECTIONS)]
    if prefixed:
        parts.append(_modules("text_encoder", CLIP_PROJECTIONS))
    return draw(_ckeys(_union(*parts), ["down", "up"])), dialect


def _assert_round_trip(fmt: str, ckeys: frozenset[CanonicalKey], dialect: dict[str, str]) -> None:
    written = from_canonical(ckeys, format=fmt, dialect=dialect)
    keys = list(written.values())
    mapping = to_canonical(keys)
    # canonical -> format -> canonical recovers the keys ...
    assert mapping.format == fmt and mapping.unknown == []
    assert set(mapping.mapped.values()) == ckeys
    assert all(written[ckey] == key for key, ckey in mapping.mapped.items())
    # ... and the dialect (each field the keys could show) ...
    for name, value in mapping.dialect.items():
        if name in dialect and dialect[name] != "":
            assert value == dialect[name], name
    # ... so format -> canonical -> format reproduces every key string exactly.
    assert from_canonical(mapping.mapped.values(), format=fmt, dialect=mapping.dialect) == written


@PROPERTY_SETTINGS
@given(kohya_cases())
def test_kohya_round_trip(case):
    _assert_round_trip("kohya", *case)


@PROPERTY_SETTINGS
@given(peft_cases())
def test_peft_round_trip(case):
    _assert_round_trip("peft", *case)


@PROPERTY_SETTINGS
@given(diffusers_cases())
def test_diffusers_round_trip(case):
    _assert_round_trip("diffusers", *case)


@PROPERTY_SETTINGS
@given(attn_procs_cases())
def test_attn_procs_round_trip(case):
    _assert_round_trip("attn_procs", *case)


@PROPERTY_SETTINGS
@given(st.sampled_from(["sd1", "sdxl"]).flatmap(
    lambda base: st.lists(st.sampled_from(UNET[4 if base == "sd1" else 3]), min_size=1, unique=True).map(
        lambda paths: (4 if base == "sd1" else 3, paths))))
def test_sgm_round_trip(case):
    levels, paths = case
    for path in paths:
        assert sgm.sgm_to_diffusers(sgm.diffusers_to_sgm(path, levels=levels)) == path


@PROPERTY_SETTINGS
@given(st.sampled_from(UNET[3] + UNET[4] + CLIP + T5 + split_transformer_paths("flux")))
def test_split_flat_inverts_flatten(path):
    assert split_flat(flatten(path)) == path


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_native_transformer_names_round_trip(family):
    for path in transformer_paths(family, blocks=3):
        native = mmdit.to_native(path, family)
        assert native is not None
        assert mmdit.parse_flat(flatten(native))[family] == path


# --- against real module trees (tiny models on the meta device) -----------------------------


def _tiny_unet(levels: int):
    import torch
    from diffusers import UNet2DConditionModel

    if levels == 4:
        down = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
        extra = {}
    else:
        down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
        extra = {"addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                 "projection_class_embeddings_input_dim": 80, "use_linear_projection": True}
    with torch.device("meta"):
        return UNet2DConditionModel(
            sample_size=8, block_out_channels=(32,) * levels, layers_per_block=2, down_block_types=down,
            up_block_types=up, cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, **extra)


def _leaf_modules(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.slow
@pytest.mark.parametrize("levels", [3, 4])
def test_unet_paths_and_sgm_map_match_a_real_unet(levels):
    model = _tiny_unet(levels)
    names = [n for n, _ in model.named_modules() if n]
    assert set(unet_paths(levels)) <= set(names)  # the property tests draw real module paths
    leaves = _leaf_modules(model)
    for name in leaves + [n for n in names if n.endswith(("norm1", "norm2", "conv_norm_out"))]:
        sgm_name = sgm.diffusers_to_sgm(name, levels=levels)
        assert sgm_name is not None, name
        assert sgm.sgm_to_diffusers(sgm_name, levels=levels) == name
    for dialect in ({"unet_names": "diffusers"}, {"unet_names": "sgm", "unet_levels": str(levels)}):
        ckeys = [CanonicalKey("unet", n, "down") for n in leaves]
        written = from_canonical(ckeys, format="kohya", dialect=dialect)
        assert set(to_canonical(written.values()).mapped.values()) == set(ckeys)


@pytest.mark.slow
def test_text_encoder_names_resolve_with_and_without_an_index(monkeypatch):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip = CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                          vocab_size=10, projection_dim=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    t5 = T5Config(d_model=8, d_ff=16, num_layers=2, num_heads=2, d_kv=4, vocab_size=10, feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        te1, te2, te3 = CLIPTextModel(clip), CLIPTextModelWithProjection(clip), T5EncoderModel(t5)
    # transformers 5 dropped the text_model level from CLIPTextModel (not from ...WithProjection)
    te1_paths = ["text_model." + n for n in _leaf_modules(te1) if n.startswith("encoder.")]
    te2_paths = [n for n in _leaf_modules(te2) if n.startswith("text_model.encoder.")]
    te3_paths = [n for n in _leaf_modules(te3) if n.startswith("encoder.block.")]
    assert set(te1_paths) <= set(CLIP) | set(clip_paths(2)) and set(te3_paths) == set(t5_paths(2))
    ckeys = ([CanonicalKey("text_encoder", p, "down") for p in te1_paths]
             + [CanonicalKey("text_encoder_2", p, "up") for p in te2_paths]
             + [CanonicalKey("text_encoder_3", p, "alpha") for p in te3_paths])
    index = {"text_encoder": {flatten(p): p for p in te1_paths}, "text_encoder_2": {flatten(p): p for p in te2_paths},
             "text_encoder_3": {flatten(p): p for p in te3_paths}, "unet": {}}
    module = types.ModuleType("loraregistry.architectures.fingerprints")
    module.flat_name_index = lambda component: index[component]
    for installed in (None, module):
        monkeypatch.setitem(sys.modules, "loraregistry.architectures.fingerprints", installed)
        flat_names.name_index.cache_clear()
        kohya._sgm_index.cache_clear()
        written = from_canonical(ckeys, format="kohya", dialect={"text_encoder.text_model": "no"})
        mapping = to_canonical(written.values())
        assert set(mapping.mapped.values()) == set(ckeys) and mapping.unknown == []
    flat_names.name_index.cache_clear()
    kohya._sgm_index.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_transformer_tables_name_real_diffusers_modules(family):
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    with torch.device("meta"):
        if family == "flux":
            model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
        else:
            model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                          caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
                                          dual_attention_layers=(0,))
    leaves = set(_leaf_modules(model))
    targets = {t for p in transformer_paths(family, blocks=2) for t in fused_targets(p)}
    # the last SD3 block is context_pre_only: it has no context attention output or context MLP
    missing = {t for t in targets - leaves if not (family == "sd3" and t.startswith("transformer_blocks.1."))}
    assert missing == set()
