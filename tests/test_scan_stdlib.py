"""Pass one of the tensor scan on the standard library (verify/bitscan) equals numpy's pass one, field for field,
and a verify of a small clean fp16 file never imports numpy."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraregistry.safetensors_io import encode_header, read_header
from loraregistry.verify import bitscan, health, verify
from tests.adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter
from tests.known_bad import KNOWN_BAD

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = sorted((ROOT / "tests" / "golden").rglob("*.safetensors"))
SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
INF_BITS = {"F16": 0x7C00, "BF16": 0x7F80, "F32": 0x7F80_0000, "F64": 0x7FF0_0000_0000_0000}
WORD = {2: "<u2", 4: "<u4", 8: "<u8"}


def _fields(result: health.HealthScan) -> list[tuple]:
    return [(t.key, t.numel, t.nan, t.inf, t.all_zero, t.max_abs) for t in result.tensors.values()]


def _both_paths(path: Path) -> tuple[list[tuple], list[tuple], dict]:
    header = read_header(path)
    stdlib = health.scan(path, header, {}, {}, stdlib=True)
    numpy = health.scan(path, header, {}, {}, stdlib=False)
    assert stdlib.unscannable == numpy.unscannable
    return _fields(stdlib), _fields(numpy), bitscan.pass_one(path, header)


# --- random bit patterns -----------------------------------------------------------------------------------

SPECIALS = {  # -0, smallest/largest subnormal, smallest normal, largest finite, +Inf, a NaN, 1.0
    "F16": [0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0x7E00, 0x3C00],
    "BF16": [0x8000, 0x0001, 0x007F, 0x0080, 0x7F7F, 0x7F80, 0x7FC0, 0x3F80],
    "F32": [0x8000_0000, 0x1, 0x007F_FFFF, 0x0080_0000, 0x7F7F_FFFF, 0x7F80_0000, 0x7FC0_0000, 0x3F80_0000],
    "F64": [1 << 63, 0x1, (1 << 52) - 1, 1 << 52, 0x7FEF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000,
            0x7FF8_0000_0000_0000, 0x3FF0_0000_0000_0000],
}


@st.composite
def tensor_specs(draw):
    """(dtype, shape, mode, seed, fraction, depth): how ``_words`` fills one tensor."""
    dtype = draw(st.sampled_from(sorted(SIZES)))
    shape = draw(st.one_of(st.just(()), st.just((0,)), st.tuples(st.integers(1, 70)),
                           st.tuples(st.integers(60, 3000)), st.tuples(st.integers(1, 40), st.integers(1, 90))))
    mode = draw(st.sampled_from(["random", "ties", "specials", "zeros", "normal", "nonfinite"]))
    return dtype, shape, mode, draw(st.integers(0, 2**32 - 1)), draw(st.floats(0.0, 1.0)), draw(st.integers(1, 7))


def _words(spec) -> tuple[str, tuple[int, ...], bytes]:
    """Raw little-endian words: random bits; values tied on their leading byte(s) (``depth`` of them, a
    ``fraction`` of the values, the rest below); specials; all zeros (+-0); normal floats; finite with a few
    NaN/Inf."""
    dtype, shape, mode, seed, fraction, depth = spec  # depth: leading bytes tied (at most all but one)
    rng = np.random.default_rng(seed)
    size = SIZES[dtype]
    n = math.prod(shape)
    bits = 8 * size
    words = rng.integers(0, 1 << bits, n, dtype=np.uint64, endpoint=False) if bits < 64 else \
        rng.integers(0, 1 << 63, n, dtype=np.uint64) | (rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63))
    if mode == "ties":
        keep = min(depth, size - 1) * 8  # leading bits shared by the tied values (sign free)
        lead = int(rng.integers(0, INF_BITS[dtype] >> (bits - keep)))  # finite leading bits
        low = words & ((1 << (bits - keep)) - 1)
        tied = (np.uint64(lead) << np.uint64(bits - keep)) | low
        below = words % max(1, lead << (bits - keep))  # smaller magnitudes
        words = np.where(rng.random(n) < fraction, tied, below)
        words |= rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(bits - 1)  # random signs
    elif mode == "specials":
        words = rng.choice(np.array(SPECIALS[dtype], dtype=np.uint64), n)
    elif mode == "zeros":
        words = rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(bits - 1)
    elif mode in ("normal", "nonfinite"):
        values = rng.normal(0, 10.0 ** rng.integers(-6, 3), n).astype(np.float32)
        if dtype == "F16":
            words = values.astype(np.float16).view(np.uint16).astype(np.uint64)
        elif dtype == "BF16":
            words = values.astype(ml_dtypes.bfloat16).view(np.uint16).astype(np.uint64)
        elif dtype == "F32":
            words = values.view(np.uint32).astype(np.uint64)
        else:
            words = values.astype(np.float64).view(np.uint64)
        if mode == "nonfinite" and n:
            spots = rng.integers(0, n, int(rng.integers(1, 4)))
            words[spots] = rng.choice(np.array(SPECIALS[dtype][5:7], dtype=np.uint64), spots.size)
    return dtype, shape, words.astype(WORD[size]).tobytes()


def _write_raw(path: Path, tensors: list[tuple[str, tuple[int, ...], bytes]], shims: list[int]) -> Path:
    """Tensors back to back in the given order, each after a U8 shim of ``shims[i]`` bytes (odd alignments)."""
    entries, chunks, offset = {}, [], 0
    for i, ((dtype, shape, data), shim) in enumerate(zip(tensors, shims)):
        if shim:
            entries[f"shim{i}"] = {"dtype": "U8", "shape": [shim], "data_offsets": [offset, offset + shim]}
            chunks.append(bytes(range(shim)))
            offset += shim
        entries[f"t{i}"] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    path.write_bytes(encode_header(entries, None) + b"".join(chunks))
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(tensor_specs(), min_size=1, max_size=6), shims=st.lists(st.integers(0, 3), min_size=6,
                                                                              max_size=6))
def test_stdlib_pass_one_equals_numpy_on_random_bits(specs, shims):
    tensors = [_words(spec) for spec in specs]
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_raw(Path(tmp) / "bits.safetensors", tensors, shims)
        stdlib, numpy, settled = _both_paths(path)
    assert stdlib == numpy
    for i, (dtype, shape, data) in enumerate(tensors):
        finite = all(stats[2] == stats[3] == 0 for stats in numpy if stats[0] == f"t{i}")
        if finite or math.prod(shape) <= bitscan.SMALL_TENSOR:  # settled without numpy
            assert f"t{i}" in settled, (dtype, shape)


@pytest.mark.parametrize("monkeypatched", [{"MAX_TIES": 0}, {"MAX_TIES": 10**9}, {"_SAMPLE": 1}])
def test_tie_and_sample_limits_do_not_change_the_fields(monkeypatched, monkeypatch, tmp_path):
    """Every tie path (read whole, narrowed column by column) and the worst sample give the same fields."""
    for name, value in monkeypatched.items():
        monkeypatch.setattr(bitscan, name, value)
    tensors = [_words((dtype, (500,), mode, seed, 0.9, depth)) for seed, (dtype, mode, depth) in enumerate(
        [(d, m, k) for d in SIZES for m in ("ties", "normal", "zeros", "specials") for k in (1, 2, 3)])]
    stdlib, numpy, _ = _both_paths(_write_raw(tmp_path / "t.safetensors", tensors, [1] * len(tensors)))
    assert stdlib == numpy


def test_one_column_tie_values(tmp_path):
    """Handpicked: the maximum hides among many values tied on the leading byte(s), of either sign."""
    halves = [0x3C00 | b for b in range(200)] + [0xBCFF]  # -1.99..., tied on 0x3C with +1.x
    floats = [0x3F80_0000 | (b << 8) for b in range(100)] + [0xBF80_FFFF, 0x3F80_FF00]  # ties on 3 bytes
    data = [("F16", (len(halves),), struct.pack(f"<{len(halves)}H", *halves)),
            ("BF16", (len(halves),), struct.pack(f"<{len(halves)}H", *halves)),
            ("F32", (len(floats),), struct.pack(f"<{len(floats)}I", *floats))]
    stdlib, numpy, settled = _both_paths(_write_raw(tmp_path / "ties.safetensors", data, [0, 1, 3]))
    assert stdlib == numpy and set(settled) == {"t0", "t1", "t2"}
    assert settled["t0"][3] == float(np.array(0x3CFF, np.uint16).view(np.float16))  # max_abs: a magnitude
    assert settled["t2"][3] == float(np.array(0x3F80_FFFF, np.uint32).view(np.float32))


# --- whole reports ------------------------------------------------------------------------------------------

def _documents(path: Path, monkeypatch, base: str | None = None) -> tuple[dict, dict]:
    documents = []
    for stdlib in (True, False):
        monkeypatch.setattr(health, "_stdlib_first", lambda header, s=stdlib: s)
        documents.append(verify(path, base=base).to_dict())
    return documents[0], documents[1]


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.name)
def test_golden_reports_are_identical_through_both_paths(path, monkeypatch):
    stdlib, numpy = _documents(path, monkeypatch)
    assert stdlib == numpy


@pytest.mark.parametrize("case", KNOWN_BAD_ADAPTERS, ids=lambda c: c.name)
def test_known_bad_reports_are_identical_through_both_paths(case, monkeypatch, tmp_path):
    stdlib, numpy = _documents(case.build(tmp_path), monkeypatch, case.base)
    assert stdlib == numpy


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_known_bad_containers_report_identically_through_both_paths(bad, monkeypatch, tmp_path):
    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    stdlib, numpy = _documents(path, monkeypatch)
    assert stdlib == numpy


def _kohya(dtype, *, seed: int, poison: str | None = None, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Every SD1 default target, rank 4: uniform downs (kaiming-like: many ties on the leading byte), normal ups."""
    tensors = lora_tensors("sd1", rank=4, small=False, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed)
    for key, value in tensors.items():
        if key.endswith("lora_down.weight"):
            bound = 1 / math.sqrt(value[0].size)
            value = rng.uniform(-bound, bound, value.shape)
        tensors[key] = (value * (scale if "lora_up" in key else 1.0)).astype(dtype)
    if poison:
        key = sorted(k for k in tensors if k.endswith("lora_up.weight"))[3]
        tensors[key].reshape(-1)[7] = {"nan": np.nan, "inf": -np.inf}[poison]
    return tensors


