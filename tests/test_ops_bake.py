"""``lorareg bake``: adapters merged into single-file checkpoints and diffusers folders.

The oracle is diffusers' own ``fuse_lora`` on the same tiny pipeline; the single-file checkpoints are the
tiny diffusers/transformers state dicts renamed to original SD names through ``formats.sgm``.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from loraregistry.canonical import ModuleKey
from loraregistry.formats.sgm import diffusers_to_sgm
from loraregistry.ops.bake import BaseMissingModules, bake
from loraregistry.ops.checkpoint import open_checkpoint
from loraregistry.ops.merge import MergeInput
from loraregistry.safetensors_io import load_tensors, read_header, write_safetensors
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401  (fixture)

GOLDEN = Path(__file__).parent / "golden"
KOHYA = GOLDEN / "sd1_kohya.safetensors"
LOHA = GOLDEN / "sd1_lycoris_loha.safetensors"
SD2_LOCON = GOLDEN / "sd2_kohya_conv_proj.safetensors"


# --- tiny checkpoints ----------------------------------------------------------------------------------


def _numpy(state_dict) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in state_dict.items()}


def sgm_unet(unet: dict[str, np.ndarray], levels: int = 4) -> dict[str, np.ndarray]:
    out = {}
    for key, value in unet.items():
        path, param = key.rsplit(".", 1)
        out[f"model.diffusion_model.{diffusers_to_sgm(path, levels=levels)}.{param}"] = value
    return out


def sd1_single_file(unet, te) -> dict[str, np.ndarray]:
    out = sgm_unet(unet)
    for key, value in te.items():
        out["cond_stage_model.transformer." + (key if key.startswith("text_model.") else "text_model." + key)] = value
    out["first_stage_model.decoder.conv_in.weight"] = np.arange(96, dtype=np.float32).reshape(4, 3, 2, 4)
    return out


_OPENCLIP = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "layer_norm1": "ln_1", "layer_norm2": "ln_2"}


def openclip_text(te: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers CLIP -> OpenCLIP names, q/k/v stacked into in_proj (as SD2 checkpoints store them)."""
    te = {k.removeprefix("text_model."): v for k, v in te.items()}
    out = {"token_embedding.weight": te.pop("embeddings.token_embedding.weight"),
           "positional_embedding": te.pop("embeddings.position_embedding.weight")}
    layers = sorted({int(k.split(".")[2]) for k in te if k.startswith("encoder.layers.")})
    for i in layers:
        p, q = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[q + f"attn.in_proj_{param}"] = np.concatenate(
                [te.pop(p + f"self_attn.{n}_proj.{param}") for n in ("q", "k", "v")])
        for old, new in _OPENCLIP.items():
            for param in ("weight", "bias"):
                out[q + f"{new}.{param}"] = te.pop(p + f"{old}.{param}")
    out["ln_final.weight"] = te.pop("final_layer_norm.weight")
    out["ln_final.bias"] = te.pop("final_layer_norm.bias")
    assert not te, te
    return out


@pytest.fixture(scope="module")
def sd1():
    """Base state dicts of the tiny SD1 pipeline, and the same after diffusers' fuse_lora(kohya golden, 0.7)."""
    from tests.tiny_models import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    base = (_numpy(pipe.unet.state_dict()), _numpy(pipe.text_encoder.state_dict()))
    pipe.load_lora_weights(str(KOHYA))
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()
    fused = (_numpy(pipe.unet.state_dict()), _numpy(pipe.text_encoder.state_dict()))
    return base, fused


