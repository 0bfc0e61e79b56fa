"""``lorareg extract`` from two FLUX.1 or SD3 checkpoints (single files with original names, or diffusers folders).

The tuned model is the tiny base with a known kohya LoRA (fused ``qkv`` / ``linear1`` at rank 4, every original
module) baked in; extracting at rank 4 must give back its delta for every block module: per fused module for kohya
output, per diffusers q/k/v slice for peft output. Expected deltas are computed here from the LoRA's factors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.formats import mmdit
from loraregistry.ops.bake import bake
from loraregistry.ops.extract import extract
from loraregistry.ops.merge import MergeInput
from loraregistry.safetensors_io import load_tensors, write_safetensors
from tests.test_formats_flux import expected_deltas, file_deltas, kohya_native_file, native_modules
from tests.test_ops_bake_mmdit import _numpy, save_folder, single_file, tiny

RANK = 4
PREFIX = {"flux": "", "sd3": "model.diffusion_model."}
SWAPPED = {"flux": {"norm_out.linear"}, "sd3": {"norm_out.linear", "transformer_blocks.1.norm1_context.linear"}}
BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")


@pytest.fixture(scope="module", params=["flux", "sd3"])
def pair(request, tmp_path_factory):
    """(family, {kind: (base, tuned)} for single files and folders, module table, expected block deltas)."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"extract-{family}")
    modules = native_modules(tiny(family), mmdit.FAMILIES[family], blocks=2)
    lora = folder / "lora.safetensors"
    tensors = kohya_native_file(lora, modules, rank=RANK, alpha=2.0)
    base = folder / "base.safetensors"
    write_safetensors(base, single_file(family, _numpy(tiny(family).state_dict()), PREFIX[family]))
    base_folder = save_folder(family, tiny(family), folder / "base-folder")
    bake([MergeInput(lora, 1.0)], base=base, output=folder / "tuned.safetensors")
    bake([MergeInput(lora, 1.0)], base=base_folder, output=folder / "tuned-folder")
    truth = {f"transformer:{path}": delta
             for path, delta in expected_deltas(tensors, modules, SWAPPED[family]).items() if path.startswith(BLOCKS)}
    sources = {"single": (base, folder / "tuned.safetensors"), "folder": (base_folder, folder / "tuned-folder")}
    return family, sources, modules, truth