@pytest.mark.parametrize("dtype,poison,scale", [(np.float16, None, 1.0), (ml_dtypes.bfloat16, None, 1.0),
                                                (np.float32, None, 1.0), (np.float16, "nan", 1.0),
                                                (ml_dtypes.bfloat16, "inf", 1.0), (np.float16, None, 50000.0)],
                         ids=["f16", "bf16", "f32", "f16-nan", "bf16-inf", "f16-extreme"])
def test_generated_reports_are_identical_through_both_paths(dtype, poison, scale, monkeypatch, tmp_path):
    path = write_adapter(tmp_path / "kohya.safetensors", _kohya(dtype, seed=5, poison=poison, scale=scale))
    stdlib, numpy = _documents(path, monkeypatch)
    assert stdlib == numpy
    codes = [f["code"] for f in stdlib["findings"]]
    assert ("LRG400" in codes) == (poison is not None)  # the file is scanned, not skipped
    assert ("LRG403" in codes) == (scale > 1)


# --- numpy stays unloaded --------------------------------------------------------------------------------------

CHILD = r"""
import json, sys
from loraregistry.verify import health
health.STDLIB_SCAN_BYTES = int(sys.argv[1])
from loraregistry.cli import main
loaded = []
for path in sys.argv[2:]:
    code = main(["verify", "--json", path])
    loaded.append("numpy" in sys.modules)
sys.stderr.write("LOADED " + json.dumps(loaded) + "\n")
"""


