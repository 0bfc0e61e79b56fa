"""``lorareg bake`` of FLUX.1 and SD3 LoRAs into single-file checkpoints with original (BFL / ComfyUI) names and into
diffusers folders.

The oracle is diffusers' own ``fuse_lora`` on the same tiny seeded transformer with the same LoRA loaded. The
single-file checkpoints are the tiny diffusers state dicts under original names, spelled here by hand from the layout
of diffusers' single-file converters (q/k/v and FLUX's MLP rows stacked into ``qkv`` / ``linear1``, [scale, shift]
rows swapped back to [shift, scale]); the SD3 spelling is checked against diffusers' own converter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loraregistry.ops.bake import BaseMissingModules, bake
from loraregistry.ops.merge import MergeInput
from loraregistry.safetensors_io import load_tensors, read_header, write_safetensors
from tests.test_formats_flux import FLUX_TINY
from tests.test_formats_sd3 import SD3_TINY

CONFIGS = {"flux": FLUX_TINY, "sd3": SD3_TINY}
WEIGHT = 0.7
UNTOUCHED = {"vae.decoder.conv_in.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)}


# --- tiny models under original names -------------------------------------------------------------------------


def tiny(family: str):
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    return cls(**CONFIGS[family]).eval()


def _numpy(state_dict) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in state_dict.items()}


_FLUX_TOP = {"time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
             "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
             "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
             "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
             "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
             "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
             "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out"}
_FLUX_DOUBLE = {"img_mod.lin": ["norm1.linear"], "txt_mod.lin": ["norm1_context.linear"],
                "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
                "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                "img_attn.proj": ["attn.to_out.0"], "txt_attn.proj": ["attn.to_add_out"],
                "img_mlp.0": ["ff.net.0.proj"], "img_mlp.2": ["ff.net.2"],
                "txt_mlp.0": ["ff_context.net.0.proj"], "txt_mlp.2": ["ff_context.net.2"]}
_FLUX_DOUBLE_NORMS = {"img_attn.norm.query_norm.scale": "attn.norm_q.weight",
                      "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
                      "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
                      "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight"}
_FLUX_SINGLE = {"modulation.lin": ["norm.linear"], "linear2": ["proj_out"],
                "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]}
_FLUX_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_SD3_TOP = {"t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
            "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
            "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
            "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
            "context_embedder": "context_embedder", "x_embedder.proj": "pos_embed.proj",
            "final_layer.linear": "proj_out"}
_SD3_BLOCK = {"x_block.attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"], "x_block.attn.proj": ["attn.to_out.0"],
              "x_block.attn2.qkv": ["attn2.to_q", "attn2.to_k", "attn2.to_v"],
              "x_block.attn2.proj": ["attn2.to_out.0"], "x_block.mlp.fc1": ["ff.net.0.proj"],
              "x_block.mlp.fc2": ["ff.net.2"], "x_block.adaLN_modulation.1": ["norm1.linear"],
              "context_block.attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
              "context_block.attn.proj": ["attn.to_add_out"], "context_block.mlp.fc1": ["ff_context.net.0.proj"],
              "context_block.mlp.fc2": ["ff_context.net.2"],
              "context_block.adaLN_modulation.1": ["norm1_context.linear"]}


def _swap(array: np.ndarray) -> np.ndarray:
    half = array.shape[0] // 2
    return np.concatenate([array[half:], array[:half]])


def to_original(family: str, state: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """A diffusers transformer state dict under the original model's names; every diffusers tensor used once."""
    left = dict(state)
    out: dict[str, np.ndarray] = {}

    def take(original: str, parts: list[str], swap: bool = False) -> None:
        for param in ("weight", "bias"):
            keys = [f"{p}.{param}" for p in parts]
            if all(k in left for k in keys):
                value = np.concatenate([left.pop(k) for k in keys])
                out[f"{prefix}{original}.{param}"] = _swap(value) if swap else value

    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")})
    if family == "flux":
        for original, path in _FLUX_TOP.items():
            take(original, [path])
        for i in blocks:
            for original, parts in _FLUX_DOUBLE.items():
                take(f"double_blocks.{i}.{original}", [f"transformer_blocks.{i}.{p}" for p in parts])
            for original, key in _FLUX_DOUBLE_NORMS.items():
                out[f"{prefix}double_blocks.{i}.{original}"] = left.pop(f"transformer_blocks.{i}.{key}")
        for i in sorted({int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")}):
            for original, parts in _FLUX_SINGLE.items():
                take(f"single_blocks.{i}.{original}", [f"single_transformer_blocks.{i}.{p}" for p in parts])
            for original, key in _FLUX_SINGLE_NORMS.items():
                out[f"{prefix}single_blocks.{i}.{original}"] = left.pop(f"single_transformer_blocks.{i}.{key}")
    else:
        out[f"{prefix}pos_embed"] = left.pop("pos_embed.pos_embed")
        for original, path in _SD3_TOP.items():
            take(original, [path])
        for i in blocks:
            for original, parts in _SD3_BLOCK.items():
                last_context = i == blocks[-1] and original == "context_block.adaLN_modulation.1"
                take(f"joint_blocks.{i}.{original}", [f"transformer_blocks.{i}.{p}" for p in parts], last_context)
    take("final_layer.adaLN_modulation.1", ["norm_out.linear"], swap=True)
    assert not left, sorted(left)
    return out


def single_file(family: str, state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return to_original(family, state, prefix) | UNTOUCHED


def test_the_sd3_spelling_is_the_one_diffusers_reads():
    """diffusers' single-file converter turns our original-named tiny SD3 back into the model's own state dict."""
    import torch
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    state = _numpy(tiny("sd3").state_dict())
    original = to_original("sd3", state, "model.diffusion_model.")
    back = convert_sd3_transformer_checkpoint_to_diffusers({k: torch.from_numpy(v) for k, v in original.items()})
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert np.array_equal(back[key].numpy(), value), key


# --- LoRAs and the oracle -----------------------------------------------------------------------------------


def _pipeline(family: str, transformer):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    if family == "flux":
        return FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=transformer)
    return StableDiffusion3Pipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None, transformer=transformer)


def write_peft_lora(family: str, path: Path, *, dora: bool = False, rank: int = 4, alpha: int = 8) -> Path:
    """A seeded non-zero peft LoRA on every Linear of the tiny transformer (the [shift, scale] ones included), saved
    by the pipeline's own ``save_lora_weights`` with its LoraConfig (alpha != rank)."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = tiny(family)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, init_lora_weights=False, use_dora=dora)
    torch.manual_seed(7)
    layers = get_peft_model_state_dict(inject_adapter_in_model(config, model))
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    metadata["peft_type"] = str(metadata["peft_type"].value)
    type(_pipeline(family, None)).save_lora_weights(str(path.parent), weight_name=path.name,
                                                    transformer_lora_layers=layers,
                                                    transformer_lora_adapter_metadata=metadata)
    return path


def fuse_with_diffusers(family: str, lora: Path, weight: float) -> dict[str, np.ndarray]:
    """The tiny transformer's state dict after diffusers' ``load_lora_weights`` + ``fuse_lora(lora_scale=weight)``."""
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    model = tiny(family)
    pipe = _pipeline(family, model)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora(lora_scale=weight)
    pipe.unload_lora_weights()
    return _numpy(model.state_dict())


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """family -> {format: path}: one peft LoRA per family, and lorareg's exact kohya and BFL conversions of it."""
    from loraregistry.ops.convert import convert

    folder = tmp_path_factory.mktemp("mmdit-loras")
    found = {}
    for family in CONFIGS:
        base = save_folder(family, tiny(family), folder / f"{family}-base")  # what the tiny shapes are checked against
        peft = write_peft_lora(family, folder / f"{family}-peft.safetensors")
        files = {"peft": peft, "dora": write_peft_lora(family, folder / f"{family}-dora.safetensors", dora=True),
                 "base": base}
        for to in ("kohya", "bfl"):
            files[to] = folder / f"{family}-{to}.safetensors"
            convert(peft, files[to], to=to, dialect={"transformer_names": family}, base=str(base))
        found[family] = files
    return found


@pytest.fixture(scope="module")
def fused(loras):
    """(family, format) -> diffusers' fused state dict; the converted files fuse like the peft file they came from."""
    cache: dict = {}

    def get(family: str, fmt: str) -> dict[str, np.ndarray]:
        source = "dora" if fmt == "dora" else "peft"
        if (family, source) not in cache:
            cache[family, source] = fuse_with_diffusers(family, loras[family][source], WEIGHT)
        return cache[family, source]

    return get


def assert_same_tensors(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, atol: float = 2e-6) -> None:
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=atol, err_msg=key)


