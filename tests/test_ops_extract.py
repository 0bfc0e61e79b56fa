"""``lorareg extract``: a LoRA from (base, base + known delta) recovers the delta; numpy only, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.canonical import ModuleKey
from loraregistry.ops.delta import module_delta
from loraregistry.ops.extract import extract, truncated_svd
from loraregistry.ops.io import load_canonical
from loraregistry.safetensors_io import write_safetensors

U = "model.diffusion_model."
TE = "cond_stage_model.transformer.text_model.encoder.layers."
# original key -> (canonical module, shape): attention Linears, a 1x1-conv proj_in, CLIP, a 3x3 ResNet conv
LAYOUT = {
    U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight":
        (ModuleKey("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"), (40, 40)),
    U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
        (ModuleKey("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"), (40, 24)),
    U + "input_blocks.1.1.proj_in.weight":
        (ModuleKey("unet", "down_blocks.0.attentions.0.proj_in"), (40, 40, 1, 1)),
    U + "output_blocks.3.1.transformer_blocks.0.ff.net.2.weight":
        (ModuleKey("unet", "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"), (40, 160)),
    U + "input_blocks.1.0.in_layers.2.weight": (ModuleKey("unet", "down_blocks.0.resnets.0.conv1"), (40, 20, 3, 3)),
    TE + "0.self_attn.q_proj.weight":
        (ModuleKey("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"), (24, 24)),
    TE + "0.mlp.fc1.weight": (ModuleKey("text_encoder", "text_model.encoder.layers.0.mlp.fc1"), (48, 24)),
}
UNTOUCHED = {U + "input_blocks.1.0.in_layers.2.bias": (40,), "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)}
TRUE_RANK = 4


def _low_rank(rng, shape, rank=TRUE_RANK) -> np.ndarray:
    flat = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, int(np.prod(shape[1:]))))
    return (0.05 * flat).reshape(shape)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(base, tuned, true deltas) in fp64, so the only error left is the SVD's."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("extract")
    base = {k: rng.standard_normal(shape) for k, (_, shape) in LAYOUT.items()}
    base |= {k: rng.standard_normal(shape) for k, shape in UNTOUCHED.items()}
    deltas = {module: _low_rank(rng, shape) for k, (module, shape) in LAYOUT.items()}
    deltas[ModuleKey("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")] *= 0  # unchanged
    tuned = dict(base)
    for key, (module, _) in LAYOUT.items():
        tuned[key] = base[key] + deltas[module]
    write_safetensors(folder / "base.safetensors", base)
    write_safetensors(folder / "tuned.safetensors", tuned)
    return folder / "base.safetensors", folder / "tuned.safetensors", deltas


@pytest.fixture
def run_cli(monkeypatch, capsys):
    from loraregistry.cli import cli, main

    monkeypatch.setitem(cli.lazy_commands, "extract", "loraregistry.cli.bake_cmd:extract")

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _deltas(path: Path) -> dict[ModuleKey, np.ndarray]:
    adapter = AdapterFile.open(path)
    tensors = load_canonical(adapter)
    by_module: dict[ModuleKey, dict] = {}
    for key, array in tensors.items():
        by_module.setdefault(key.module, {})[key.role] = array
    return {m: module_delta(t) for m, t in by_module.items()}


def test_true_rank_recovers_the_delta(pair, tmp_path, run_cli):
    base, tuned, truth = pair
    out = tmp_path / "lora.safetensors"
    code, stdout, err = run_cli("extract", "--base", base, "--tuned", tuned, "--rank", TRUE_RANK, "--conv-rank",
                                TRUE_RANK, "--dtype", "fp32", "-o", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["skipped"] == ["unet:down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    assert len(report["modules"]) == 6 and report["min_energy"] > 1 - 1e-9
    got = _deltas(out)
    assert set(got) == {m for m, d in truth.items() if d.any()}
    for module, delta in got.items():
        scale = np.linalg.norm(truth[module])
        assert np.linalg.norm(delta - truth[module]) / scale < 1e-6, module
    # layouts: a 1x1 conv keeps its conv shape, a 3x3 conv has down [r, in, 3, 3], up [out, r, 1, 1]
    adapter = AdapterFile.open(out)
    conv = adapter.modules[ModuleKey("unet", "down_blocks.0.resnets.0.conv1")]
    assert conv.tensors["down"].shape == (TRUE_RANK, 20, 3, 3) and conv.tensors["up"].shape == (40, TRUE_RANK, 1, 1)
    assert adapter.modules[ModuleKey("unet", "down_blocks.0.attentions.0.proj_in")].tensors["down"].shape == \
        (TRUE_RANK, 40, 1, 1)


def test_lower_rank_meets_eckart_young(pair, tmp_path):
    base, tuned, truth = pair
    out = tmp_path / "lora2.safetensors"
    report = extract(base=base, tuned=tuned, output=out, rank=2, dtype="fp32")
    got = _deltas(out)
    by_name = {m.module: m for m in report.modules}
    for module, delta in got.items():
        matrix = truth[module].reshape(truth[module].shape[0], -1)
        s = np.linalg.svd(matrix, compute_uv=False)
        optimum = np.sqrt(np.sum(s[2:] ** 2))
        error = np.linalg.norm(delta.reshape(matrix.shape) - matrix)
        assert error == pytest.approx(optimum, rel=1e-5), module
        assert by_name[str(module)].rel_error == pytest.approx(optimum / np.linalg.norm(s), rel=1e-4)
        assert by_name[str(module)].energy == pytest.approx(np.sum(s[:2] ** 2) / np.sum(s**2), rel=1e-9)
    assert all("resnets" not in str(m) for m in got)  # no --conv-rank: attention and CLIP only


def test_metadata_records_extract_and_both_parents(pair, tmp_path):
    from loraregistry.hashes import hash_file

    base, tuned, _ = pair
    out = tmp_path / "peft.safetensors"
    extract(base=base, tuned=tuned, output=out, rank=3, to="peft")
    adapter = AdapterFile.open(out)
    assert adapter.format == "peft" and set(adapter.dtypes) == {"F16"}
    record = adapter.metadata
    assert record.provenance.operation == "extract" and record.provenance.tool == "lorareg"
    assert [p.sha256 for p in record.provenance.parents] == [hash_file(base).sha256, hash_file(tuned).sha256]
    assert record.provenance.params["rank"] == 3 and record.base.sha256 == hash_file(base).sha256
    assert record.network.rank == 3 and record.tensor_sha256 == adapter.hashes.autov3


def test_diffusers_folder_against_single_file(pair, tmp_path):
    """A folder (diffusers names, transformers-5 CLIP without ``text_model.``) pairs with a single file."""
    base, tuned, truth = pair
    from loraregistry.ops.checkpoint import open_checkpoint

    single = open_checkpoint(tuned)
    folder = tmp_path / "tuned-folder"
    for component, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (folder / component).mkdir(parents=True)
        tensors = {m.path.removeprefix("text_model.") + ".weight": single.read(m, dtype=np.float64)
                   for m in single.modules if m.component == component}
        write_safetensors(folder / component / f"{name}.safetensors", tensors)
    (folder / "model_index.json").write_text("{}")
    out = tmp_path / "from-folder.safetensors"
    report = extract(base=base, tuned=folder, output=out, rank=TRUE_RANK, dtype="fp32")
    assert len(report.modules) == 5
    for module, delta in _deltas(out).items():  # fp32 factors: relative error ~1e-7
        assert np.linalg.norm(delta - truth[module]) / np.linalg.norm(truth[module]) < 1e-6, module


def test_randomized_svd_matches_exact_and_is_seeded():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((700, 8)) @ rng.standard_normal((8, 600)) + 1e-3 * rng.standard_normal((700, 600))
    exact = np.linalg.svd(matrix, compute_uv=False)
    fast = truncated_svd(matrix, 6, seed=3)
    assert fast.method == "randomized"
    np.testing.assert_allclose(fast.s, exact[:6], rtol=1e-6)
    approx = (fast.u * fast.s) @ fast.vt
    assert np.linalg.norm(matrix - approx) == pytest.approx(np.sqrt(np.sum(exact[6:] ** 2)), rel=1e-4)
    again = truncated_svd(matrix, 6, seed=3)
    assert np.array_equal(again.u, fast.u) and np.array_equal(again.vt, fast.vt)


def test_detects_the_architecture_from_real_shapes(tmp_path):
    """One SD1-sized cross-attention module (to_k in = 768 on 320 channels) is enough to tell sd1."""
    key = U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    rng = np.random.default_rng(0)
    base = {key: rng.standard_normal((320, 768)).astype(np.float16)}
    tuned = {key: (base[key] + _low_rank(rng, (320, 768), 2)).astype(np.float16)}
    write_safetensors(tmp_path / "a.safetensors", base)
    write_safetensors(tmp_path / "b.safetensors", tuned)
    report = extract(base=tmp_path / "a.safetensors", tuned=tmp_path / "b.safetensors",
                     output=tmp_path / "lora.safetensors", rank=2)
    assert report.architecture == "sd1"
    assert AdapterFile.open(tmp_path / "lora.safetensors").metadata.base.architecture == "sd1"


@pytest.mark.parametrize("case", ["identical", "layout-differs", "output-is-input", "unknown-arch", "wrong-arch",
                                  "pickle", "bad-rank"])
def test_bad_input_is_one_line_exit_2_no_output(case, pair, tmp_path, run_cli):
    base, tuned, _ = pair
    out = tmp_path / "out.safetensors"
    extra: list = []
    if case == "identical":
        tuned, phrase = base, "do not differ"
        out = tmp_path / "out.safetensors"
    elif case == "layout-differs":
        from loraregistry.safetensors_io import load_tensors

        partial = load_tensors(tuned)
        partial.pop(TE + "0.mlp.fc1.weight")
        tuned = tmp_path / "partial.safetensors"
        write_safetensors(tuned, partial)
        phrase = "do not share a layout"
    elif case == "output-is-input":
        out, phrase = tuned, "one of the inputs"
    elif case == "unknown-arch":
        extra, phrase = ["--arch", "sd9"], "unknown architecture"
    elif case == "wrong-arch":  # tiny shapes fit no real base: declaring one would be a lie
        extra, phrase = ["--arch", "sdxl"], "--arch sdxl-base does not fit"
    elif case == "pickle":
        tuned = tmp_path / "tuned.ckpt"
        tuned.write_bytes(b"\x80\x02}q\x00.")
        phrase = "never unpickles"
    else:
        extra, phrase = ["--conv-rank", "0"], "--conv-rank"
    code, stdout, err = run_cli("extract", "--base", base, "--tuned", tuned, "--rank", 2, "-o", out, *extra)
    assert code == 2 and stdout == "", err
    assert phrase in err and err.count("\n") == (2 if case == "bad-rank" else 1), err  # usage: + "try ... --help"
    assert not (tmp_path / "out.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
