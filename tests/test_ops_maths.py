"""The maths of ops: deltas (LyCORIS as the oracle), exact low-rank factors, factor-space SVD, resize, merge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraregistry.canonical import CanonicalKey
from loraregistry.ops.delta import lowrank_factors, module_delta, module_scale
from loraregistry.ops.errors import DoraNeedsBase, RankTooHigh
from loraregistry.ops.lowrank import choose_rank, factor_svd
from loraregistry.ops.merge import merge_modules
from loraregistry.ops.resize import ResizeSettings, resize_module, resize_tensors

FAST = settings(max_examples=25, deadline=None)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def lora(rng, out, inn, r, alpha=None, kernel=()):
    roles = {"down": rng.normal(size=(r, inn, *kernel)), "up": rng.normal(size=(out, r, *([1] * len(kernel))))}
    if alpha is not None:
        roles["alpha"] = np.array(alpha)
    return roles


def loha(rng, out, inn, r, alpha, kernel=(), tucker=False):
    if tucker:
        return {"hada_t1": rng.normal(size=(r, r, *kernel)), "hada_w1_a": rng.normal(size=(r, out)),
                "hada_w1_b": rng.normal(size=(r, inn)), "hada_t2": rng.normal(size=(r, r, *kernel)),
                "hada_w2_a": rng.normal(size=(r, out)), "hada_w2_b": rng.normal(size=(r, inn)),
                "alpha": np.array(alpha)}
    flat = inn * int(np.prod(kernel or (1,)))
    return {"hada_w1_a": rng.normal(size=(out, r)), "hada_w1_b": rng.normal(size=(r, flat)),
            "hada_w2_a": rng.normal(size=(out, r)), "hada_w2_b": rng.normal(size=(r, flat)), "alpha": np.array(alpha)}


def lokr(rng, a, b, c, d, r, alpha, kernel=(), mode="w2_lowrank"):
    roles = {"lokr_w1": rng.normal(size=(a, c)), "alpha": np.array(alpha)}
    if mode == "full":
        roles["lokr_w2"] = rng.normal(size=(b, d, *kernel))
    elif mode == "tucker":
        roles.update(lokr_t2=rng.normal(size=(r, r, *kernel)), lokr_w2_a=rng.normal(size=(r, b)),
                     lokr_w2_b=rng.normal(size=(r, d)))
    else:
        roles.update(lokr_w2_a=rng.normal(size=(b, r)), lokr_w2_b=rng.normal(size=(r, d, *kernel)))
    if mode == "both_lowrank":
        del roles["lokr_w1"]
        roles.update(lokr_w1_a=rng.normal(size=(a, r)), lokr_w1_b=rng.normal(size=(r, c)))
    return roles


# --- LyCORIS as the oracle (its own modules and forward pass: what training and loaders compute) ---------


def _lycoris_case(module_cls, seed, shape, **kwargs):
    """A LyCORIS module built by LyCORIS on a layer of ``shape`` with random factors: (roles, forward delta)."""
    import torch

    torch.manual_seed(seed)
    if len(shape) == 2:
        org = torch.nn.Linear(shape[1], shape[0], bias=False).double()
    else:
        org = torch.nn.Conv2d(shape[1], shape[0], shape[2:], bias=False).double()
    w0 = org.weight.detach().clone()
    module = module_cls("m", org, **kwargs).double()
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith(("hada_", "lokr_")):
                param.normal_()
    roles = {name: t.detach().numpy().copy() for name, t in module.state_dict().items()
             if name.startswith(("hada_", "lokr_")) or name == "alpha"}
    module.apply_to()
    with torch.no_grad():
        if len(shape) == 2:
            eye = torch.eye(shape[1], dtype=torch.float64)
            return roles, (module(eye) - eye @ w0.T).T.numpy()
        basis = torch.eye(shape[1] * int(np.prod(shape[2:])), dtype=torch.float64).reshape(-1, *shape[1:])
        out = module(basis) - torch.nn.functional.conv2d(basis, w0)  # [in*K, out, 1, 1]
        return roles, out.reshape(len(basis), shape[0]).T.reshape(shape).numpy()


def _assert_close_to_oracle(got, expected):
    """LyCORIS' kernels compute in fp32 even for fp64 weights: compare in norm, at fp32 precision."""
    assert got.shape == expected.shape
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected) + 1e-12


LYCORIS = settings(max_examples=15, deadline=None)


@LYCORIS
@given(seed=st.integers(0, 2**16), out=st.sampled_from([4, 6, 8]), inn=st.sampled_from([4, 6, 9]),
       r=st.integers(1, 4), alpha=st.sampled_from([1.0, 2.0, 4.0]), conv=st.booleans(), tucker=st.booleans())
