"""The fast resize path: exact fp16/bf16 -> float32 reads, the Gram/Cholesky factor SVD and its fallbacks
(float64 Grams, then QR) on ill-conditioned factors, batched = one at a time, and errors at the optimum."""

from __future__ import annotations

import numpy as np
import pytest

from loraregistry.canonical import CanonicalKey
from loraregistry.cli import cli, main
from loraregistry.ops.delta import module_delta
from loraregistry.ops.errors import UnsupportedModule
from loraregistry.ops.lowrank import factor_svd, factor_svds, to_float32
from loraregistry.ops.resize import ResizeSettings, resize_module, resize_tensors
from loraregistry.safetensors_io import write_safetensors
from tests.adapters import lora_tensors


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- reading fp16 / bf16 as float32 ---------------------------------------------------------------------


def test_every_finite_half_reads_exactly():
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]  # zeros of both signs, subnormals, normals, the extremes
    got = to_float32(finite.reshape(16, -1))
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), finite.astype(np.float32).reshape(16, -1).view(np.uint32))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_half_is_refused(bad):
    factors = np.ones((4, 8), dtype=np.float16)
    factors[2, 5] = bad
    with pytest.raises(UnsupportedModule, match="infinite or NaN"):
        to_float32(factors)


def test_bf16_and_float32_read_exactly():
    import ml_dtypes

    values = _rng(0).normal(size=(8, 16)).astype(np.float32)
    bf16 = values.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(to_float32(bf16), bf16.astype(np.float32))
    assert to_float32(values) is values  # no copy


# --- Gram/Cholesky, and where it gives way -------------------------------------------------------------------


def _well(rng, out=60, inn=50, r=8):
    return rng.normal(size=(out, r)), rng.normal(size=(r, inn))


def _near_collinear_down(rng, gap):
    """Row 1 of ``down`` is row 0 plus ``gap`` of noise: the Gram matrix is singular to ~gap^2."""
    up, down = _well(rng)
    down[1] = down[0] + gap * rng.normal(size=down.shape[1])
    return up, down


def _repeated_down(rng):
    up, down = _well(rng)
    down[3] = down[2]  # exactly rank-deficient: Cholesky fails
    return up, down


def _zero_up(rng):
    up, down = _well(rng)
    return np.zeros_like(up), down


def _graded(rng, spread):
    """Singular values of ``up`` spread over ``spread``: ill-conditioned without any collinear pair."""
    q1, _ = np.linalg.qr(rng.normal(size=(60, 8)))
    q2, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    return (q1 * np.geomspace(1, 1 / spread, 8)) @ q2, rng.normal(size=(8, 50))


# (case, factors, float32 input, expected path: (method, dtype of the basis))
CONDITIONING = [
    ("well conditioned, float32", _well, True, ("cholesky", np.float32)),
    ("well conditioned, float64", _well, False, ("cholesky", np.float64)),
    ("graded 1e3, float32 -> float64 Grams", lambda r: _graded(r, 1e3), True, ("cholesky", np.float64)),
    ("near-collinear down rows 1e-2, float32", lambda r: _near_collinear_down(r, 1e-2), True, ("cholesky", np.float64)),
    ("near-collinear down rows 1e-7 -> QR", lambda r: _near_collinear_down(r, 1e-7), False, ("qr", np.float64)),
    ("graded 1e8 -> QR", lambda r: _graded(r, 1e8), False, ("qr", np.float64)),
    ("repeated down row -> QR", _repeated_down, True, ("qr", np.float64)),
    ("zero up -> QR", _zero_up, True, ("qr", np.float64)),
]


@pytest.mark.parametrize(("case", "make", "single", "path"), CONDITIONING, ids=[c[0] for c in CONDITIONING])
def test_factor_svd_takes_the_safe_path_and_reaches_the_optimum(case, make, single, path):
    up, down = make(_rng(7))
    if single:
        up, down = up.astype(np.float32), down.astype(np.float32)
    svd = factor_svd(up, down)
    assert (svd.method, svd.left.dtype) == path

    dense = np.asarray(up, np.float64) @ np.asarray(down, np.float64)
    s = np.linalg.svd(dense, compute_uv=False)
    norm = np.linalg.norm(dense)
    products = 1e-5 if single else 1e-9  # float32 inputs: float32 products
    np.testing.assert_allclose(svd.s, s[: svd.rank], rtol=0, atol=products * norm)
    for k in range(1, svd.rank):
        new_up, new_down = svd.factors(k)
        error = np.linalg.norm(dense - np.asarray(new_up, np.float64) @ np.asarray(new_down, np.float64))
        optimum = np.sqrt(np.sum(s[k:] ** 2))  # Eckart-Young
        assert error == pytest.approx(optimum, abs=products * norm)
        # the reported error (and kohya's dynamic rank) needs the small singular values to their own precision
        if optimum > 1e-12 * norm:
            assert svd.error(k)[0] == pytest.approx(optimum, rel=1e-4 if single else 1e-7)


