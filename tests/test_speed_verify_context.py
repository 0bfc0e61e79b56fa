"""``Context.build`` works out each distinct module signature's factor problems once per file: the deltas and
problems it keeps must be, module by module, what ``factor_problems`` gives, also where modules share shapes but
differ in what the problems read (alpha values, dtypes, ranks), and no two modules may share a problems list."""

from __future__ import annotations

import math

import numpy as np

from loraregistry.adapter import AdapterFile
from loraregistry.verify.context import Context
from loraregistry.verify.shapes import factor_problems
from tests.adapters import lora_tensors, write_adapter


def _keys(tensors: dict, suffix: str) -> list[str]:
    return sorted(key for key in tensors if key.endswith(suffix))


def _mixed_adapter() -> dict[str, np.ndarray]:
    """Modules of equal shapes that differ in alpha (0, negative, NaN, inf, 2-D, integer), factor dtype and rank."""
    tensors = lora_tensors("sd1", rank=4, small=False)
    alphas, ups, downs = _keys(tensors, ".alpha"), _keys(tensors, ".lora_up.weight"), _keys(tensors, ".lora_down.weight")
    for key, value in zip(alphas, [0.0, -1.0, math.nan, math.inf, 4.0]):
        tensors[key] = np.asarray(value, np.float16)
    tensors[alphas[5]] = np.ones((2, 2), np.float16)
    tensors[alphas[6]] = np.asarray(3, np.int64)
    tensors[ups[7]] = tensors[ups[7]].astype(np.float64).astype(np.int8)
    tensors[ups[8]] = tensors[ups[8]][:, :3]  # rank 3 against down's 4
    tensors[downs[9]] = tensors[downs[9]][:, :0]  # a zero-size dimension
    del tensors[ups[10]]
    return tensors


def test_kept_problems_are_each_modules_own(tmp_path):
    path = write_adapter(tmp_path / "mixed.safetensors", _mixed_adapter())
    adapter = AdapterFile.open(path)
    ctx = Context.build(adapter, None)
    names = set()
    for key, info in adapter.modules.items():
        delta, problems = factor_problems(info)
        assert (ctx.deltas[key], ctx.factor_problems[key]) == (delta, problems), key
        names.update(p.name for p in problems)
    assert {"alpha-non-positive", "alpha-not-finite", "alpha-not-scalar", "non-float-factor", "rank-mismatch",
            "malformed-factor", "missing-factor"} <= names
    lists = [id(problems) for problems in ctx.factor_problems.values()]
    assert len(set(lists)) == len(lists)  # a check that extends one module's list touches no other


def test_the_same_shapes_with_other_alphas_get_other_problems(tmp_path):
    tensors = lora_tensors("sd1", rank=4, small=False)
    first, second = _keys(tensors, ".alpha")[:2]
    tensors[first], tensors[second] = np.asarray(0.0, np.float16), np.asarray(-2.0, np.float16)
    ctx = Context.build(AdapterFile.open(write_adapter(tmp_path / "a.safetensors", tensors)), None)
    messages = sorted(p.message for problems in ctx.factor_problems.values() for p in problems)
    assert len(messages) == 2 and messages[0] != messages[1]


def test_base_findings_are_each_modules_own_fit(tmp_path):
    """check_against_base keeps one fit_problems answer per (algo, delta, spec): the findings must be those of a
    module-by-module check. Here equal deltas meet different specs: SD1's proj_in/proj_out factors squeezed to
    Linear shape (320 x 320, as attention's to_q) against SD1's 1x1 convs, and against SD2's Linear layers."""
    from loraregistry.verify.base import load_base
    from loraregistry.verify.checks.compatibility import check_against_base
    from loraregistry.verify.shapes import fit_problems

    tensors = lora_tensors("sd1", rank=4, small=False)
    for key in [k for k in tensors if "_proj_in." in k or "_proj_out." in k]:
        if tensors[key].ndim == 4:
            tensors[key] = tensors[key][:, :, 0, 0]
    adapter = AdapterFile.open(write_adapter(tmp_path / "sd1.safetensors", tensors))
    # SD2: its Linear projections fit; its cross-attention (1024-wide context) does not fit SD1's to_k/to_v
    for base, shown in (("sd1", {"linear-shaped-conv"}), ("sd2-512", {"shape-mismatch"})):
        ctx = Context.build(adapter, load_base(base))
        expected = []
        for module, info in adapter.modules.items():
            spec = ctx.target.lookup(module.component, module.path)
            if spec is None:
                expected.append(("module-not-in-base", str(module)))
            elif ctx.deltas[module] is not None:
                expected += [(p.name, str(module)) for p in fit_problems(info, ctx.deltas[module], spec)]
        got = [(f.name, f.key) for f in check_against_base(ctx)]
        assert got == expected, base
        assert {name for name, _ in got} == shown, base