def test_loha_delta_matches_lycoris(seed, out, inn, r, alpha, conv, tucker):
    from lycoris.modules.loha import LohaModule

    shape = (out, inn, 3, 3) if conv else (out, inn)
    roles, expected = _lycoris_case(LohaModule, seed, shape, lora_dim=r, alpha=alpha, use_tucker=tucker)
    _assert_close_to_oracle(module_delta(roles, out_shape=shape), expected)
    lr = lowrank_factors(roles, out_shape=shape)
    _assert_close_to_oracle((lr.up @ lr.down).reshape(shape), expected)


@LYCORIS
@given(seed=st.integers(0, 2**16), out=st.sampled_from([4, 8, 12]), inn=st.sampled_from([4, 6, 16]),
       r=st.integers(1, 4), alpha=st.sampled_from([1.0, 3.0]), conv=st.booleans(), tucker=st.booleans(),
       both=st.booleans(), factor=st.sampled_from([-1, 2, 4]))
def test_lokr_delta_matches_lycoris(seed, out, inn, r, alpha, conv, tucker, both, factor):
    from lycoris.modules.lokr import LokrModule

    shape = (out, inn, 3, 3) if conv else (out, inn)
    roles, expected = _lycoris_case(LokrModule, seed, shape, lora_dim=r, alpha=alpha, use_tucker=tucker,
                                    decompose_both=both, factor=factor)
    _assert_close_to_oracle(module_delta(roles, out_shape=shape), expected)
    lr = lowrank_factors(roles, out_shape=shape)
    _assert_close_to_oracle((lr.up @ lr.down).reshape(shape), expected)


# --- exact low-rank factors ---------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), algo=st.sampled_from(["lora", "locon_mid", "loha", "loha_tucker", "lokr",
                                                         "lokr_full", "lokr_tucker"]))
def test_lowrank_factors_are_exact(seed, algo):
    rng = _rng(seed)
    kernel = (3, 3)
    roles = {
        "lora": lambda: lora(rng, 6, 5, 3, alpha=1.5),
        "locon_mid": lambda: {"down": rng.normal(size=(3, 5, 1, 1)), "mid": rng.normal(size=(3, 3, *kernel)),
                              "up": rng.normal(size=(6, 3, 1, 1)), "alpha": np.array(2.0)},
        "loha": lambda: loha(rng, 6, 5, 2, 1.0),
        "loha_tucker": lambda: loha(rng, 6, 5, 2, 1.0, kernel, tucker=True),
        "lokr": lambda: lokr(rng, 2, 4, 3, 5, 2, 1.0),
        "lokr_full": lambda: lokr(rng, 2, 3, 2, 3, 1, 1.0, mode="full"),
        "lokr_tucker": lambda: lokr(rng, 2, 4, 3, 5, 2, 1.0, kernel, mode="tucker"),
    }[algo]()
    lr = lowrank_factors(roles)
    delta = module_delta(roles)
    assert lr.exact and lr.rank <= min(delta.shape[0], int(np.prod(delta.shape[1:])))
    np.testing.assert_allclose((lr.up @ lr.down).reshape(delta.shape), delta, rtol=1e-9, atol=1e-10)


def test_loha_exact_rank_is_r1_times_r2():
    roles = loha(_rng(0), 40, 30, 3, 1.0)
    assert lowrank_factors(roles).rank == 9


def test_truncated_factors_report_their_error():
    roles = loha(_rng(1), 20, 16, 3, 1.0)
    lr = lowrank_factors(roles, max_rank=4)
    delta = module_delta(roles)
    actual = np.linalg.norm(lr.up @ lr.down - delta) / np.linalg.norm(delta)
    assert lr.rank == 4 and not lr.exact
    assert actual == pytest.approx(lr.rel_error, rel=1e-9)


def test_dora_needs_the_base_weight():
    rng = _rng(2)
    roles = {**lora(rng, 4, 3, 2, alpha=2.0), "dora_scale": np.abs(rng.normal(size=(4,)))}
    with pytest.raises(DoraNeedsBase):
        module_delta(roles)
    with pytest.raises(DoraNeedsBase):
        lowrank_factors(roles)
    base = rng.normal(size=(4, 3))
    patched = base + module_delta(roles, base_weight=base)
    np.testing.assert_allclose(np.linalg.norm(patched, axis=1), roles["dora_scale"])


# --- factor-space SVD and resize ------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), out=st.integers(2, 30), inn=st.integers(2, 30), r=st.integers(1, 12),
       keep=st.integers(1, 12), conv=st.booleans())