@pytest.fixture(scope="module")
def sd1_file(sd1, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd1") / "sd1-tiny.safetensors"
    write_safetensors(path, sd1_single_file(*sd1[0]), {"modelspec.title": "tiny", "modelspec.hash_sha256": "0x00"})
    return path


@pytest.fixture
def run_cli(monkeypatch, capsys):
    from loraregistry.cli import cli, main

    monkeypatch.setitem(cli.lazy_commands, "bake", "loraregistry.cli.bake_cmd:bake")

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# --- correctness ------------------------------------------------------------------------------------------


def test_bake_single_file_equals_diffusers_fuse_lora(sd1, sd1_file, tmp_path, run_cli):
    out = tmp_path / "baked.safetensors"
    code, stdout, _ = run_cli("bake", f"{KOHYA}:0.7", "--base", sd1_file, "-o", out, "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["patched_modules"] == 84 and summary["patched_tensors"] == 84
    baked, base = load_tensors(out), load_tensors(sd1_file)
    expected = sd1_single_file(*sd1[1])
    assert baked.keys() == expected.keys()
    changed = 0
    for key, value in expected.items():
        np.testing.assert_allclose(baked[key], value, rtol=0, atol=1e-6, err_msg=key)
        changed += not np.array_equal(baked[key], base[key])
    assert changed == 84
    # untouched tensors are copied byte for byte; the layout is the input's
    assert baked["first_stage_model.decoder.conv_in.weight"].tobytes() == base[
        "first_stage_model.decoder.conv_in.weight"].tobytes()
    h_in, h_out = read_header(sd1_file), read_header(out)
    assert [(t.name, t.dtype, t.shape, t.start) for t in h_in.tensors.values()] == \
           [(t.name, t.dtype, t.shape, t.start) for t in h_out.tensors.values()]
    # hashes reported are the file's; stale tensor hashes are dropped, the bake is recorded
    from loraregistry.hashes import hash_file

    hashes = hash_file(out)
    assert summary["files"][0]["sha256"] == hashes.sha256 and summary["files"][0]["autov3"] == hashes.autov3
    assert "modelspec.hash_sha256" not in h_out.metadata and h_out.metadata["modelspec.title"] == "tiny"
    note = json.loads(h_out.metadata["lorareg.bake"])
    assert note["adapters"][0]["weight"] == 0.7 and len(note["adapters"][0]["sha256"]) == 64


def test_two_adapters_equal_baking_one_after_the_other(sd1_file, tmp_path):
    both, first, second = tmp_path / "both.safetensors", tmp_path / "a.safetensors", tmp_path / "ab.safetensors"
    bake([MergeInput(KOHYA, 0.5), MergeInput(LOHA, -0.8)], base=sd1_file, output=both)
    bake([MergeInput(KOHYA, 0.5)], base=sd1_file, output=first)
    bake([MergeInput(LOHA, -0.8)], base=first, output=second)
    a, b = load_tensors(both), load_tensors(second)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_loha_delta_is_the_hadamard_product(sd1_file, tmp_path):
    out = tmp_path / "loha.safetensors"
    bake([MergeInput(LOHA, 0.6)], base=sd1_file, output=out)
    adapter, base, baked = load_tensors(LOHA), load_tensors(sd1_file), load_tensors(out)
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k."
    f = {k[len(prefix):]: v.astype(np.float64) for k, v in adapter.items() if k.startswith(prefix)}
    scale = float(f["alpha"]) / f["hada_w1_b"].shape[0]
    delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * scale * 0.6
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    np.testing.assert_allclose(baked[key] - base[key], delta, atol=1e-6)


def test_fp16_and_bf16_patched_in_fp32_and_cast_back(sd1, tmp_path):
    import ml_dtypes

    for dtype in (np.float16, ml_dtypes.bfloat16):
        tensors = {k: v.astype(dtype) for k, v in sd1_single_file(*sd1[0]).items()}
        src, out = tmp_path / "half.safetensors", tmp_path / "half-baked.safetensors"
        write_safetensors(src, tensors)
        bake([MergeInput(KOHYA, 1.0)], base=src, output=out)
        baked = load_tensors(out)
        key = "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
        delta = _kohya_delta("lora_te_text_model_encoder_layers_1_mlp_fc2")
        assert baked[key].dtype == np.dtype(dtype)
        expected = (tensors[key].astype(np.float32) + delta.astype(np.float32)).astype(dtype)
        assert np.array_equal(baked[key].view(np.uint16), expected.view(np.uint16))


def _kohya_delta(name: str, path: Path = KOHYA) -> np.ndarray:
    t = load_tensors(path)
    up = t[f"{name}.lora_up.weight"].astype(np.float64)
    down = t[f"{name}.lora_down.weight"].astype(np.float64)
    scale = float(t[f"{name}.alpha"]) / down.shape[0]
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)) * scale