@pytest.fixture
def run_cli(monkeypatch, capsys):
    from loraregistry.cli import cli, main

    monkeypatch.setitem(cli.lazy_commands, "extract", "loraregistry.cli.bake_cmd:extract")
    monkeypatch.setitem(cli.lazy_commands, "verify", "loraregistry.cli.verify_cmd:verify")

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_close_deltas(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    for key, delta in want.items():  # fp32 weights: the difference tuned - base carries their rounding (~1e-7)
        assert np.linalg.norm(got[key] - delta) / np.linalg.norm(delta) < 2e-5, key


@pytest.mark.parametrize("source", ["single", "folder"])
@pytest.mark.parametrize("to", ["kohya", "peft"])
def test_extract_at_the_loras_rank_recovers_its_delta(pair, source, to, tmp_path, run_cli):
    family, sources, modules, truth = pair
    base, tuned = sources[source]
    out = tmp_path / f"{to}.safetensors"
    # the output is verified against the base itself (unforced): an original-named single file reads like its folder
    report = extract(base=base, tuned=tuned, output=out, rank=RANK, to=to, dtype="fp32")
    adapter = AdapterFile.open(out)
    assert adapter.format == to
    sizes = {path: outs for path, outs, _ in modules.values()}
    if to == "kohya":  # original names: one SVD per fused qkv / linear1, [shift, scale] rows as the original has
        names = {k.split(".")[0] for k in load_tensors(out)}
        assert "lora_unet_double_blocks_0_img_attn_qkv" in names or "lora_unet_joint_blocks_0_x_block_attn_qkv" in names
        assert all(m.rank == RANK for m in report.modules)
        got = file_deltas(out, sizes, SWAPPED[family])
    else:  # diffusers modules: q, k and v each on their own
        assert not any("{" in m.module for m in report.modules)
        got = file_deltas(out)
    assert_close_deltas(got, truth)
    assert report.architecture is None and adapter.metadata.provenance.operation == "extract" and not report.forced
    for checked_against in (sources["single"][0], sources["folder"][0]):
        code, stdout, err = run_cli("verify", "--strict", "--base", checked_against, out)
        assert code == 0, stdout + err


@pytest.mark.parametrize("guided,expected", [(True, "flux1-dev"), (False, "flux1-schnell")])
def test_real_flux_shapes_record_the_detected_architecture(guided, expected, tmp_path):
    """FLUX.1 dev and schnell share every block shape; only dev has the guidance embedder."""
    rng = np.random.default_rng(0)
    key = "double_blocks.0.img_attn.proj.weight"
    base = {key: rng.standard_normal((3072, 3072), dtype=np.float32).astype(np.float16)}
    if guided:
        base["guidance_in.in_layer.weight"] = np.zeros((3072, 256), np.float16)
    delta = 0.05 * rng.standard_normal((3072, 2)) @ rng.standard_normal((2, 3072))
    tuned = dict(base, **{key: (base[key] + delta).astype(np.float16)})
    write_safetensors(tmp_path / "a.safetensors", base)
    write_safetensors(tmp_path / "b.safetensors", tuned)
    out = tmp_path / "lora.safetensors"
    report = extract(base=tmp_path / "a.safetensors", tuned=tmp_path / "b.safetensors", output=out, rank=2)
    assert report.architecture == expected
    record = AdapterFile.open(out).metadata
    assert record.base.architecture == expected and json.loads(json.dumps(record.provenance.params))["rank"] == 2
    assert set(load_tensors(out)) == {f"lora_unet_double_blocks_0_img_attn_proj.{s}"
                                      for s in ("lora_down.weight", "lora_up.weight", "alpha")}


@pytest.mark.parametrize("case", ["missing-module", "wrong-shape", "truncated", "other-family"])
def test_bad_input_is_one_line_exit_2_no_output(case, pair, tmp_path, run_cli):
    family, sources, _, _ = pair
    base, tuned = sources["single"]
    state = load_tensors(tuned)
    qkv = f"{PREFIX[family]}{'double_blocks' if family == 'flux' else 'joint_blocks'}.1." \
          f"{'txt_attn' if family == 'flux' else 'context_block.attn'}.qkv.weight"
    changed = tmp_path / "tuned.safetensors"
    if case == "missing-module":
        del state[qkv]
        phrase = "modules missing from the tuned model"
    elif case == "wrong-shape":
        state[qkv] = np.zeros((state[qkv].shape[0] + 3, state[qkv].shape[1]), np.float32)
        phrase = "differ in shape"
    elif case == "other-family":
        other = "sd3" if family == "flux" else "flux"
        state = single_file(other, _numpy(tiny(other).state_dict()), PREFIX[other])
        phrase = "do not share a layout"
    else:
        phrase = "tuned.safetensors"
    write_safetensors(changed, state)
    if case == "truncated":
        changed.write_bytes(changed.read_bytes()[:-64])
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli("extract", "--base", base, "--tuned", changed, "--rank", RANK, "-o", out)
    assert code == 2 and stdout == "", err
    assert err.startswith("lorareg: error: ") and err.count("\n") == 1 and phrase in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_kohya_extract_of_a_folder_stacks_the_split_rows(pair, tmp_path):
    """From a diffusers folder, kohya's fused qkv is one SVD of to_q/to_k/to_v stacked: the same factors' product as
    from the single file, whose qkv is stored fused."""
    family, sources, _, _ = pair
    outs = []
    for source in ("single", "folder"):
        out = tmp_path / f"{source}.safetensors"
        extract(base=sources[source][0], tuned=sources[source][1], output=out, rank=RANK, dtype="fp32")
        outs.append(load_tensors(out))
    assert outs[0].keys() == outs[1].keys()
    for key in (k for k in outs[0] if k.endswith("lora_down.weight")):
        up = key.replace("lora_down", "lora_up")
        a, b = outs[0][up] @ outs[0][key], outs[1][up] @ outs[1][key]
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a), key