def test_resize_error_is_the_eckart_young_optimum(seed, out, inn, r, keep, conv):
    kernel = (3, 3) if conv else ()
    roles = lora(_rng(seed), out, inn, r, alpha=float(r) / 2, kernel=kernel)
    new, row = resize_module(roles, ResizeSettings(rank=keep))
    delta = module_delta(roles)
    s = np.linalg.svd(delta.reshape(out, -1), compute_uv=False)
    k = row.rank_after
    assert k == min(keep, r, out, inn * (9 if conv else 1))
    optimum = np.sqrt(np.sum(s[k:] ** 2))
    actual = np.linalg.norm(module_delta(new) - delta)
    assert actual == pytest.approx(optimum, rel=1e-6, abs=1e-9 * np.linalg.norm(delta))
    assert new["down"].shape == (k, inn, *kernel)
    assert module_scale(new) == pytest.approx(module_scale(roles))  # kohya keeps alpha / rank


def test_factor_svd_equals_dense_svd():
    rng = _rng(3)
    up, down = rng.normal(size=(50, 6)), rng.normal(size=(6, 40))
    svd = factor_svd(up, down)
    np.testing.assert_allclose(svd.s, np.linalg.svd(up @ down, compute_uv=False)[:6], rtol=1e-10)


@pytest.mark.parametrize(("method", "param", "expected"), [
    ("sv_ratio", 4.0, 3),  # values > 8/4 = 2: 8, 4, 2.5 -> index 3 (+1 kohya) capped at len-1 + 1
    ("sv_cumulative", 0.5, 2),
    ("sv_fro", 0.9, 2),
])
def test_dynamic_rank_follows_kohya(method, param, expected):
    s = np.array([8.0, 4.0, 2.5, 1.0, 0.5])

    def kohya(s, method, param):  # sd-scripts networks/resize_lora.py, transcribed
        if method == "sv_ratio":
            index = max(1, min(int(np.sum(s > s[0] / param)), len(s) - 1))
        elif method == "sv_cumulative":
            index = max(1, min(int(np.searchsorted(np.cumsum(s) / s.sum(), param)) + 1, len(s) - 1))
        else:
            sq = s**2
            index = max(1, min(int(np.searchsorted(np.cumsum(sq) / sq.sum(), param**2)) + 1, len(s) - 1))
        return index + 1

    got = choose_rank(s, rank=None, method=method, param=param)
    assert got == kohya(s, method, param)
    assert got >= expected - 1
    assert choose_rank(s, rank=2, method=method, param=param) <= 2
    assert choose_rank(np.zeros(4), rank=3) == 1  # a zero delta keeps rank 1


def test_resize_rank_above_every_module_is_an_error():
    rng = _rng(4)
    tensors = {CanonicalKey("unet", "a", role): v for role, v in lora(rng, 8, 8, 4, alpha=4.0).items()}
    with pytest.raises(RankTooHigh):
        resize_tensors(tensors, ResizeSettings(rank=5))


# --- merge ------------------------------------------------------------------------------------------------


def _adapter(rng, modules: dict[str, dict]) -> dict[CanonicalKey, np.ndarray]:
    return {CanonicalKey("unet", path, role): v for path, roles in modules.items() for role, v in roles.items()}


@FAST
@given(seed=st.integers(0, 2**16), ranks=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       alphas=st.tuples(st.sampled_from([1.0, 4.0, 8.0]), st.sampled_from([None, 2.0])),
       weights=st.tuples(st.floats(-2, 2), st.floats(-2, 2)))
def test_merged_delta_is_the_weighted_sum(seed, ranks, alphas, weights):
    rng = _rng(seed)
    a = _adapter(rng, {"x": lora(rng, 10, 7, ranks[0], alphas[0]), "conv": lora(rng, 5, 4, 2, 1.0, (3, 3)),
                       "h": loha(rng, 6, 6, 2, 1.0)})
    b = _adapter(rng, {"x": lora(rng, 10, 7, ranks[1], alphas[1]), "only_b": lora(rng, 3, 3, 2, None),
                       "h": lokr(rng, 2, 3, 2, 3, 1, 1.0)})
    merged, rows = merge_modules([(a, weights[0]), (b, weights[1])], dtype=np.float64)
    for path in ("x", "conv", "h", "only_b"):
        parts = [(t, w) for t, w in ((a, weights[0]), (b, weights[1])) if w != 0]
        expected = sum(w * module_delta({k.role: v for k, v in t.items() if k.path == path})
                       for t, w in parts if any(k.path == path for k in t))
        got_roles = {k.role: v for k, v in merged.items() if k.path == path}
        if not got_roles:
            assert all(not any(k.path == path for k in t) for t, _ in parts)
            continue
        np.testing.assert_allclose(module_delta(got_roles), expected, rtol=1e-6, atol=1e-9)
        assert float(got_roles["alpha"]) == got_roles["down"].shape[0]  # scale 1


