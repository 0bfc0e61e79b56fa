"""DoRA in convert, merge and resize (``ops.dora``), checked against peft's own merge.

The oracle is peft: a DoRA adapter on a tiny Linear / Conv2d (and the tiny SD1 UNet for whole files), merged by
peft's ``merge`` (what ``merge_and_unload`` runs per layer); the merged weight must equal base + our plain-LoRA
delta. LyCORIS' per-input-channel magnitude is checked against ``delta.module_delta``'s separate formula.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.canonical import ModuleKey
from loraregistry.ops.common import by_module
from loraregistry.ops.convert import convert
from loraregistry.ops.delta import module_delta
from loraregistry.ops.dora import dora_lowrank, per_output_row
from loraregistry.ops.errors import DoraNeedsBase, TooLossy
from loraregistry.ops.io import load_canonical
from loraregistry.ops.merge import MergeInput, merge
from loraregistry.ops.resize import ResizeSettings, resize
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401  (fixture)

GOLDEN = Path(__file__).parent / "golden"
DORA = GOLDEN / "sd1_peft_dora.safetensors"
KOHYA = GOLDEN / "sd1_kohya.safetensors"


# --- one layer against peft ---------------------------------------------------------------------------------


def _peft_layer(kind: str, *, r: int, alpha: float, seed: int, moved_rows: int | None = None):
    """(roles as lorareg reads them, base weight, peft's merged weight) of a DoRA adapter on one layer.
    ``moved_rows``: set the magnitude to the patched norms except on that many rows (a sparse DoRA)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    layer = torch.nn.Linear(12, 10, bias=True) if kind == "linear" else torch.nn.Conv2d(6, 5, 3, bias=True)
    model = torch.nn.Sequential(layer).double()
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, use_dora=True, target_modules=["0"],
                                       init_lora_weights="gaussian"), model)
    lora = model[0]
    a, b = lora.lora_A["default"].weight, lora.lora_B["default"].weight
    magnitude = lora.lora_magnitude_vector["default"].weight
    weight = lora.base_layer.weight.detach().clone()
    with torch.no_grad():
        b.copy_(torch.randn(b.shape, dtype=b.dtype) * 0.3)  # trained: lora_B starts at zero
        if moved_rows is None:
            magnitude.mul_(1 + 0.2 * torch.rand(magnitude.shape, dtype=magnitude.dtype))
        else:  # the norms DoRA would compute, except a few rows
            patched = weight + (alpha / r) * (b.reshape(b.shape[0], -1) @ a.reshape(r, -1)).reshape(weight.shape)
            norms = patched.reshape(patched.shape[0], -1).norm(dim=1)
            norms[:moved_rows] *= 1.5
            magnitude.copy_(norms.reshape(magnitude.shape))
    roles = {"down": a.detach().numpy().copy(), "up": b.detach().numpy().copy(), "alpha": np.array(alpha),
             "dora_scale": magnitude.detach().numpy().copy()}
    lora.merge(safe_merge=True)
    return roles, weight.numpy(), lora.base_layer.weight.detach().numpy()


def _plain(lr, shape) -> np.ndarray:
    return (lr.up @ lr.down).reshape(shape)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_plain_delta_equals_peft_merge(kind):
    roles, weight, merged = _peft_layer(kind, r=3, alpha=6, seed=1)
    out = weight.shape[0]
    assert per_output_row(roles["dora_scale"], out, source_format="peft")  # conv: [1, out, 1, 1] is per row
    lr = dora_lowrank(roles, weight, per_row=True, max_rank=min(out, weight[0].size))
    np.testing.assert_allclose(weight + _plain(lr, weight.shape), merged, rtol=0, atol=1e-12)
    assert lr.rel_error < 1e-12


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_few_moved_norms_are_exact_at_rank_r_plus_k(kind):
    roles, weight, merged = _peft_layer(kind, r=2, alpha=2, seed=2, moved_rows=2)
    lr = dora_lowrank(roles, weight, per_row=True)  # no rank asked: exact while smaller than the dense delta
    assert (lr.rank, lr.exact_rank, lr.rel_error) == (4, 4, 0.0)
    np.testing.assert_allclose(weight + _plain(lr, weight.shape), merged, rtol=0, atol=1e-12)