def test_the_bases_are_orthonormal_on_every_path():
    for _, make, single, _ in CONDITIONING[:5]:
        up, down = make(_rng(3))
        svd = factor_svd(up.astype(np.float32) if single else up, down.astype(np.float32) if single else down)
        eye = np.eye(svd.rank)
        tolerance = 1e-4 if single else 1e-8
        np.testing.assert_allclose(svd.u.T.astype(np.float64) @ svd.u, eye, atol=tolerance)
        np.testing.assert_allclose(svd.vt.astype(np.float64) @ svd.vt.T, eye, atol=tolerance)


def test_batched_svds_equal_one_at_a_time():
    rng = _rng(11)
    pairs = [_well(rng, 40, 30, 8), _repeated_down(rng), _well(rng, 20, 70, 4), _near_collinear_down(rng, 1e-2),
             _graded(rng, 1e8), _well(rng, 40, 30, 8)]
    pairs = [(u.astype(np.float32), d.astype(np.float32)) if i % 2 == 0 else (u, d) for i, (u, d) in enumerate(pairs)]
    batched = factor_svds(pairs)
    for (up, down), got in zip(pairs, batched):
        alone = factor_svd(up, down)
        assert got.method == alone.method and got.left.dtype == alone.left.dtype
        np.testing.assert_allclose(got.s, alone.s, rtol=1e-12, atol=1e-12 * alone.s[0])


def test_non_finite_float64_factors_are_refused():
    up, down = _well(_rng(1))
    down[0, 0] = np.nan
    with pytest.raises(UnsupportedModule, match="infinite or NaN"):
        factor_svd(up, down)


# --- resize on fp16 storage --------------------------------------------------------------------------------


def _fp16_lora(rng, out, inn, r, alpha, kernel=()):
    return {"down": rng.normal(0, 0.05, (r, inn, *kernel)).astype(np.float16),
            "up": rng.normal(0, 0.01, (out, r, *([1] * len(kernel)))).astype(np.float16),
            "alpha": np.array(alpha, dtype=np.float16)}


@pytest.mark.parametrize(("out", "inn", "r", "k", "kernel"), [
    (320, 768, 16, 4, ()), (640, 640, 32, 8, ()), (64, 32, 8, 2, (3, 3)), (1280, 320, 64, 16, (1, 1)),
])
def test_fp16_resize_is_the_optimum_within_fp16_storage(out, inn, r, k, kernel):
    roles = _fp16_lora(_rng(out + r), out, inn, r, alpha=r / 2, kernel=kernel)
    new, row = resize_module(roles, ResizeSettings(rank=k))
    assert new["up"].dtype == np.float32  # computed in float32 ...
    stored = {**new, "down": new["down"].astype(np.float16), "up": new["up"].astype(np.float16)}  # ... kept as fp16
    delta = module_delta(roles)
    s = np.linalg.svd(delta.reshape(out, -1), compute_uv=False)
    optimum = np.sqrt(np.sum(s[k:] ** 2)) / np.linalg.norm(delta)
    achieved = np.linalg.norm(module_delta(stored) - delta) / np.linalg.norm(delta)
    assert row.rel_error == pytest.approx(optimum, rel=1e-5)
    assert optimum <= achieved + 1e-12 and achieved - optimum <= 1e-3 * optimum  # fp16 rounding only
    assert stored["down"].shape == (k, inn, *kernel)


def test_batched_resize_equals_module_by_module():
    rng = _rng(5)
    modules = {f"m{i}": _fp16_lora(rng, *shape, alpha=4.0) for i, shape in
               enumerate([(320, 320, 8), (320, 320, 8), (640, 2048, 16), (64, 32, 4), (320, 320, 8)])}
    modules["m5"] = {**modules["m0"], "down": modules["m0"]["down"].copy()}
    modules["m5"]["down"][1] = modules["m5"]["down"][0]  # rank-deficient: a QR module inside a batch
    tensors = {CanonicalKey("unet", path, role): a for path, roles in modules.items() for role, a in roles.items()}
    for settings in (ResizeSettings(rank=3), ResizeSettings(method="sv_fro", param=0.7, rank=6)):
        batched, rows = resize_tensors(tensors, settings)
        for row in rows:
            path = next(p for p in modules if row.module.endswith(p))
            alone, alone_row = resize_module(modules[path], settings)
            assert (row.rank_after, row.rank_before) == (alone_row.rank_after, alone_row.rank_before)
            assert row.rel_error == pytest.approx(alone_row.rel_error, rel=1e-6)
            got = batched[CanonicalKey("unet", path, "up")].astype(np.float32) @ \
                batched[CanonicalKey("unet", path, "down")].astype(np.float32)
            want = (alone["up"] @ alone["down"]).astype(np.float16).astype(np.float32)
            np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_a_nan_module_is_named(tmp_path):
    tensors = {CanonicalKey("unet", p, role): a for p, roles in
               {"ok": _fp16_lora(_rng(1), 16, 8, 4, 2.0), "broken": _fp16_lora(_rng(2), 16, 8, 4, 2.0)}.items()
               for role, a in roles.items()}
    tensors[CanonicalKey("unet", "broken", "up")][3, 1] = np.nan
    with pytest.raises(UnsupportedModule, match="broken.*infinite or NaN"):
        resize_tensors(tensors, ResizeSettings(rank=2))