def test_merge_at_weight_zero_changes_nothing():
    rng = _rng(5)
    a = _adapter(rng, {"x": lora(rng, 8, 6, 3, 1.5)})
    b = _adapter(rng, {"x": lora(rng, 8, 6, 2, 2.0), "y": lora(rng, 4, 4, 2, 2.0)})
    alone, _ = merge_modules([(a, 1.0)], dtype=np.float64)
    with_zero, _ = merge_modules([(a, 1.0), (b, 0.0)], dtype=np.float64)
    assert alone.keys() == with_zero.keys()
    for key in alone:
        np.testing.assert_array_equal(alone[key], with_zero[key])
    roles = {k.role: v for k, v in with_zero.items()}
    np.testing.assert_allclose(module_delta(roles), module_delta({k.role: v for k, v in a.items()}), rtol=1e-12)


def test_merge_rank_reduction_is_optimal_and_bounded():
    rng = _rng(6)
    a = _adapter(rng, {"x": lora(rng, 30, 20, 4, 4.0)})
    b = _adapter(rng, {"x": lora(rng, 30, 20, 4, 2.0)})
    merged, rows = merge_modules([(a, 0.8), (b, 0.5)], rank=5, dtype=np.float64)
    exact = 0.8 * module_delta({k.role: v for k, v in a.items()}) + 0.5 * module_delta(
        {k.role: v for k, v in b.items()})
    s = np.linalg.svd(exact, compute_uv=False)
    got = module_delta({k.role: v for k, v in merged.items()})
    assert rows[0].rank == 5 and rows[0].merged_rank == 8
    assert np.linalg.norm(got - exact) == pytest.approx(np.sqrt(np.sum(s[5:] ** 2)), rel=1e-6)
    with pytest.raises(RankTooHigh):
        merge_modules([(a, 0.8), (b, 0.5)], rank=9)


def test_fp16_merge_equals_the_float64_merge_within_fp16_storage():
    """fp16 LoRA parents take the float32 path (down stacked as stored); the float64 merge is the reference."""
    rng = _rng(7)

    def half(modules):
        return {k: v.astype(np.float16) for k, v in _adapter(rng, modules).items()}

    a = half({"x": lora(rng, 40, 30, 4, 4.0), "conv": lora(rng, 8, 6, 2, 1.0, (3, 3))})
    b = half({"x": lora(rng, 40, 30, 2, 2.0), "h": loha(rng, 6, 6, 2, 1.0)})
    wide = {k: v.astype(np.float64) for k, v in a.items()}, {k: v.astype(np.float64) for k, v in b.items()}
    for rank in (None, 3):
        fast, _ = merge_modules([(a, 0.8), (b, -0.5)], rank=rank)  # storage dtype: the parents' fp16
        exact, _ = merge_modules([(wide[0], 0.8), (wide[1], -0.5)], rank=rank, dtype=np.float64)
        for path in ("x", "conv", "h"):
            got = module_delta({k.role: v for k, v in fast.items() if k.path == path})
            want = module_delta({k.role: v for k, v in exact.items() if k.path == path})
            assert np.linalg.norm(got - want) <= 2e-3 * np.linalg.norm(want), (rank, path)
        assert fast[CanonicalKey("unet", "x", "up")].dtype == np.float16
    exact_merge, _ = merge_modules([(a, 0.8), (b, -0.5)])
    stacked = np.concatenate([a[CanonicalKey("unet", "x", "down")], b[CanonicalKey("unet", "x", "down")]])
    assert np.array_equal(exact_merge[CanonicalKey("unet", "x", "down")].view(np.uint16), stacked.view(np.uint16))


def test_merge_of_fp16_and_bf16_parents():
    import ml_dtypes

    rng = _rng(8)
    a = {k: v.astype(np.float16) for k, v in _adapter(rng, {"x": lora(rng, 12, 9, 3, 3.0)}).items()}
    b = {k: v.astype(ml_dtypes.bfloat16) for k, v in _adapter(rng, {"x": lora(rng, 12, 9, 2, 2.0)}).items()}
    merged, _ = merge_modules([(a, 1.0), (b, 0.5)], dtype=np.float32)
    want = module_delta({k.role: v for k, v in a.items()}) + 0.5 * module_delta({k.role: v for k, v in b.items()})
    got = module_delta({k.role: v for k, v in merged.items()})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