# --- correctness ------------------------------------------------------------------------------------------------

CASES = [("flux", "", "peft"), ("flux", "", "kohya"), ("flux", "model.diffusion_model.", "bfl"),
         ("flux", "", "dora"), ("sd3", "model.diffusion_model.", "peft"), ("sd3", "model.diffusion_model.", "kohya"),
         ("sd3", "", "bfl")]


@pytest.mark.parametrize("family,prefix,fmt", CASES, ids=["-".join(c).replace("model.diffusion_model.", "comfy")
                                                           for c in CASES])
def test_single_file_bake_equals_diffusers_fuse_lora(family, prefix, fmt, loras, fused, tmp_path):
    """Every weight: split q/k/v LoRAs land on their rows of the fused qkv / linear1, fused kohya/BFL ones on the
    whole weight, [shift, scale] rows where the original keeps them; the rest is copied byte for byte."""
    base = tmp_path / "base.safetensors"
    write_safetensors(base, single_file(family, _numpy(tiny(family).state_dict()), prefix),
                      {"modelspec.hash_sha256": "0x00"})
    out = tmp_path / "baked.safetensors"
    report = bake([MergeInput(loras[family][fmt], WEIGHT)], base=base, output=out)
    assert report.kind == "single-file"
    baked = load_tensors(out)
    assert_same_tensors(baked, single_file(family, fused(family, fmt), prefix), atol=1e-5 if fmt == "dora" else 2e-6)
    assert baked["vae.decoder.conv_in.weight"].tobytes() == UNTOUCHED["vae.decoder.conv_in.weight"].tobytes()
    h_in, h_out = read_header(base), read_header(out)
    assert [(t.name, t.dtype, t.shape, t.start) for t in h_in.tensors.values()] == \
           [(t.name, t.dtype, t.shape, t.start) for t in h_out.tensors.values()]
    assert "modelspec.hash_sha256" not in h_out.metadata and "lorareg.bake" in h_out.metadata