@pytest.fixture(autouse=False)
def _ops_commands(monkeypatch):
    monkeypatch.setitem(cli.lazy_commands, "resize", "loraregistry.cli.ops_cmd:resize")


def test_cli_refuses_a_nan_factor_naming_the_file(tmp_path, capsys, _ops_commands):
    tensors = lora_tensors("sd1", rank=4, alpha=2.0, seed=1)
    key = next(k for k in tensors if k.endswith(".lora_up.weight"))
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.inf
    src, out = tmp_path / "nan.safetensors", tmp_path / "out.safetensors"
    write_safetensors(src, tensors)
    assert main(["resize", str(src), "--rank", "2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "NaN" in err and "infinite" in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("dynamic", ["sv_fro=0.9", "sv_ratio=4", "sv_cumulative=0.6", "sv_fro=0.5"])
def test_kohya_dynamic_ranks_are_the_same_on_the_fast_path(dynamic):
    """fp16 factors take the float32 Gram path; their float64 copies the float64 one: same kohya ranks."""
    rng = _rng(9)
    modules = {}
    for i, (out, inn, r) in enumerate([(320, 320, 16), (640, 2048, 32), (1280, 320, 64), (64, 32, 8)]):
        roles = _fp16_lora(rng, out, inn, r, alpha=r / 2)
        decay = np.geomspace(1, 10.0 ** -(i + 1), r).astype(np.float32)  # a different spectrum per module
        roles["up"] = (roles["up"].astype(np.float32) * decay).astype(np.float16)
        modules[f"m{i}"] = roles
    half = {CanonicalKey("unet", p, role): a for p, roles in modules.items() for role, a in roles.items()}
    double = {k: a.astype(np.float64) for k, a in half.items()}
    settings = ResizeSettings.parse_dynamic(dynamic)
    _, fast = resize_tensors(half, settings)
    _, exact = resize_tensors(double, settings)
    assert [r.rank_after for r in fast] == [r.rank_after for r in exact]
    assert len({r.rank_after for r in exact}) > 1  # the spectra really differ
    for a, b in zip(fast, exact):
        assert a.retained_fro == pytest.approx(b.retained_fro, rel=1e-5)


def test_the_parent_record_holds_the_input_hashes(tmp_path):
    from loraregistry.adapter import AdapterFile
    from loraregistry.hashes import content_hashes, hash_file
    from loraregistry.ops.resize import resize

    src, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    write_safetensors(src, lora_tensors("sd1", rank=4, alpha=2.0, seed=1), {"ss_network_dim": "4"})
    expected = hash_file(src)
    assert content_hashes(src, AdapterFile.open(src).header.data_offset) == (expected.sha256, expected.autov3)
    result = resize(src, out, ResizeSettings(rank=2))
    (parent,) = AdapterFile.open(out).metadata.provenance.parents
    assert (parent.sha256, parent.tensor_sha256, parent.name) == (expected.sha256, expected.autov3, src.name)
    assert result.output.sha256 == hash_file(out).sha256 and result.output.tensor_sha256 == hash_file(out).autov3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("bad", [None, np.inf, -np.inf, np.nan])
def test_module_check_finds_non_finite_values_in_every_float_dtype(dtype, bad):
    """ops.validate reads 16-bit floats by their exponent bits: the same verdict as a float64 sum."""
    import ml_dtypes

    from loraregistry.ops.errors import MalformedModule
    from loraregistry.ops.validate import check_module

    kind = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    roles = {"down": _rng(2).normal(size=(4, 8)).astype(kind), "up": _rng(3).normal(size=(6, 4)).astype(kind)}
    roles["down"][1, 2] = np.float32(65504.0)  # the largest finite half: still fine
    if bad is not None:
        roles["up"][5, 3] = bad
        with pytest.raises(MalformedModule, match="NaN, infinite"):
            check_module("unet:m", roles, "x.safetensors")
    else:
        check_module("unet:m", roles, "x.safetensors")