def test_dense_case_is_the_best_rank_k_with_its_true_error():
    roles, weight, merged = _peft_layer("linear", r=3, alpha=3, seed=3)
    delta = merged - weight
    lr = dora_lowrank(roles, weight, per_row=True)  # every norm moved: SVD to the module's rank 3
    s = np.linalg.svd(delta, compute_uv=False)
    optimum = np.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(delta)
    assert lr.rank == 3 and lr.exact_rank == 10
    assert lr.rel_error == pytest.approx(np.linalg.norm(delta - _plain(lr, delta.shape)) / np.linalg.norm(delta))
    assert lr.rel_error == pytest.approx(optimum, rel=1e-9)


@pytest.mark.parametrize("shape", [(10, 12), (12, 3, 3, 3)])
@pytest.mark.parametrize("moved", [None, 1])
def test_lycoris_per_input_channel_matches_module_delta(shape, moved):
    rng = np.random.default_rng(4)
    out, channels = shape[0], shape[1]
    weight = rng.normal(size=shape)
    roles = {"down": rng.normal(size=(2, *shape[1:])), "up": rng.normal(size=(out, 2, *([1] * (len(shape) - 2)))),
             "alpha": np.array(1.0)}
    reference_weight = weight + module_delta(roles, out_shape=shape)
    norms = np.sqrt((np.swapaxes(reference_weight, 0, 1).reshape(channels, -1) ** 2).sum(axis=1))
    magnitude = norms * (1 + 0.1 * rng.random(channels)) if moved is None else norms.copy()
    if moved:
        magnitude[:moved] *= 2
    roles["dora_scale"] = magnitude.reshape(1, channels, *([1] * (len(shape) - 2)))  # LyCORIS' default
    assert not per_output_row(roles["dora_scale"], out, source_format="kohya")
    expected = module_delta(roles, out_shape=shape, base_weight=weight)
    kernel = int(np.prod(shape[2:]))
    lr = dora_lowrank(roles, weight, per_row=False, max_rank=2 + kernel if moved else min(out, np.prod(shape[1:])))
    np.testing.assert_allclose(_plain(lr, shape), expected, rtol=0, atol=1e-10)
    if moved:  # one channel = its kernel's columns
        assert lr.rel_error == 0.0 and lr.rank == 2 + moved * kernel


# --- whole files: the golden peft DoRA on the tiny SD1 UNet ---------------------------------------------------------