def _changed(a: Path, b: Path) -> set[str]:
    x, y = load_tensors(a), load_tensors(b)
    return {k for k in x if not np.array_equal(x[k], y[k])}


def test_every_linear_is_patched_once(loras, tmp_path):
    """The fused qkv / linear1 weights take three and four peft modules: patched tensors < patched modules."""
    base = tmp_path / "flux.safetensors"
    write_safetensors(base, single_file("flux", _numpy(tiny("flux").state_dict()), ""))
    report = bake([MergeInput(loras["flux"]["peft"], 1.0)], base=base, output=tmp_path / "out.safetensors")
    # 2 double blocks x 14 Linears + 2 single blocks x 6 + 10 outside blocks; two qkv per double block stack 3
    # modules each, linear1 stacks 4
    assert report.patched_modules == 2 * 14 + 2 * 6 + 10
    assert report.patched_tensors == report.patched_modules - 2 * 2 * 2 - 2 * 3
    assert _changed(base, tmp_path / "out.safetensors") == {
        k for k in load_tensors(base) if k.endswith(".weight") and "norm" not in k and not k.startswith("vae.")}


def test_xlabs_lora_bakes_like_diffusers_loads_it(tmp_path):
    """XLabs' single-block ``qkv_lora`` covers three of linear1's four targets: only q/k/v rows change."""
    rng = np.random.default_rng(3)
    hidden, rank = 16, 2
    tensors = {}
    for i in range(2):
        for name, out, inn in (("qkv_lora1", 3 * hidden, hidden), ("qkv_lora2", 3 * hidden, hidden),
                               ("proj_lora1", hidden, hidden), ("proj_lora2", hidden, hidden)):
            tensors[f"double_blocks.{i}.processor.{name}.down.weight"] = rng.normal(0, .3, (rank, inn)).astype("f4")
            tensors[f"double_blocks.{i}.processor.{name}.up.weight"] = rng.normal(0, .3, (out, rank)).astype("f4")
        for name, out, inn in (("qkv_lora", 3 * hidden, hidden), ("proj_lora", hidden, 5 * hidden)):
            tensors[f"single_blocks.{i}.processor.{name}.down.weight"] = rng.normal(0, .3, (rank, inn)).astype("f4")
            tensors[f"single_blocks.{i}.processor.{name}.up.weight"] = rng.normal(0, .3, (out, rank)).astype("f4")
    lora = tmp_path / "xlabs.safetensors"
    write_safetensors(lora, tensors)
    base = tmp_path / "flux.safetensors"
    write_safetensors(base, single_file("flux", _numpy(tiny("flux").state_dict()), ""))
    out = tmp_path / "baked.safetensors"
    bake([MergeInput(lora, WEIGHT)], base=base, output=out)
    assert_same_tensors(load_tensors(out), single_file("flux", fuse_with_diffusers("flux", lora, WEIGHT), ""))
    linear1 = load_tensors(out)["single_blocks.0.linear1.weight"] - load_tensors(base)["single_blocks.0.linear1.weight"]
    assert np.any(linear1[:3 * hidden]) and not np.any(linear1[3 * hidden:])


