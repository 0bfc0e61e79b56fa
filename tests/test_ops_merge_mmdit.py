"""``lorareg merge`` of FLUX.1 / SD3 adapters whose parents lay the transformer out differently: kohya's fused
``qkv`` / ``linear1`` modules beside peft's split q/k/v targets. The merge splits fused modules exactly (``down``
shared, slices of ``up``), merges per target, and fuses again when the output format names modules after the
original model, so the merged delta of every target is the weighted sum of the parents' (fp64)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.formats import is_fused
from loraregistry.ops.common import by_module
from loraregistry.ops.convert import convert
from loraregistry.ops.delta import module_delta
from loraregistry.ops.fused import split_fused
from loraregistry.ops.io import load_canonical
from loraregistry.ops.merge import MergeInput, merge
from loraregistry.safetensors_io import read_header

GOLDEN = Path(__file__).resolve().parent / "golden" / "mmdit"
PEFT_FILES = {"flux": GOLDEN / "flux_diffusers_transformer_only.safetensors",
              "sd3": GOLDEN / "sd3_diffusers.safetensors"}
FUSED_KEY = {"flux": "lora_unet_double_blocks_0_img_attn_qkv.", "sd3": "lora_unet_joint_blocks_0_x_block_attn_qkv."}
WEIGHTS = (0.7, -0.3)


def target_deltas(path: Path) -> dict[str, np.ndarray]:
    """Dense fp64 delta of every module, fused modules taken apart into their diffusers targets."""
    deltas = {}
    for module, roles in by_module(load_canonical(AdapterFile.open(path))).items():
        parts = split_fused(module, roles) if module.component == "transformer" and is_fused(module.path) \
            else {module: roles}
        for part, part_roles in parts.items():
            deltas[str(part)] = module_delta(part_roles)
    return deltas


@pytest.fixture(params=sorted(PEFT_FILES))
def parents(request, tmp_path):
    """(family, {layout: file}): the peft golden and its kohya conversion with fused modules."""
    family = request.param
    kohya = tmp_path / f"{family}_kohya.safetensors"
    # tiny shapes fit no real base (verify would refuse) and tell no family: name it
    convert(PEFT_FILES[family], kohya, to="kohya", force=True, dialect={"transformer_names": family})
    assert any(k.startswith(FUSED_KEY[family]) for k in read_header(kohya).tensors)
    return family, {"kohya": kohya, "peft": PEFT_FILES[family]}


@pytest.mark.parametrize("first, second, to", [
    ("kohya", "peft", None), ("peft", "kohya", None), ("kohya", "kohya", "peft"), ("peft", "peft", "kohya"),
    ("kohya", "peft", "peft"), ("peft", "kohya", "kohya"),
])
def test_merge_across_fused_and_split_layouts_is_the_weighted_sum_per_target(parents, tmp_path, first, second, to):
    family, files = parents
    if family == "sd3" and "kohya" not in (first, second):
        pytest.skip("nothing in two tiny SD3 peft files tells SD3 from Flux names (real shapes do)")
    out = tmp_path / "merged.safetensors"
    merge([MergeInput(files[first], WEIGHTS[0]), MergeInput(files[second], WEIGHTS[1])], out, to=to, force=True)
    a, b, merged = target_deltas(files[first]), target_deltas(files[second]), target_deltas(out)
    assert merged.keys() == a.keys() == b.keys()
    for name, delta in merged.items():
        want = WEIGHTS[0] * a[name] + WEIGHTS[1] * b[name]
        np.testing.assert_allclose(delta, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=name)
    keys = read_header(out).tensors
    fmt = to or first
    assert any(k.startswith(FUSED_KEY[family]) for k in keys) == (fmt == "kohya")