def test_openclip_single_file_equals_diffusers_folder(tmp_path):
    """SD2 layout: q/k/v LoRAs patch row blocks of in_proj_weight; the 1x1-conv factors of a Linear proj_in
    reshape onto it. The same adapter baked into the diffusers-named folder must agree tensor for tensor."""
    from tests.tiny_models import tiny_text_encoder, tiny_unet

    unet, te = _numpy(tiny_unet("sd2").state_dict()), _numpy(tiny_text_encoder("sd2").state_dict())
    single = sgm_unet(unet) | {f"cond_stage_model.model.{k}": v for k, v in openclip_text(te).items()}
    write_safetensors(tmp_path / "sd2.safetensors", single)
    folder = tmp_path / "sd2-folder"
    for component, tensors, name in (("unet", unet, "diffusion_pytorch_model"), ("text_encoder", te, "model")):
        (folder / component).mkdir(parents=True)
        write_safetensors(folder / component / f"{name}.safetensors", tensors)
        (folder / component / "config.json").write_text("{}")
    (folder / "model_index.json").write_text("{}")

    report = bake([MergeInput(SD2_LOCON, 0.9)], base=tmp_path / "sd2.safetensors", output=tmp_path / "a.safetensors")
    assert report.patched_modules == 135 and report.kind == "single-file"
    folder_report = bake([MergeInput(SD2_LOCON, 0.9)], base=folder, output=tmp_path / "baked-folder")
    assert folder_report.kind == "diffusers" and len(folder_report.files) == 2
    assert (tmp_path / "baked-folder" / "unet" / "config.json").read_text() == "{}"

    a, b = open_checkpoint(tmp_path / "a.safetensors"), open_checkpoint(tmp_path / "baked-folder")
    assert set(a.modules) == set(b.modules)
    for module in a.modules:
        np.testing.assert_array_equal(a.read(module), b.read(module), err_msg=str(module))
    q = ModuleKey("text_encoder", "text_model.encoder.layers.2.self_attn.k_proj")
    delta = _kohya_delta("lora_te_text_model_encoder_layers_2_self_attn_k_proj", SD2_LOCON)
    np.testing.assert_allclose(a.read(q) - open_checkpoint(tmp_path / "sd2.safetensors").read(q), 0.9 * delta,
                               atol=1e-6)