def save_folder(family: str, state_model, folder: Path, *, max_shard_size: str | None = None) -> Path:
    state_model.save_pretrained(folder / "transformer", **({"max_shard_size": max_shard_size}
                                                           if max_shard_size else {}))
    pipeline = "FluxPipeline" if family == "flux" else "StableDiffusion3Pipeline"
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": pipeline, "transformer": ["diffusers", type(state_model).__name__]}))
    return folder


@pytest.mark.parametrize("family,fmt,shards", [("flux", "kohya", "20KB"), ("sd3", "bfl", None),
                                               ("flux", "dora", None)])
def test_diffusers_folder_bake_loads_with_diffusers_and_equals_fuse_lora(family, fmt, shards, loras, fused,
                                                                        tmp_path):
    """Fused kohya/BFL modules land on the split to_q/to_k/to_v tensors; a sharded transformer keeps its shards."""
    base = save_folder(family, tiny(family), tmp_path / "base", max_shard_size=shards)
    shard_files = sorted(p.name for p in (base / "transformer").glob("*.safetensors"))
    assert (len(shard_files) > 1) == (shards is not None)
    out = tmp_path / "baked"
    report = bake([MergeInput(loras[family][fmt], WEIGHT)], base=base, output=out)
    assert report.kind == "diffusers" and not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    assert sorted(p.name for p in (out / "transformer").glob("*.safetensors")) == shard_files
    model = type(tiny(family)).from_pretrained(out / "transformer").eval()
    assert_same_tensors(_numpy(model.state_dict()), fused(family, fmt), atol=1e-5 if fmt == "dora" else 2e-6)


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch, capsys):
    from loraregistry.cli import cli, main

    monkeypatch.setitem(cli.lazy_commands, "bake", "loraregistry.cli.bake_cmd:bake")

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize("case", ["missing-module", "wrong-shape", "other-family", "truncated", "dora-per-column"])
def test_bad_input_is_one_line_exit_2_no_output(case, loras, tmp_path, run_cli):
    state = single_file("flux", _numpy(tiny("flux").state_dict()), "")
    base, adapter = tmp_path / "flux.safetensors", loras["flux"]["kohya"]
    if case == "missing-module":  # a pruned base: no txt_attn.qkv in block 1
        del state["double_blocks.1.txt_attn.qkv.weight"]
        phrase = "the base has no weight for 1 modules"
    elif case == "wrong-shape":  # a fused LoRA for a wider model
        adapter, phrase = tmp_path / "wide.safetensors", "do not have the base weight's shape"
        write_safetensors(adapter, {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": np.ones((2, 32), "f4"),
                                    "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": np.ones((96, 2), "f4")})
    elif case == "other-family":
        adapter, phrase = loras["sd3"]["kohya"], "the base has no weight for"
    elif case == "dora-per-column":  # LyCORIS' magnitude per input column cannot be split over q/k/v tensors
        name = "lora_unet_double_blocks_0_img_attn_qkv"
        adapter, phrase = tmp_path / "dora.safetensors", "per input column"
        write_safetensors(adapter, {f"{name}.lora_down.weight": np.ones((2, 16), "f4"),
                                    f"{name}.lora_up.weight": np.ones((48, 2), "f4"),
                                    f"{name}.dora_scale": np.ones((1, 16), "f4")})
        base = save_folder("flux", tiny("flux"), tmp_path / "folder")
    else:
        phrase = "flux.safetensors"
    if base.suffix:
        write_safetensors(base, state)
    if case == "truncated":
        data = base.read_bytes()
        base.write_bytes(data[: len(data) - 100])
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli("bake", adapter, "--base", base, "-o", out)
    assert code == 2 and stdout == "", err
    assert err.startswith("lorareg: error: ") and err.count("\n") == 1 and phrase in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    if case == "missing-module":
        with pytest.raises(BaseMissingModules) as info:
            bake([MergeInput(adapter)], base=base, output=out)
        assert info.value.missing == ["transformer:transformer_blocks.1.attn.{add_q_proj,add_k_proj,add_v_proj}"]


