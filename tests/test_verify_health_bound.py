"""The fast tensor scan: bit-level counts and maxima equal the float ones, the integer float16/bfloat16 casts are
exact, and the cheap RMS bound decides the extreme-norm check exactly as the full norm does."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.safetensors_io import read_header
from loraregistry.verify import health, verify
from loraregistry.verify.shapes import factor_problems
from tests.adapters import write_adapter

NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
BITS_DTYPES = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64}


def _scan(path):
    adapter = AdapterFile.open(path)
    deltas = {k: factor_problems(m)[0] for k, m in adapter.modules.items()}
    result = health.scan(adapter.path, adapter.header, adapter.modules, deltas)
    (module,) = result.modules.values()
    return result, module


@pytest.mark.parametrize("name", list(BITS_DTYPES))
@pytest.mark.parametrize("specials", [(), (np.nan,), (np.inf, -np.inf), (np.nan, -np.inf, 0.0), (-0.0,)])
def test_bit_scan_equals_float_scan(name, specials, monkeypatch):
    rng = np.random.default_rng(len(specials))
    values = rng.normal(0, 3, 1000).astype(np.float64)
    values[::7] = 0.0
    values[1] = 1e-7 if name == "F16" else values[1]  # a float16 subnormal
    values[3 : 3 + len(specials)] = specials
    array = values.astype(BITS_DTYPES[name])
    monkeypatch.setattr(health, "CHUNK_ELEMENTS", 128)  # several blocks, some without the specials
    got = health._scan_bits(array, *health._BITS[name])
    want = health._scan_values(array) if name != "F64" else _float64_reference(array)
    assert got[:3] == want[:3] and got[3] == pytest.approx(want[3], rel=0, abs=0)
    for only in (array[::7], np.full(5, np.nan, array.dtype)):  # all zeros; NaN and nothing else
        assert health._scan_bits(only, *health._BITS[name])[2] is True


def _float64_reference(array):
    finite = np.isfinite(array)
    nan = int(np.isnan(array).sum())
    top = float(np.abs(array[finite]).max()) if finite.any() else 0.0
    return nan, int((~finite).sum()) - nan, top == 0.0, top


def test_float16_integer_cast_is_exact_for_every_finite_half():
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)]
    assert np.array_equal(health._float32(halves, "F16").view(np.uint32), halves.astype(np.float32).view(np.uint32))
    strided = halves[: 4000].reshape(40, 100)[:, 10:30]  # a column block, as the Gram pass slices it
    assert np.array_equal(health._float32(strided, "F16"), strided.astype(np.float32))


def test_bfloat16_integer_cast_is_exact():
    bf = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)
    assert np.array_equal(health._float32(bf, "BF16").view(np.uint32), bf.astype(np.float32).view(np.uint32))


def _write(tmp_path, tensors):
    return write_adapter(tmp_path / "b.safetensors", tensors)


def _r(rng, *shape, scale=0.3):
    return rng.normal(0, scale, shape).astype(np.float16)


def _cases(rng):
    one = np.float16(1.5)
    return {
        "lora": {f"{NAME}.lora_down.weight": _r(rng, 4, 320), f"{NAME}.lora_up.weight": _r(rng, 320, 4),
                 f"{NAME}.alpha": one},
        "locon_tucker": {f"{CONV}.lora_down.weight": _r(rng, 3, 320, 1, 1), f"{CONV}.lora_mid.weight": _r(rng, 3, 3, 3, 3),
                         f"{CONV}.lora_up.weight": _r(rng, 320, 3, 1, 1), f"{CONV}.alpha": one},
        "loha": {f"{NAME}.hada_w1_a": _r(rng, 320, 4), f"{NAME}.hada_w1_b": _r(rng, 4, 320),
                 f"{NAME}.hada_w2_a": _r(rng, 320, 4), f"{NAME}.hada_w2_b": _r(rng, 4, 320), f"{NAME}.alpha": one},
        "lokr": {f"{NAME}.lokr_w1": _r(rng, 4, 8), f"{NAME}.lokr_w2_a": _r(rng, 80, 2), f"{NAME}.lokr_w2_b": _r(rng, 2, 40),
                 f"{NAME}.alpha": one},
        "full": {f"{NAME}.diff": _r(rng, 320, 320)},
    }


@pytest.mark.parametrize("algo", ["lora", "locon_tucker", "loha", "lokr", "full"])
@pytest.mark.parametrize("seed", range(3))
def test_bound_is_an_upper_bound_of_the_exact_rms(tmp_path, algo, seed):
    _, module = _scan(_write(tmp_path, _cases(np.random.default_rng(seed))[algo]))
    assert module.rms_bound is not None and module.delta_rms is not None
    assert module.delta_rms <= module.rms_bound


def _rank2(tmp_path, second_row: float):
    """Rank 2, scale 1: up columns all ones (max 1), down rows 0.6 and ``second_row``: every delta entry is
    0.6 + second_row, while the bound says 2 * 1 * max|down| = 1.2."""
    down = np.stack([np.full(320, 0.6), np.full(320, second_row)]).astype(np.float16)
    return _write(tmp_path, {f"{NAME}.lora_down.weight": down, f"{NAME}.lora_up.weight": np.ones((320, 2), np.float16),
                             f"{NAME}.alpha": np.float16(2.0)})


def test_bound_over_threshold_exact_just_under_is_clean(tmp_path):
    path = _rank2(tmp_path, 0.39)
    _, module = _scan(path)
    assert module.rms_bound == pytest.approx(1.2, rel=1e-3) and module.delta_rms == pytest.approx(0.99, rel=1e-3)
    assert not module.exceeds(health.EXTREME_DELTA_RMS)
    assert "LRG403" not in verify(path).codes()


def test_bound_over_threshold_exact_just_over_is_extreme(tmp_path):
    path = _rank2(tmp_path, 0.41)
    _, module = _scan(path)
    assert module.delta_rms == pytest.approx(1.01, rel=1e-3) and module.exceeds(health.EXTREME_DELTA_RMS)
    (found,) = [f for f in verify(path).findings if f.code == "LRG403"]
    assert "RMS of 1.01" in found.message


def test_bound_just_under_threshold_never_computes_the_exact_norm(tmp_path, monkeypatch):
    # rank 1, up 0.5, down 1.99: bound = exact = 0.995 (a rank-1 constant delta meets the bound)
    path = _write(tmp_path, {f"{NAME}.lora_down.weight": np.full((1, 320), 1.99, np.float16),
                             f"{NAME}.lora_up.weight": np.full((320, 1), 0.5, np.float16)})

    def no_exact(*args, **kwargs):
        raise AssertionError("the bound decides: the exact norm must not be computed")

    monkeypatch.setattr(health, "_delta_norm", no_exact)
    _, module = _scan(path)
    assert module.rms_bound == pytest.approx(0.995, rel=1e-3)
    assert not module.exceeds(health.EXTREME_DELTA_RMS)
    assert "LRG403" not in verify(path).codes()


def test_sumsq_is_computed_on_first_use_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    down = _r(rng, 4, 320, scale=0.05)
    path = _write(tmp_path, {f"{NAME}.lora_down.weight": down, f"{NAME}.lora_up.weight": _r(rng, 320, 4, scale=0.01)})
    calls = []
    real = health._float_pass
    monkeypatch.setattr(health, "_float_pass", lambda *a: calls.append(a[0].name) or real(*a))
    result, module = _scan(path)
    assert not module.exceeds(health.EXTREME_DELTA_RMS) and calls == []  # small factors: the bound decides
    stats = result.tensors[f"{NAME}.lora_down.weight"]
    expected = float(np.sum(np.square(down, dtype=np.float64)))
    assert stats.sumsq == pytest.approx(expected, rel=1e-6) and calls == [stats.key]
    assert stats.sumsq == pytest.approx(expected, rel=1e-6) and calls == [stats.key]  # cached


@pytest.mark.parametrize("chunk", [7, 64, 1 << 22])
def test_batched_runs_equal_the_per_tensor_scan(tmp_path, monkeypatch, chunk):
    """Runs of back-to-back tensors (split by dtype changes, empty tensors, NaNs, window edges) give each tensor
    the counts and maximum a scan of that tensor alone gives."""
    rng = np.random.default_rng(3)
    arrays = {}
    for i, dtype in enumerate([np.float16, np.float16, np.float32, ml_dtypes.bfloat16, np.float16, np.int8,
                               np.float16, np.float64, np.float16]):
        a = rng.normal(0, 2, (int(rng.integers(1, 40)), 3)).astype(dtype)
        if i == 4:
            a.reshape(-1)[5] = np.nan
        if i == 6:
            a[...] = 0
        arrays[f"t{i}"] = a
    arrays["empty"] = np.zeros((0, 3), np.float16)
    arrays["scalar"] = np.asarray(1.5, np.float16)
    path = write_adapter(tmp_path / "runs.safetensors", arrays)
    monkeypatch.setattr(health, "CHUNK_ELEMENTS", chunk)
    header = read_header(path)  # the keys are no adapter format: scan the header's tensors directly
    result = health.scan(path, header, {}, {})
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(header.data_size,))
    for info in header.tensors.values():
        alone = health._scan_tensor(info, health._array(data, info, health.HealthScan()), lambda: 0.0)
        got = result.tensors[info.name]
        assert (got.nan, got.inf, got.all_zero, got.max_abs) == (alone.nan, alone.inf, alone.all_zero, alone.max_abs)
    assert result.tensors["t4"].nan == 1 and result.tensors["t6"].all_zero and not result.tensors["empty"].all_zero