@pytest.fixture(scope="module")
def peft_merged():
    """Each module's weight after peft merges the golden DoRA into the tiny SD1 UNet, and before."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    from tests.tiny_models import tiny_pipeline

    unet = tiny_pipeline("sd1").unet.double()
    state = {k.removeprefix("base_model.model."): v.double() for k, v in load_file(str(DORA)).items()}
    targets = sorted({k.split(".lora_")[0] for k in state})
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, use_dora=True, target_modules=targets), unet)
    set_peft_model_state_dict(unet, state)  # the file stores no alpha: 4 = rank, as every loader reads it
    before, after = {}, {}
    with torch.no_grad():
        for name, layer in unet.named_modules():
            if isinstance(layer, LoraLayer) and name in targets:
                before[ModuleKey("unet", name)] = layer.base_layer.weight.detach().numpy().copy()
                layer.merge(safe_merge=True)
                after[ModuleKey("unet", name)] = layer.base_layer.weight.detach().numpy().copy()
    assert len(after) == 72
    return before, after


def _deltas(path: Path) -> dict[ModuleKey, np.ndarray]:
    return {m: module_delta(roles) for m, roles in by_module(load_canonical(AdapterFile.open(path))).items()}


@pytest.mark.parametrize("to", ["kohya", "peft", "diffusers"])
def test_convert_dora_to_lora_equals_peft_merge(to, peft_merged, tiny_pipeline_dir, tmp_path):  # noqa: F811
    before, after = peft_merged
    out = tmp_path / "plain.safetensors"
    result = convert(DORA, out, to=to, base=str(tiny_pipeline_dir("sd1")), rank=128, dora_to_lora=to != "diffusers",
                     show_progress=False)  # 128: above every tiny module's full rank
    written = AdapterFile.open(out)
    assert written.network_type in ("lora", "locon") and not any(i.dora for i in written.modules.values())
    lowered = [c for c in result.changed if c.change == "lowered"]
    assert len(lowered) == 72 and {c.algorithm for c in lowered} == {"dora"}
    assert max(c.rel_error for c in lowered) < 1e-12  # full rank: exact up to rounding
    for module, delta in _deltas(out).items():
        np.testing.assert_allclose(before[module] + delta.reshape(before[module].shape), after[module],
                                   rtol=0, atol=1e-5)  # fp32 storage


def test_default_rank_is_the_modules_and_the_error_is_held_to_max_error(tiny_pipeline_dir, tmp_path):  # noqa: F811
    base = str(tiny_pipeline_dir("sd1"))
    with pytest.raises(TooLossy, match="--max-error"):
        convert(DORA, tmp_path / "a.safetensors", to="kohya", base=base, dora_to_lora=True, show_progress=False)
    assert not (tmp_path / "a.safetensors").exists()
    result = convert(DORA, tmp_path / "a.safetensors", to="kohya", base=base, dora_to_lora=True, max_error=1.0,
                     show_progress=False)
    assert {c.rank for c in result.changed} == {4} and all(0 < c.rel_error < 1 for c in result.changed)


def test_dora_without_base_weights_says_to_pass_base(tmp_path, capsys):
    from loraregistry.cli import main

    for args in (["convert", DORA, "--to", "diffusers"], ["convert", DORA, "--to", "kohya", "--dora-to-lora"],
                 ["convert", DORA, "--to", "kohya", "--dora-to-lora", "--base", "sd1"],  # an id has no weights
                 ["merge", DORA, KOHYA]):
        code = main([str(a) for a in args] + ["-o", str(tmp_path / "x.safetensors")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "--base" in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(DoraNeedsBase):
        merge([MergeInput(DORA, 1.0)], tmp_path / "y.safetensors", show_progress=False)


def test_merge_lowers_dora_parents_like_convert(tiny_pipeline_dir, tmp_path):  # noqa: F811
    base = str(tiny_pipeline_dir("sd1"))
    convert(DORA, tmp_path / "plain.safetensors", to="peft", base=base, dora_to_lora=True, max_error=1.0,
            show_progress=False)
    result = merge([MergeInput(DORA, 0.5), MergeInput(KOHYA, 0.8)], tmp_path / "m.safetensors", base=base,
                   to="kohya", max_error=1.0, show_progress=False)
    plain, kohya, merged = _deltas(tmp_path / "plain.safetensors"), _deltas(KOHYA), _deltas(tmp_path / "m.safetensors")
    for module, delta in merged.items():
        expected = 0.5 * plain.get(module, 0) + 0.8 * kohya.get(module, 0)
        np.testing.assert_allclose(delta, np.reshape(expected, delta.shape), rtol=0, atol=1e-6)
    dora_rows = [m for m in result.modules if m.dora_rel_error]
    assert len(dora_rows) == 72 and result.summary()["max_dora_rel_error"] > 0
    assert json.loads(AdapterFile.open(tmp_path / "m.safetensors").header.metadata["lorareg"])[
        "provenance"]["params"]["dora_to_lora"] is True
    with pytest.raises(TooLossy):
        merge([MergeInput(DORA, 0.5), MergeInput(KOHYA, 0.8)], tmp_path / "n.safetensors", base=base, to="kohya",
              show_progress=False)


def test_resize_keeps_dora_and_its_magnitude(tiny_pipeline_dir, tmp_path):  # noqa: F811
    out = tmp_path / "r2.safetensors"
    # the base only lets verify place the tiny modules; resizing DoRA needs no weights
    result = resize(DORA, out, ResizeSettings(rank=2), base=str(tiny_pipeline_dir("sd1")), show_progress=False)
    before = by_module(load_canonical(AdapterFile.open(DORA)))
    after = by_module(load_canonical(AdapterFile.open(out)))
    assert AdapterFile.open(out).network_type == "dora"
    rows = {r.module: r for r in result.modules}
    for module, roles in before.items():
        np.testing.assert_array_equal(after[module]["dora_scale"], roles["dora_scale"])  # bytes kept
        direction = module_delta({r: a for r, a in roles.items() if r != "dora_scale"})
        resized = module_delta({r: a for r, a in after[module].items() if r != "dora_scale"})
        s = np.linalg.svd(direction.reshape(direction.shape[0], -1), compute_uv=False)
        optimum = np.sqrt(np.sum(s[2:] ** 2)) / np.linalg.norm(s)
        achieved = np.linalg.norm(resized - direction) / np.linalg.norm(direction)
        assert after[module]["down"].shape[0] == 2
        assert achieved == pytest.approx(optimum, rel=1e-4, abs=1e-6)
        assert rows[str(module)].rel_error == pytest.approx(optimum, rel=1e-4, abs=1e-6)