def test_comfyui_checkpoint_text_encoders_are_patched_and_extracted(tmp_path):
    """A ComfyUI full FLUX checkpoint: transformer under ``model.diffusion_model.``, CLIP-L and T5 under
    ``text_encoders.*``. A kohya LoRA's ``lora_te1_`` (CLIP) and ``lora_te3_`` (T5, FLUX's text_encoder_2) modules
    patch exactly their tensors; extract finds the CLIP module again (kohya trains no T5 by default)."""
    from loraregistry.ops.extract import extract

    rng = np.random.default_rng(5)
    clip = "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    t5 = "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"
    linear2 = "model.diffusion_model.single_blocks.1.linear2.weight"
    state = single_file("flux", _numpy(tiny("flux").state_dict()), "model.diffusion_model.")
    state |= {clip: rng.normal(size=(8, 8)).astype("f4"), t5: rng.normal(size=(8, 8)).astype("f4"),
              "text_encoders.t5xxl.transformer.shared.weight": rng.normal(size=(32, 8)).astype("f4"),
              "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
                  rng.normal(size=(32, 2)).astype("f4")}
    base = tmp_path / "flux-full.safetensors"
    write_safetensors(base, state)
    factors = {"lora_unet_single_blocks_1_linear2": (16, 80, 1.0),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (8, 8, 2.0),
               "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (8, 8, 2.0)}
    lora, deltas = {}, {}
    for name, (out, inn, alpha) in factors.items():
        down, up = rng.normal(size=(2, inn)).astype("f4"), rng.normal(size=(out, 2)).astype("f4")
        lora |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                 f"{name}.alpha": np.array(alpha, "f4")}
        deltas[name] = 0.5 * alpha / 2 * up.astype(np.float64) @ down.astype(np.float64)
    write_safetensors(tmp_path / "lora.safetensors", lora)
    out = tmp_path / "baked.safetensors"
    report = bake([MergeInput(tmp_path / "lora.safetensors", 0.5)], base=base, output=out)
    assert report.patched_tensors == 3
    baked = load_tensors(out)
    for key, name in ((linear2, "lora_unet_single_blocks_1_linear2"),
                      (clip, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
                      (t5, "lora_te3_encoder_block_0_layer_0_SelfAttention_q")):
        np.testing.assert_allclose(baked[key] - state[key], deltas[name], rtol=1e-5, atol=1e-6, err_msg=key)
    assert _changed(base, out) == {linear2, clip, t5}
    # a T5-only kohya LoRA reads as SD3's text_encoder_3 (nothing in it tells FLUX): the FLUX base tells
    t5_only = tmp_path / "t5.safetensors"
    write_safetensors(t5_only, {k: v for k, v in lora.items() if k.startswith("lora_te3_")})
    bake([MergeInput(t5_only, 0.5)], base=base, output=tmp_path / "t5-baked.safetensors")
    assert _changed(base, tmp_path / "t5-baked.safetensors") == {t5}
    extracted = extract(base=base, tuned=out, output=tmp_path / "x.safetensors", rank=2, to="peft", force=True)
    assert {m.module for m in extracted.modules} == {
        "transformer:single_transformer_blocks.1.proj_out",
        "text_encoder:text_model.encoder.layers.0.self_attn.q_proj"}