def test_diffusers_folder_bake_equals_fuse_lora(sd1, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "baked"
    report = bake([MergeInput(KOHYA, 0.7)], base=tiny_pipeline_dir("sd1"), output=out)
    assert {Path(f["path"]).parent.name for f in report.files} == {"unet", "text_encoder"}
    assert (out / "model_index.json").is_file() and (out / "vae").is_dir()
    unet = load_tensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    te = load_tensors(out / "text_encoder" / "model.safetensors")
    for baked, fused in ((unet, sd1[1][0]), (te, sd1[1][1])):
        for key, value in fused.items():
            np.testing.assert_allclose(baked[key], value, rtol=0, atol=1e-6, err_msg=key)


# --- memory ---------------------------------------------------------------------------------------------


def test_bake_holds_about_one_tensor_not_the_checkpoint(sd1, tmp_path):
    """32 x 2 MiB untouched tensors plus one 2 MiB patched one: the peak of Python/numpy allocations is a few
    times the largest tensor, while loading the checkpoint costs its whole size."""
    tensors = sd1_single_file(*sd1[0])
    big = 512 * 1024  # fp32 elements: 2 MiB
    for i in range(32):
        tensors[f"model_ema.blob{i:02d}"] = np.full(big, i, dtype=np.float32)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    tensors[key] = np.zeros((1024, 512), dtype=np.float32)  # 2 MiB, patched by a rank-4 adapter below
    src = tmp_path / "big.safetensors"
    write_safetensors(src, tensors)
    adapter = tmp_path / "wide.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    rng = np.random.default_rng(0)
    write_safetensors(adapter, {f"{name}.lora_down.weight": rng.standard_normal((4, 512), dtype=np.float32),
                                f"{name}.lora_up.weight": rng.standard_normal((1024, 4), dtype=np.float32),
                                f"{name}.alpha": np.array(4.0, dtype=np.float32)})
    total = src.stat().st_size
    bake([MergeInput(adapter, 1.0)], base=src, output=tmp_path / "warm.safetensors")  # lazy imports not counted
    tracemalloc.start()
    try:
        bake([MergeInput(adapter, 1.0)], base=src, output=tmp_path / "out.safetensors")
        _, peak_bake = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        load_tensors(src)
        _, peak_load = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = 2 * 1024 * 1024
    assert total > 30 * largest and peak_load > 0.9 * total
    assert peak_bake < 4 * largest, (peak_bake, largest)  # measured 2.4x: read buffer + fp32 + cast


# --- bad input ------------------------------------------------------------------------------------------------


def test_base_missing_modules_lists_them_and_writes_nothing(sd1_file, tmp_path, run_cli):
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli("bake", GOLDEN / "sdxl_diffusers.safetensors", "--base", sd1_file, "-o", out)
    assert code == 2 and stdout == "" and not out.exists()
    assert "the base has no weight for" in err and "text_encoder_2:" in err
    with pytest.raises(BaseMissingModules) as info:
        bake([MergeInput(GOLDEN / "sdxl_diffusers.safetensors")], base=sd1_file, output=out)
    assert any(m.startswith("text_encoder_2:") for m in info.value.missing)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["pickle", "output-is-base", "output-is-adapter", "bad-weight", "wrong-shapes",
                                  "no-such-base", "overflow"])
def test_bad_input_is_one_line_exit_2_no_output(case, sd1_file, tmp_path, run_cli):
    out = tmp_path / "out.safetensors"
    adapter, base = str(KOHYA), sd1_file
    if case == "pickle":
        base = tmp_path / "model.ckpt"
        base.write_bytes(b"\x80\x02}q\x00.")
        phrase = "never unpickles"
    elif case == "output-is-base":
        out, phrase = sd1_file, "one of the inputs"
    elif case == "output-is-adapter":
        out, phrase = KOHYA, "one of the inputs"
    elif case == "bad-weight":
        adapter, phrase = f"{KOHYA}:lots", "not a finite number"
    elif case == "wrong-shapes":  # a module the base has, with other widths (made for another base)
        name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
        adapter, phrase = str(tmp_path / "wide.safetensors"), "do not have the base weight's shape"
        write_safetensors(adapter, {f"{name}.lora_down.weight": np.ones((2, 48), np.float32),
                                    f"{name}.lora_up.weight": np.ones((8, 2), np.float32)})
    elif case == "overflow":  # found while streaming: the partial temp file must go too
        base = tmp_path / "half.safetensors"
        write_safetensors(base, {k: v.astype(np.float16) for k, v in load_tensors(sd1_file).items()})
        adapter, phrase = f"{KOHYA}:1e9", "NaN/Inf in F16"
    else:
        base, phrase = tmp_path / "nope.safetensors", "no such file"
    before = {p: p.stat().st_mtime_ns for p in (sd1_file, KOHYA)}
    code, stdout, err = run_cli("bake", adapter, "--base", base, "-o", out)
    assert code == 2 and stdout == "", err
    assert err.startswith("lorareg: error: ") and err.count("\n") == 1 and phrase in err, err
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert not (tmp_path / "out.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    if case == "pickle":
        assert "PyTorch" in err or ".ckpt" in err