def _child(budget: int, *paths: Path) -> tuple[list[dict], list[bool]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(budget), *map(str, paths)], env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("LOADED ")]
    assert lines, done.stderr[-2000:]
    decoder, documents, text = json.JSONDecoder(), [], done.stdout.strip()
    while text:
        document, end = decoder.raw_decode(text)
        documents.append(document)
        text = text[end:].strip()
    return documents, json.loads(lines[-1].removeprefix("LOADED "))


def test_verify_json_of_a_small_fp16_file_imports_no_numpy(tmp_path, monkeypatch):
    path = write_adapter(tmp_path / "small.safetensors", _kohya(np.float16, seed=2),
                         {"modelspec.license": "mit", "modelspec.trigger_phrase": "sks"})
    documents, loaded = _child(health.STDLIB_SCAN_BYTES, path)
    assert loaded == [False]
    monkeypatch.setattr(health, "_stdlib_first", lambda header: False)
    assert documents[0]["files"] == [verify(path).to_dict()]


def test_the_budget_hands_later_files_to_numpy(tmp_path):
    paths = [write_adapter(tmp_path / f"{i}.safetensors", _kohya(np.float16, seed=i)) for i in range(2)]
    budget = read_header(paths[0]).data_size * 3 // 2  # the first file fits, the second not
    documents, loaded = _child(budget, *paths)
    assert loaded == [False, True]
    stdlib_first, _ = _child(budget * 4, *paths)
    assert documents == stdlib_first  # the same documents whichever path scanned


def test_a_file_shorter_than_its_header_is_left_to_numpy(tmp_path):
    data = [("F16", (100,), bytes(200)), ("F32", (3,), bytes(12))]
    path = _write_raw(tmp_path / "short.safetensors", data, [0, 0])
    header = read_header(path)
    assert set(bitscan.pass_one(path, header)) == {"t0", "t1"}
    path.write_bytes(path.read_bytes()[:-1])  # shrunk after its header was read
    assert bitscan.pass_one(path, header) is None


def test_empty_tensors_only(tmp_path):
    data = [("F16", (0,), b""), ("BF16", (0, 4), b""), ("I8", (0,), b"")]
    stdlib, numpy, settled = _both_paths(_write_raw(tmp_path / "empty.safetensors", data, [0, 0, 0]))
    assert stdlib == numpy and set(settled) == {"t0", "t1"}
