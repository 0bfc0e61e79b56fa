"""AdapterFile: what factor shapes say about a module (rank, features, kernel), per algorithm."""

from __future__ import annotations

import pytest

from loraregistry.adapter import _leaf_name, describe_module
from loraregistry.canonical import ModuleKey
from loraregistry.safetensors_io import TensorInfo

M = ModuleKey("unet", "down_blocks.0.resnets.0.conv1")


def infos(**shapes):
    return {role: TensorInfo(role, "F16", tuple(shape), 0, 0) for role, shape in shapes.items()}


CASES = [
    ("lora linear", dict(down=[4, 320], up=[640, 4]), ("lora", "linear", 4, 320, 640, None)),
    ("lora conv", dict(down=[4, 320, 3, 3], up=[640, 4, 1, 1]), ("lora", "conv", 4, 320, 640, (3, 3))),
    ("locon tucker", dict(down=[4, 320, 1, 1], mid=[4, 4, 3, 3], up=[640, 4, 1, 1]),
     ("lora", "conv", 4, 320, 640, (3, 3))),
    ("loha", dict(hada_w1_a=[640, 8], hada_w1_b=[8, 320], hada_w2_a=[640, 8], hada_w2_b=[8, 320]),
     ("loha", "linear", 8, 320, 640, None)),
    ("loha tucker", dict(hada_w1_a=[8, 640], hada_w1_b=[8, 320], hada_t1=[8, 8, 3, 3],
                         hada_w2_a=[8, 640], hada_w2_b=[8, 320], hada_t2=[8, 8, 3, 3]),
     ("loha", "conv", 8, 320, 640, (3, 3))),
    ("lokr full", dict(lokr_w1=[8, 16], lokr_w2=[80, 20]), ("lokr", "linear", None, 320, 640, None)),
    ("lokr low-rank", dict(lokr_w1=[8, 16], lokr_w2_a=[80, 4], lokr_w2_b=[4, 20]), ("lokr", "linear", 4, 320, 640, None)),
    ("lokr tucker", dict(lokr_w1=[8, 16], lokr_w2_a=[4, 80], lokr_w2_b=[4, 20], lokr_t2=[4, 4, 3, 3]),
     ("lokr", "conv", 4, 320, 640, (3, 3))),
    ("full diff", dict(diff=[640, 320, 3, 3]), ("full", "conv", None, 320, 640, (3, 3))),
]


@pytest.mark.parametrize("name, shapes, want", CASES, ids=[c[0] for c in CASES])
def test_describe_module(name, shapes, want):
    t = infos(**shapes)
    info = describe_module(M, t, {r: r for r in t}, alpha=None)
    assert (info.algo, info.kind, info.rank, info.in_features, info.out_features, info.kernel) == want


@pytest.mark.parametrize("path, leaf", [("a.attn1.to_q", "to_q"), ("a.attn1.to_out.0", "to_out.0"), ("x", "x")])
def test_leaf_names_keep_sequential_indices(path, leaf):
    assert _leaf_name(path) == leaf
