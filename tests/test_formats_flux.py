"""FLUX.1 LoRA key formats and exact conversions between them.

Formats: kohya (original names, fused ``qkv``/``linear1``), kohya with diffusers names (OneTrainer's
``lora_transformer_``), peft (``transformer.``), BFL-native (``diffusion_model.`` / bare / ``base_model.model.``,
``lora_down`` or ``lora_A``), XLabs, and ComfyUI's CLIP/T5 keys. Files are built here from a tiny seeded
``FluxTransformer2DModel`` (and real FLUX.1 shapes where diffusers' own converter needs them); the expected
per-module deltas are computed here from the construction, not by the library.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraregistry.adapter import AdapterFile
from loraregistry.canonical import CanonicalKey
from loraregistry.formats import detect_format, from_canonical, fused_targets, mmdit, to_canonical
from loraregistry.ops.common import by_module
from loraregistry.ops.convert import convert
from loraregistry.ops.delta import module_scale
from loraregistry.ops.io import load_canonical
from loraregistry.safetensors_io import load_tensors, write_safetensors

TR = "transformer"
FLUX_TINY = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True,
                 axes_dims_rope=(2, 2, 4))
SWAPPED = {"norm_out.linear"}  # final_layer.adaLN_modulation.1 stores [shift, scale], diffusers [scale, shift]


# --- building files ----------------------------------------------------------------------------------------


def tiny_flux():
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(**FLUX_TINY).eval()


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    """A tiny FLUX.1 pipeline folder (transformer only) that verify and convert can take as ``base``."""
    folder = tmp_path_factory.mktemp("flux_base")
    tiny_flux().save_pretrained(folder / "transformer")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    return folder


def native_modules(model, table: dict[str, str], blocks: int) -> dict[str, tuple[str, list[int], int]]:
    """original dotted name -> (canonical path, out-features per target, in-features) for every Linear module the
    model has (SD3's last block lacks some context modules)."""
    found = {}
    for native, canonical in table.items():
        for i in range(blocks) if "{i}" in native else [None]:
            name, path = native.replace("{i}", str(i)), canonical.replace("{i}", str(i))
            try:
                mods = [model.get_submodule(t) for t in fused_targets(path)]
            except AttributeError:
                continue
            if not all(hasattr(m, "out_features") for m in mods):  # SD3's patch embedding is a conv: not here
                continue
            found[name] = (path, [m.out_features for m in mods], mods[0].in_features)
    return found


def kohya_native_file(path: Path, modules, *, rank=4, alpha=2.0, dtype=np.float32, seed=0) -> dict[str, np.ndarray]:
    """A kohya file with original (fused) names, spelled here by hand."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (_, outs, inn) in modules.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = rng.normal(0, 0.2, (rank, inn)).astype(dtype)
        tensors[f"{key}.lora_up.weight"] = rng.normal(0, 0.2, (sum(outs), rank)).astype(dtype)
        tensors[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    write_safetensors(path, tensors)
    return tensors


def probe(columns: int):
    """``delta @ probe(in)`` stands for a delta where the dense one is too big (real FLUX shapes): equal deltas give
    equal products, and different ones differ (the probe is random)."""
    return lambda n: np.random.default_rng(n).normal(size=(n, columns))


def _product(up: np.ndarray, down: np.ndarray, scale: float, right) -> np.ndarray:
    down = down.reshape(down.shape[0], -1).astype(np.float64)
    if right is not None:
        down = down @ right(down.shape[1])
    return scale * up.reshape(up.shape[0], -1).astype(np.float64) @ down


def expected_deltas(tensors: dict[str, np.ndarray], modules, swapped: set[str], right=None) -> dict[str, np.ndarray]:
    """diffusers module path -> fp64 delta of a kohya native file: rows split by target, [shift, scale] swapped."""
    deltas = {}
    for name, (path, outs, _) in modules.items():
        key = "lora_unet_" + name.replace(".", "_")
        down, up = (tensors[f"{key}.lora_{r}.weight"] for r in ("down", "up"))
        delta = _product(up, down, float(tensors[f"{key}.alpha"]) / down.shape[0], right)
        if path in swapped:
            delta = np.concatenate([delta[delta.shape[0] // 2:], delta[:delta.shape[0] // 2]])
        for target, piece in zip(fused_targets(path), np.split(delta, np.cumsum(outs)[:-1])):
            deltas[target] = piece
    return deltas


def file_deltas(path: Path, sizes: dict[str, list[int]] | None = None, swapped: set[str] = frozenset(),
                right=None) -> dict[str, np.ndarray]:
    """diffusers module path -> fp64 delta of any file, through the library's key mapping only; fused paths are
    split with ``sizes`` (fused path -> out-features per target), ``swapped`` modules reordered."""
    adapter = AdapterFile.open(path)
    deltas = {}
    for module, roles in by_module(load_canonical(adapter)).items():
        delta = _product(roles["up"], roles["down"], module_scale(roles), right)
        if module.path in swapped:
            delta = np.concatenate([delta[delta.shape[0] // 2:], delta[:delta.shape[0] // 2]])
        targets = fused_targets(module.path)
        pieces = np.split(delta, np.cumsum(sizes[module.path])[:-1]) if len(targets) > 1 else [delta]
        for target, piece in zip(targets, pieces):
            deltas[f"{module.component}:{target}"] = piece
    return deltas


def assert_same_deltas(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, allow_zero_extra=False,
                       rtol=1e-12, atol=None) -> None:
    extra = set(got) - set(want)
    if allow_zero_extra:
        extra = {k for k in extra if np.any(got[k])}
    assert extra == set() and set(want) <= set(got)
    for key, delta in want.items():
        np.testing.assert_allclose(got[key], delta, rtol=rtol, atol=rtol * 1e-3 if atol is None else atol, err_msg=key)


# --- key mapping: every spelling, both ways -----------------------------------------------------------------

# (file key, canonical key) per spelling; every case also round-trips through from_canonical with its dialect.
KEY_CASES = {
    "kohya-native": [
        ("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", (TR, "transformer_blocks.0.attn.{to_q,to_k,to_v}", "down")),
        ("lora_unet_single_blocks_7_linear1.lora_up.weight",
         (TR, "single_transformer_blocks.7.{attn.to_q,attn.to_k,attn.to_v,proj_mlp}", "up")),
        ("lora_unet_final_layer_adaLN_modulation_1.alpha", (TR, "norm_out.linear", "alpha")),
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
         ("text_encoder", "text_model.encoder.layers.0.mlp.fc1", "down")),
        ("lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight",
         ("text_encoder_2", "encoder.block.0.layer.0.SelfAttention.q", "up")),
    ],
    "onetrainer": [
        ("lora_transformer_single_transformer_blocks_3_attn_to_k.lora_up.weight",
         (TR, "single_transformer_blocks.3.attn.to_k", "up")),
        ("lora_transformer_transformer_blocks_0_attn_add_q_proj.alpha", (TR, "transformer_blocks.0.attn.add_q_proj", "alpha")),
        ("lora_transformer_norm_out_linear.lora_down.weight", (TR, "norm_out.linear", "down")),
    ],
    "peft": [
        ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", (TR, "transformer_blocks.0.attn.to_q", "down")),
        ("transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight", (TR, "single_transformer_blocks.1.proj_mlp", "up")),
    ],
    "bfl-comfyui": [
        ("diffusion_model.double_blocks.1.txt_attn.qkv.lora_up.weight",
         (TR, "transformer_blocks.1.attn.{add_q_proj,add_k_proj,add_v_proj}", "up")),
        ("diffusion_model.single_blocks.0.linear2.lora_down.weight", (TR, "single_transformer_blocks.0.proj_out", "down")),
        ("diffusion_model.guidance_in.in_layer.alpha", (TR, "time_text_embed.guidance_embedder.linear_1", "alpha")),
        ("text_encoders.clip_l.transformer.text_model.encoder.layers.2.self_attn.k_proj.lora_up.weight",
         ("text_encoder", "text_model.encoder.layers.2.self_attn.k_proj", "up")),
        ("text_encoders.t5xxl.transformer.encoder.block.1.layer.1.DenseReluDense.wi_0.lora_down.weight",
         ("text_encoder_2", "encoder.block.1.layer.1.DenseReluDense.wi_0", "down")),
    ],
    "bfl-control": [
        ("double_blocks.0.img_mod.lin.lora_A.weight", (TR, "transformer_blocks.0.norm1.linear", "down")),
        ("img_in.lora_B.weight", (TR, "x_embedder", "up")),
    ],
    "bfl-peft": [
        ("base_model.model.single_blocks.2.modulation.lin.lora_A.weight",
         (TR, "single_transformer_blocks.2.norm.linear", "down")),
        ("base_model.model.double_blocks.0.txt_mlp.2.lora_B.weight", (TR, "transformer_blocks.0.ff_context.net.2", "up")),
    ],
    "xlabs": [
        ("double_blocks.0.processor.qkv_lora1.down.weight", (TR, "transformer_blocks.0.attn.{to_q,to_k,to_v}", "down")),
        ("double_blocks.0.processor.qkv_lora2.up.weight",
         (TR, "transformer_blocks.0.attn.{add_q_proj,add_k_proj,add_v_proj}", "up")),
        ("double_blocks.3.processor.proj_lora2.up.weight", (TR, "transformer_blocks.3.attn.to_add_out", "up")),
        ("single_blocks.5.processor.qkv_lora.down.weight",
         (TR, "single_transformer_blocks.5.{attn.to_q,attn.to_k,attn.to_v}", "down")),
        ("single_blocks.5.processor.proj_lora.up.weight", (TR, "single_transformer_blocks.5.proj_out", "up")),
    ],
    "xlabs-comfyui": [
        ("diffusion_model.double_blocks.2.processor.proj_lora1.down.weight", (TR, "transformer_blocks.2.attn.to_out.0", "down")),
    ],
}
FORMAT_OF = {"kohya-native": "kohya", "onetrainer": "kohya", "peft": "peft", "bfl-comfyui": "bfl",
             "bfl-control": "bfl", "bfl-peft": "bfl", "xlabs": "xlabs", "xlabs-comfyui": "xlabs"}


@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_each_spelling_maps_to_canonical_and_back_to_the_same_keys(case):
    keys = [key for key, _ in KEY_CASES[case]]
    mapping = to_canonical(keys)
    assert mapping.format == FORMAT_OF[case] and mapping.unknown == []
    assert {k: tuple(v) for k, v in mapping.mapped.items()} == dict(KEY_CASES[case])
    written = from_canonical(mapping.mapped.values(), format=mapping.format, dialect=mapping.dialect)
    assert {written[c]: c for c in mapping.mapped.values()} == mapping.mapped


@pytest.mark.parametrize("key", [
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_mid.weight",  # no such factor in the BFL spelling
    "diffusion_model.joint_blocks.0.nothing.lora_A.weight",
    "text_encoders.t5xxl.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",  # CLIP path as T5
    "double_blocks.0.processor.qkv_lora3.down.weight",
    "single_blocks.0.processor.qkv_lora1.down.weight",  # single blocks have no stream number
    "double_blocks.01.processor.proj_lora1.down.weight",
])
def test_keys_that_are_no_known_module_stay_unknown(key):
    assert detect_format([key]).format == "unknown"


def test_t5_is_sd3s_text_encoder_3_when_the_file_shows_sd3():
    keys = ["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight",
            "diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_A.weight"]
    mapping = to_canonical(keys)
    assert mapping.mapped[keys[0]].component == "text_encoder_3" and mapping.dialect["transformer_names"] == "sd3"
    assert set(from_canonical(mapping.mapped.values(), format="bfl", dialect=mapping.dialect).values()) == set(keys)


_BLOCK_PATHS = [path for template in mmdit.FLUX.values() for path in [template]]


@settings(max_examples=200, deadline=None)
@given(template=st.sampled_from(sorted(mmdit.FLUX.items())), block=st.integers(0, 57),
       prefix=st.sampled_from(["diffusion_model.", "base_model.model.", ""]), factors=st.sampled_from(["lora_A", "lora_down"]),
       role=st.sampled_from(["down", "up", "alpha"]))
def test_property_bfl_and_kohya_names_agree_for_every_flux_module(template, block, prefix, factors, role):
    native, canonical = (t.replace("{i}", str(block)) for t in template)
    suffix = {"down": f"{factors}.weight", "up": ("lora_B" if factors == "lora_A" else "lora_up") + ".weight",
              "alpha": "alpha"}[role]
    bfl_key = f"{prefix}{native}.{suffix}"
    kohya_key = "lora_unet_" + native.replace(".", "_") + "." + {"down": "lora_down.weight", "up": "lora_up.weight",
                                                                 "alpha": "alpha"}[role]
    ckey = CanonicalKey(TR, canonical, role)
    assert set(to_canonical([bfl_key]).mapped.values()) == {ckey} == set(to_canonical([kohya_key]).mapped.values())
    dialect = {"bfl_prefix": prefix, "bfl_factors": factors, "transformer_names": "flux"}
    assert from_canonical([ckey], format="bfl", dialect=dialect) == {ckey: bfl_key}
    assert from_canonical([ckey], format="kohya", dialect={"transformer_names": "flux"}) == {ckey: kohya_key}


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["double:qkv_lora1", "double:qkv_lora2", "double:proj_lora1", "double:proj_lora2",
                             "single:qkv_lora", "single:proj_lora"]),
       block=st.integers(0, 57), prefix=st.sampled_from(["", "diffusion_model."]), role=st.sampled_from(["down", "up"]))
def test_property_xlabs_keys_round_trip(kind, block, prefix, role):
    blocks, lora = kind.split(":")
    key = f"{prefix}{blocks}_blocks.{block}.processor.{lora}.{role}.weight"
    mapping = to_canonical([key])
    (ckey,) = mapping.mapped.values()
    assert ckey.component == TR and ckey.role == role and f".{block}." in ckey.path
    assert from_canonical([ckey], format="xlabs", dialect=mapping.dialect) == {ckey: key}


# --- conversions: exact ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_modules():
    return native_modules(tiny_flux(), mmdit.FLUX, blocks=2)


def _sizes(modules) -> dict[str, list[int]]:
    return {path: outs for path, outs, _ in modules.values()}


@pytest.mark.parametrize("chain", [["bfl"], ["peft", "kohya"], ["peft", "bfl", "kohya"], ["bfl", "peft", "kohya"],
                                   ["diffusers", "bfl", "peft", "kohya"]])
def test_kohya_native_round_trips_are_bitwise(tmp_path, flux_base, flux_modules, chain):
    src = tmp_path / "kohya.safetensors"
    original = kohya_native_file(src, flux_modules, dtype=np.float16, alpha=3.0)
    current = src
    for i, fmt in enumerate(chain):
        out = tmp_path / f"{i}_{fmt}.safetensors"
        result = convert(current, out, to=fmt, base=str(flux_base))
        assert result.output.report.ok
        current = out
    back = load_tensors(current)
    if chain[-1] == "kohya":
        assert back.keys() == original.keys()
    keys = sorted(back) if chain[-1] == "kohya" else None
    got = {k: v for k, v in back.items() if not k.endswith("alpha")}
    if keys is None:  # bfl: same factors under diffusion_model.<original name>
        got = {"lora_unet_" + k.removeprefix("diffusion_model.").rsplit(".", 2)[0].replace(".", "_") + "."
               + ".".join(k.rsplit(".", 2)[1:]): v for k, v in got.items()}
    for key, value in original.items():
        if key.endswith("alpha"):
            continue
        assert got[key].dtype == value.dtype and got[key].tobytes() == value.tobytes(), key


def test_every_conversion_keeps_the_delta_of_every_diffusers_module(tmp_path, flux_base, flux_modules):
    src = tmp_path / "kohya.safetensors"
    tensors = kohya_native_file(src, flux_modules, rank=3, alpha=1.5)
    want = {f"{TR}:{k}": v for k, v in expected_deltas(tensors, flux_modules, SWAPPED).items()}
    sizes = _sizes(flux_modules)
    for fmt in ("peft", "diffusers", "bfl", "kohya"):
        out = tmp_path / f"out_{fmt}.safetensors"
        convert(src, out, to=fmt, base=str(flux_base))
        native = fmt in ("bfl", "kohya")
        assert_same_deltas(file_deltas(out, sizes, SWAPPED if native else set()), want)


def _peft_split_file(path: Path, modules, *, rank=2, seed=1, dtype=np.float32):
    """A diffusers/peft Flux file: each split target with its own down (rank r, alpha in the config)."""
    from loraregistry.writer import write_adapter

    rng = np.random.default_rng(seed)
    tensors = {}
    for path_, outs, inn in modules.values():
        for target, out in zip(fused_targets(path_), outs):
            tensors[CanonicalKey(TR, target, "down")] = rng.normal(0, 0.2, (rank, inn)).astype(dtype)
            tensors[CanonicalKey(TR, target, "up")] = rng.normal(0, 0.2, (out, rank)).astype(dtype)
            tensors[CanonicalKey(TR, target, "alpha")] = np.array(5.0, dtype=np.float32)
    write_adapter(path, tensors, format="peft")
    return tensors


def test_split_targets_fuse_block_diagonally_at_three_times_the_rank_and_split_back_bitwise(
        tmp_path, flux_base, flux_modules):
    src = tmp_path / "peft.safetensors"
    split = _peft_split_file(src, flux_modules, dtype=np.float16)
    kohya = tmp_path / "kohya.safetensors"
    convert(src, kohya, to="kohya", base=str(flux_base))
    stored = load_tensors(kohya)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert stored[f"{qkv}.lora_down.weight"].shape[0] == 6  # 3 targets x rank 2
    assert float(stored[f"{qkv}.alpha"]) == 15.0  # 3 x alpha: alpha / rank unchanged
    assert stored["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 8
    up = stored[f"{qkv}.lora_up.weight"]
    assert not np.any(up[:16, 2:]) and not np.any(up[16:32, :2]) and not np.any(up[16:32, 4:])  # block-diagonal
    sizes = _sizes(flux_modules)
    want = file_deltas(src)
    assert_same_deltas(file_deltas(kohya, sizes, SWAPPED), want)
    back = tmp_path / "back.safetensors"
    convert(kohya, back, to="peft", base=str(flux_base))
    restored = by_module(load_canonical(AdapterFile.open(back)))
    for ckey, value in split.items():
        got = restored[ckey.module][ckey.role]
        if ckey.role == "alpha":
            assert module_scale(restored[ckey.module]) == 2.5
        else:
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), ckey


def test_onetrainer_keys_convert_to_original_names_and_back_exactly(tmp_path, flux_base, flux_modules):
    src = tmp_path / "peft.safetensors"
    _peft_split_file(src, flux_modules)
    onetrainer = tmp_path / "onetrainer.safetensors"
    convert(src, onetrainer, to="kohya", dialect={"transformer_names": "diffusers"}, base=str(flux_base))
    assert all(k.startswith("lora_transformer_") for k in load_tensors(onetrainer))
    native = tmp_path / "native.safetensors"
    convert(onetrainer, native, to="kohya", dialect={"transformer_names": "flux"}, base=str(flux_base))
    sizes = _sizes(flux_modules)
    want = file_deltas(src)
    assert_same_deltas(file_deltas(onetrainer), want)
    assert_same_deltas(file_deltas(native, sizes, SWAPPED), want)


def test_xlabs_converts_to_every_format_exactly(tmp_path, flux_base, flux_modules):
    rng = np.random.default_rng(3)
    tensors = {}
    inner = 16
    for block in range(2):
        for lora, rows in (("qkv_lora1", 3 * inner), ("qkv_lora2", 3 * inner), ("proj_lora1", inner),
                           ("proj_lora2", inner)):
            for role, shape in (("down", (4, inner)), ("up", (rows, 4))):
                tensors[f"double_blocks.{block}.processor.{lora}.{role}.weight"] = rng.normal(0, .2, shape).astype(np.float32)
        for lora, rows, inn in (("qkv_lora", 3 * inner, inner), ("proj_lora", inner, inner + 4 * inner)):
            for role, shape in (("down", (4, inn)), ("up", (rows, 4))):
                tensors[f"single_blocks.{block}.processor.{lora}.{role}.weight"] = rng.normal(0, .2, shape).astype(np.float32)
    src = tmp_path / "xlabs.safetensors"
    write_safetensors(src, tensors)
    assert AdapterFile.open(src).format == "xlabs"
    single_qkv = {f"single_transformer_blocks.{b}.{{attn.to_q,attn.to_k,attn.to_v}}": [inner] * 3 for b in range(2)}
    sizes = _sizes(flux_modules) | single_qkv
    want = file_deltas(src, sizes)
    for fmt in ("peft", "kohya", "bfl"):
        out = tmp_path / f"out_{fmt}.safetensors"
        convert(src, out, to=fmt, base=str(flux_base))
        # linear1 gains zero proj_mlp rows when q/k/v are fused back into it
        assert_same_deltas(file_deltas(out, sizes), want, allow_zero_extra=fmt != "peft")


def test_xlabs_writer_refuses_alpha_other_than_rank(tmp_path):
    from loraregistry.errors import UsageError
    from loraregistry.writer import write_adapter

    path = "transformer_blocks.0.attn.to_out.0"
    tensors = {CanonicalKey(TR, path, "down"): np.ones((2, 4), np.float32),
               CanonicalKey(TR, path, "up"): np.ones((4, 2), np.float32),
               CanonicalKey(TR, path, "alpha"): np.array(1.0, np.float32)}
    with pytest.raises(UsageError, match="xlabs format cannot store alpha"):
        write_adapter(tmp_path / "x.safetensors", tensors, format="xlabs")
    assert not (tmp_path / "x.safetensors").exists()
    tensors[CanonicalKey(TR, path, "alpha")] = np.array(2.0, np.float32)
    write_adapter(tmp_path / "x.safetensors", tensors, format="xlabs")
    assert set(load_tensors(tmp_path / "x.safetensors")) == {"double_blocks.0.processor.proj_lora1.down.weight",
                                                              "double_blocks.0.processor.proj_lora1.up.weight"}


# --- diffusers loads what we write, and its own converter agrees ---------------------------------------


def _flux_inputs():
    import torch

    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 6, 4, generator=g), encoder_hidden_states=torch.randn(1, 3, 16, generator=g),
                pooled_projections=torch.randn(1, 16, generator=g), timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(6, 3), txt_ids=torch.zeros(3, 3), guidance=torch.tensor([3.5]))


def assert_diffusers_loads_exactly(model, peft_file: Path, want: dict[str, np.ndarray], inputs) -> None:
    """``load_lora_adapter`` takes every key of ``peft_file`` (none missing or unexpected), and the LoRA model's
    output equals the base with ``want`` added to its weights."""
    import copy

    import torch

    patched = copy.deepcopy(model)
    with torch.no_grad():
        before = model(**inputs).sample
        for path, delta in want.items():
            layer = patched.get_submodule(path.split(":", 1)[1])
            layer.weight += torch.from_numpy(delta).to(layer.weight.dtype)
        expected = patched(**inputs).sample
    model.load_lora_adapter(str(peft_file.parent), weight_name=peft_file.name, prefix="transformer",
                            adapter_name="ours")
    wrapped = {name for name, module in model.named_modules() if hasattr(module, "lora_A") and "ours" in module.lora_A}
    assert wrapped == {p.split(":", 1)[1] for p in want}
    stored = load_tensors(peft_file)
    for name in wrapped:
        layer = model.get_submodule(name)
        down = stored[f"transformer.{name}.lora_A.weight"]
        assert np.array_equal(layer.lora_A["ours"].weight.detach().numpy(), down), name
    with torch.no_grad():
        after = model(**inputs).sample
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_diffusers_loads_our_peft_conversion_of_a_kohya_flux_lora(tmp_path, flux_base, flux_modules):
    src = tmp_path / "kohya.safetensors"
    tensors = kohya_native_file(src, flux_modules, rank=4, alpha=2.0)
    peft = tmp_path / "pytorch_lora_weights.safetensors"
    convert(src, peft, to="peft", base=str(flux_base))
    want = {f"{TR}:{k}": v for k, v in expected_deltas(tensors, flux_modules, SWAPPED).items()}
    assert_diffusers_loads_exactly(tiny_flux(), peft, want, _flux_inputs())


def _real_flux_modules():
    """Block 0 and the outer modules of FLUX.1 at their real shapes (diffusers' converter hard-codes them)."""
    from loraregistry.architectures import fingerprint

    fp = fingerprint("flux1-dev")
    modules = {}
    for native, canonical in mmdit.FLUX.items():
        name, path_ = native.replace("{i}", "0"), canonical.replace("{i}", "0")
        specs = [fp.lookup(TR, t) for t in fused_targets(path_)]
        modules[name] = (path_, [s.out_features for s in specs], specs[0].in_features)
    return modules


def _real_flux_kohya(path: Path) -> dict[str, np.ndarray]:
    modules = _real_flux_modules()
    tensors = kohya_native_file(path, modules, rank=2, alpha=1.0, seed=7)
    # diffusers 0.42's converter drops the final layer's alphas ("TODO: alphas"): give those alpha = rank
    for name in ("final_layer_linear", "final_layer_adaLN_modulation_1"):
        tensors[f"lora_unet_{name}.alpha"] = np.array(2.0, dtype=np.float32)
    write_safetensors(path, tensors)
    return tensors, modules


@pytest.mark.slow
def test_diffusers_own_kohya_converter_agrees_with_our_conversion(tmp_path):
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    src = tmp_path / "kohya.safetensors"
    tensors, modules = _real_flux_kohya(src)
    ours = tmp_path / "peft.safetensors"
    result = convert(src, ours, to="peft")
    # alpha 2 on proj_out only: anchored, or peft would give it to every single_transformer_blocks.N.proj_out too
    config = json.loads(AdapterFile.open(ours).header.metadata["lora_adapter_metadata"])
    assert config["transformer.alpha_pattern"] == {"^proj_out": 2, "norm_out.linear": 2}
    assert [f.code for f in result.output.report.findings if f.severity != "info"] == []
    theirs = _convert_kohya_flux_lora_to_diffusers({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    right = probe(3)
    theirs_deltas = {}
    for key, down in theirs.items():
        if key.endswith("lora_A.weight"):
            up = theirs[key.replace("lora_A", "lora_B")]
            name = key.removesuffix(".lora_A.weight").removeprefix("transformer.")
            theirs_deltas[f"{TR}:{name}"] = _product(up.numpy(), down.numpy(), 1.0, right)  # alpha is folded in
    assert_same_deltas(file_deltas(ours, right=right), theirs_deltas, rtol=1e-6)  # theirs: fp32 products
    want = {f"{TR}:{k}": v for k, v in expected_deltas(tensors, modules, SWAPPED, right).items()}
    assert_same_deltas(file_deltas(ours, right=right), want)


def test_cli_converts_to_bfl_names(tmp_path, capsys, flux_base, flux_modules):
    from loraregistry.cli import main

    src = tmp_path / "peft.safetensors"
    _peft_split_file(src, flux_modules)
    out = tmp_path / "comfy.safetensors"
    assert main(["convert", str(src), "--to", "bfl", "-o", str(out), "--base", str(flux_base)]) == 0
    keys = set(load_tensors(out))
    assert "diffusion_model.single_blocks.0.linear1.lora_down.weight" in keys
    assert all(k.startswith("diffusion_model.") for k in keys)
    assert_same_deltas(file_deltas(out, _sizes(flux_modules), SWAPPED), file_deltas(src))
    capsys.readouterr()
    sd1 = Path(__file__).parent / "golden" / "sd1_kohya.safetensors"
    assert main(["convert", str(sd1), "--to", "bfl", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "bfl has no prefix for component 'unet'" in err and err.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_clip_and_t5_keys_travel_through_every_format_bitwise(tmp_path):
    """kohya's lora_te1 (CLIP-L) / lora_te3 (T5) beside the transformer, at FLUX.1's real shapes: to ComfyUI's
    text_encoders.clip_l / t5xxl names, to peft's text_encoder / text_encoder_2, and back, factors bitwise."""
    rng = np.random.default_rng(11)
    layout = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
              "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (4096, 4096),
              "lora_unet_double_blocks_0_img_attn_proj": (3072, 3072)}
    tensors = {}
    for name, (out, inn) in layout.items():
        tensors[f"{name}.lora_down.weight"] = rng.normal(0, .1, (2, inn)).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = rng.normal(0, .1, (out, 2)).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(1.0, np.float32)
    src = tmp_path / "kohya.safetensors"
    write_safetensors(src, tensors)
    bfl, peft, back = (tmp_path / f"{n}.safetensors" for n in ("bfl", "peft", "back"))
    convert(src, bfl, to="bfl")
    assert {"text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight",
            "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_up.weight"} <= set(load_tensors(bfl))
    convert(bfl, peft, to="peft")
    assert {"text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight",  # transformers 5 CLIPTextModel names
            "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"} <= set(load_tensors(peft))
    convert(peft, back, to="kohya")
    restored = load_tensors(back)
    assert restored.keys() == tensors.keys()
    assert all(restored[k].tobytes() == v.tobytes() for k, v in tensors.items() if not k.endswith("alpha"))


def _diffusers_deltas(state_dict, right) -> dict[str, np.ndarray]:
    """Probed deltas of what diffusers' Flux converter returns (alpha folded into the factors)."""
    deltas = {}
    for key, down in state_dict.items():
        if key.endswith("lora_A.weight"):
            up = state_dict[key.replace("lora_A", "lora_B")]
            name = key.removesuffix(".lora_A.weight").removeprefix("transformer.")
            deltas[f"{TR}:{name}"] = _product(up.numpy(), down.numpy(), 1.0, right)
    return deltas


@pytest.mark.slow
def test_diffusers_converter_reads_our_fused_kohya_output_of_a_peft_file(tmp_path):
    """Our kohya output of a peft file (targets fused block-diagonally at 3r / 4r with 3 / 4 x alpha), run through
    diffusers' own kohya converter, has the peft file's deltas: diffusers sees the block structure and splits it."""
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    modules = _real_flux_modules()
    src = tmp_path / "peft.safetensors"
    _peft_split_file(src, modules, rank=2, seed=8)
    kohya = tmp_path / "kohya.safetensors"
    result = convert(src, kohya, to="kohya")
    assert [f.code for f in result.output.report.findings if f.severity != "info"] == []
    ours = load_tensors(kohya)
    assert ours["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape == (8, 3072)
    theirs = _convert_kohya_flux_lora_to_diffusers({k: torch.from_numpy(v.copy()) for k, v in ours.items()})
    assert theirs["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].shape == (2, 3072)  # split back to r
    right = probe(3)
    got, want = _diffusers_deltas(theirs, right), file_deltas(src, right=right)
    # diffusers 0.42 drops the final layer's alphas ("TODO: alphas"): its deltas there lack the scale 5 / 2
    for final in (f"{TR}:proj_out", f"{TR}:norm_out.linear"):
        got[final] = got[final] * 2.5
    # diffusers scales the factors by alpha / rank in fp32: rounding at 1e-7 of the product's magnitude (~1)
    assert_same_deltas(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("unet_key", ["lora_unet_double_blocks_0_img_attn_proj",  # FLUX.1
                                      "lora_unet_joint_blocks_0_x_block_attn_proj"])  # SD3
def test_clip_l_beside_a_transformer_is_lora_te1_even_without_t5(tmp_path, unet_key):
    """sd-scripts' lora_flux / lora_sd3 spell CLIP-L lora_te1 whatever else the file holds, and InvokeAI's Flux
    loader matches only that spelling: a CLIP-L + transformer file converted to kohya must not say lora_te."""
    rng = np.random.default_rng(12)
    tensors = {}
    for name, (out, inn) in {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
                             unet_key: (3072 if "double" in unet_key else 1536,) * 2}.items():
        tensors[f"{name}.lora_down.weight"] = rng.normal(0, .1, (2, inn)).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = rng.normal(0, .1, (out, 2)).astype(np.float16)
    src, peft, back = (tmp_path / f"{n}.safetensors" for n in ("src", "peft", "back"))
    write_safetensors(src, tensors)
    convert(src, peft, to="peft")
    convert(peft, back, to="kohya")
    te_keys = {k.split("_text_model")[0] for k in load_tensors(back) if "text_model" in k}
    assert te_keys == {"lora_te1"}
