"""The tensor scan: statistics, and delta norms from Grams equal to the dense computation."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.verify import health, verify
from loraregistry.verify.shapes import factor_problems
from tests.adapters import write_adapter

NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
rng = np.random.default_rng(7)


def _scan(path):
    adapter = AdapterFile.open(path)
    deltas = {k: factor_problems(m)[0] for k, m in adapter.modules.items()}
    result = health.scan(adapter.path, adapter.header, adapter.modules, deltas)
    (module,) = result.modules.values()
    return result, module


def _r(*shape, dtype=np.float32):
    return rng.normal(0, 0.1, shape).astype(dtype)


def _dense_lora(down, up, alpha, mid=None):
    rank = down.shape[0]
    if mid is None:
        delta = up.reshape(up.shape[0], -1).astype(np.float64) @ down.reshape(rank, -1).astype(np.float64)
    else:
        delta = np.einsum("oa,abhw,bi->oihw", up[:, :, 0, 0].astype(np.float64), mid.astype(np.float64),
                          down[:, :, 0, 0].astype(np.float64))
    return alpha / rank * np.linalg.norm(delta)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_lora_norm_matches_dense(tmp_path, dtype):
    down, up = _r(4, 320, dtype=dtype), _r(320, 4, dtype=dtype)
    path = write_adapter(tmp_path / "a.safetensors", {f"{NAME}.lora_down.weight": down, f"{NAME}.lora_up.weight": up,
                                                      f"{NAME}.alpha": np.asarray(2.0, np.float32)})
    _, module = _scan(path)
    assert module.delta_norm == pytest.approx(_dense_lora(down, up, 2.0), rel=1e-4)
    assert module.delta_rms == pytest.approx(module.delta_norm / 320, rel=1e-9)


def test_chunked_scan_equals_one_pass(tmp_path, monkeypatch):
    down, up = _r(3, 320, 3, 3), _r(320, 3, 1, 1)
    path = write_adapter(tmp_path / "c.safetensors", {f"{CONV}.lora_down.weight": down, f"{CONV}.lora_up.weight": up})
    whole = _scan(path)[1].delta_norm
    monkeypatch.setattr(health, "CHUNK_ELEMENTS", 100)  # many chunks per tensor
    result, module = _scan(path)
    assert module.delta_norm == pytest.approx(whole, rel=1e-6)
    assert module.delta_norm == pytest.approx(_dense_lora(down, up, 3.0), rel=1e-4)
    expected = float((down.astype(np.float64) ** 2).sum())
    assert result.tensors[f"{CONV}.lora_down.weight"].sumsq == pytest.approx(expected)


def test_locon_tucker_norm_matches_dense(tmp_path):
    down, mid, up = _r(3, 320, 1, 1), _r(3, 3, 3, 3), _r(320, 3, 1, 1)
    path = write_adapter(tmp_path / "m.safetensors", {f"{CONV}.lora_down.weight": down, f"{CONV}.lora_mid.weight": mid,
                                                      f"{CONV}.lora_up.weight": up, f"{CONV}.alpha": np.float32(1.5)})
    assert _scan(path)[1].delta_norm == pytest.approx(_dense_lora(down, up, 1.5, mid), rel=1e-4)


def test_loha_norm_matches_dense(tmp_path):
    w1a, w1b, w2a, w2b = _r(320, 4), _r(4, 320), _r(320, 4), _r(4, 320)
    path = write_adapter(tmp_path / "h.safetensors", {f"{NAME}.hada_w1_a": w1a, f"{NAME}.hada_w1_b": w1b,
                                                      f"{NAME}.hada_w2_a": w2a, f"{NAME}.hada_w2_b": w2b,
                                                      f"{NAME}.alpha": np.float32(2.0)})
    dense = ((w1a.astype(np.float64) @ w1b) * (w2a.astype(np.float64) @ w2b))
    assert _scan(path)[1].delta_norm == pytest.approx(2.0 / 4 * np.linalg.norm(dense), rel=1e-4)


def test_lokr_norm_matches_dense(tmp_path):
    w1, w2a, w2b = _r(4, 8), _r(80, 2), _r(2, 40)  # kron -> (320, 320)
    path = write_adapter(tmp_path / "k.safetensors", {f"{NAME}.lokr_w1": w1, f"{NAME}.lokr_w2_a": w2a,
                                                      f"{NAME}.lokr_w2_b": w2b, f"{NAME}.alpha": np.float32(1.0)})
    adapter = AdapterFile.open(path)
    (info,) = adapter.modules.values()
    dense = np.kron(w1.astype(np.float64), w2a.astype(np.float64) @ w2b)
    assert dense.shape == (320, 320) and factor_problems(info) == ((320, 320), [])
    assert _scan(path)[1].delta_norm == pytest.approx(1.0 / info.rank * np.linalg.norm(dense), rel=1e-4)


def test_full_diff_norm(tmp_path):
    diff = _r(320, 320)
    path = write_adapter(tmp_path / "f.safetensors", {f"{NAME}.diff": diff})
    assert _scan(path)[1].delta_norm == pytest.approx(np.linalg.norm(diff.astype(np.float64)), rel=1e-5)


def test_counts_nan_inf_and_zeros(tmp_path):
    up = np.zeros((320, 2), np.float16)
    down = _r(2, 320, dtype=np.float16)
    down[0, :3] = np.nan
    down[1, 0] = np.inf
    path = write_adapter(tmp_path / "n.safetensors", {f"{NAME}.lora_down.weight": down, f"{NAME}.lora_up.weight": up})
    result, module = _scan(path)
    stats = result.tensors[f"{NAME}.lora_down.weight"]
    assert (stats.nan, stats.inf, stats.finite) == (3, 1, False)
    assert result.tensors[f"{NAME}.lora_up.weight"].all_zero and module.zero_delta and module.delta_norm is None
    report = verify(path)
    assert {"LRG400", "LRG402"} <= set(report.codes())


def test_unreadable_dtype_is_reported_not_fatal(tmp_path, monkeypatch):
    path = write_adapter(tmp_path / "u.safetensors", {f"{NAME}.lora_down.weight": _r(2, 320),
                                                      f"{NAME}.lora_up.weight": _r(320, 2)})
    real = health.numpy_dtype

    def no_f32(dtype):
        if dtype == "F32":
            raise health.InvalidSafetensorsError("dtype F32 cannot be read as a numpy array")
        return real(dtype)

    monkeypatch.setattr(health, "numpy_dtype", no_f32)
    report = verify(path)
    assert [f.code for f in report.findings if f.family == "health"] == ["LRG405", "LRG405"]


def test_extreme_threshold_is_a_delta_rms_of_one(tmp_path):
    # up and down with entries 0.5 and 2 at rank 1: every delta entry is 1.0 (RMS 1.0), scale 1.
    path = write_adapter(tmp_path / "x.safetensors", {f"{NAME}.lora_down.weight": np.full((1, 320), 2.0, np.float16),
                                                      f"{NAME}.lora_up.weight": np.full((320, 1), 0.5, np.float16)})
    found = [f for f in verify(path).findings if f.code == "LRG403"]
    assert len(found) == 1 and "RMS of 1" in found[0].message
    assert math.isclose(health.EXTREME_DELTA_RMS, 1.0)
