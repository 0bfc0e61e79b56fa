"""Fuzzing verify: mutated headers and bytes of good adapters give reports or LoraregErrors, never a traceback
or a hang, and adversarial headers cannot make verify allocate what they claim.

The mutation engine is ``scripts/fuzz_verify.py`` (run it for 100,000+ cases outside CI); here it runs
``MUTATION_CASES`` seeded cases over small seeds (the demo adapters at real SD1.5/SDXL shapes, three goldens written
by diffusers/peft/lycoris), plus ``HYPOTHESIS_CASES`` headers and byte edits drawn by hypothesis: 2,500 cases in all,
each through ``AdapterFile.open``, ``verify`` (tensors on), header-only ``verify`` with a base, and ``verify_header``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraregistry.verify import verify
from tests.adapters import write_adapter

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_verify", ROOT / "scripts" / "fuzz_verify.py")
fuzz_verify = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_verify"] = fuzz_verify  # dataclasses look their module up by name
_spec.loader.exec_module(fuzz_verify)

MUTATION_CHUNKS, CASES_PER_CHUNK = 4, 500
MUTATION_CASES = MUTATION_CHUNKS * CASES_PER_CHUNK
HYPOTHESIS_HEADERS, HYPOTHESIS_BYTES = 300, 200
HYPOTHESIS_CASES = HYPOTHESIS_HEADERS + HYPOTHESIS_BYTES
CASE_TIMEOUT = 15.0  # seconds: a case is ~5 ms; anything near this is a hang
SMALL_GOLDENS = ("sd1_diffusers_train_script", "sd1_lycoris_lokr", "sd1_peft_prefixed")


def test_suite_runs_at_least_two_thousand_cases():
    assert MUTATION_CASES + HYPOTHESIS_CASES >= 2000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    goldens = [s for s in fuzz_verify.golden_seeds() if s.name in SMALL_GOLDENS]
    assert {s.name for s in goldens} == set(SMALL_GOLDENS), "a seed golden is gone: pick another small one"
    return fuzz_verify.demo_seeds(tmp_path_factory.mktemp("demo")) + goldens


def _fail_on(tally) -> None:
    failures = [f"{kind} case {i} of {name} {muts}:\n{detail}" for kind, i, name, muts, detail in tally.failures]
    assert not failures, "\n\n".join(failures[:3])


@pytest.mark.parametrize("chunk", range(MUTATION_CHUNKS))
def test_mutated_adapters_give_reports(seeds, chunk, tmp_path):
    cases = range(chunk * CASES_PER_CHUNK, (chunk + 1) * CASES_PER_CHUNK)
    tally = fuzz_verify.fuzz(seeds, cases, seed=2024, scratch=tmp_path, out=tmp_path / "failures",
                             timeout=CASE_TIMEOUT)
    _fail_on(tally)
    assert tally.cases == CASES_PER_CHUNK
    assert tally.outcomes["findings"] > CASES_PER_CHUNK // 2  # the mutations do break things


# --- hypothesis: headers from scratch, and byte edits ------------------------------------------------

_NAMES = st.builds(lambda p, m, s: p + m + s, st.sampled_from(fuzz_verify.PREFIXES),
                   st.sampled_from(["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                                    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                                    "text_model_encoder_layers_0_self_attn_q_proj", "mid_block_attentions_0_proj_in",
                                    "encoder.layers.0.mlp.fc1", "x", ""]) | st.text(max_size=12),
                   st.sampled_from(fuzz_verify.SUFFIXES))
_SHAPES = st.lists(st.integers(0, 1100), max_size=4) | st.lists(st.integers(-2, 2**64), max_size=3)
_DTYPES = st.sampled_from(fuzz_verify.DTYPES) | st.text(max_size=4)
_METADATA = st.dictionaries(st.sampled_from(fuzz_verify.METADATA_KEYS) | st.text(max_size=8),
                            st.sampled_from(fuzz_verify.METADATA_VALUES[:-3]) | st.text(max_size=30), max_size=4)


@st.composite
def _headers(draw):
    """A header of tensor entries laid out back to back (sometimes with a bent offset) and its data bytes."""
    pairs, data, offset = [], b"", 0
    metadata = draw(_METADATA | st.none())
    if metadata is not None:
        pairs.append(("__metadata__", metadata))
    for _ in range(draw(st.integers(0, 6))):
        dtype, shape = draw(_DTYPES), draw(_SHAPES)
        size = fuzz_verify.ITEMSIZE.get(dtype, 2)
        numel = math.prod(shape) if all(0 <= s for s in shape) else 1
        nbytes = min(numel * size, 1 << 16) if numel * size < 1 << 16 else draw(st.integers(0, 64))
        end = offset + nbytes + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        pairs.append((draw(_NAMES), {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}))
        fill = draw(st.sampled_from([b"\x00", b"\x3c", b"\xff", b"\x7c", b"\x01"]))
        data += fill * max(end - offset, 0)
        offset = max(end, offset)
    return fuzz_verify.encode(pairs, data, pad=draw(st.booleans()))


_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@settings(max_examples=HYPOTHESIS_HEADERS, **_SETTINGS)
@given(raw=_headers())
def test_drawn_headers_give_reports(raw, tmp_path_factory):
    _check(raw, tmp_path_factory)


@settings(max_examples=HYPOTHESIS_BYTES, **_SETTINGS)
@given(at=st.floats(0, 1), cut=st.integers(0, 16), insert=st.binary(max_size=16), which=st.integers(0, 20))
def test_byte_edits_of_good_files_give_reports(at, cut, insert, which, tmp_path_factory):
    seed = _small_seeds()[which % len(_small_seeds())]
    raw = seed.raw
    (n,) = struct.unpack("<Q", raw[:8])
    pos = int(at * (8 + n))  # mostly inside the header, where parsing happens
    _check(raw[:pos] + insert + raw[pos + cut :], tmp_path_factory)


_CACHE: dict[str, list] = {}


def _small_seeds():
    if "seeds" not in _CACHE:
        _CACHE["seeds"] = [s for s in fuzz_verify.golden_seeds() if s.name in SMALL_GOLDENS]
    return _CACHE["seeds"]


def _check(raw: bytes, tmp_path_factory) -> None:
    folder = _CACHE.setdefault("folder", [tmp_path_factory.mktemp("hypothesis")])[0]
    outcome = fuzz_verify.run_case(raw, folder / "case.safetensors", CASE_TIMEOUT)
    if outcome.kind in ("crash", "hang"):
        (folder / "failing.safetensors").write_bytes(raw)
    assert outcome.kind in ("clean", "findings", "lorareg-error"), outcome.detail


# --- memory: what a header claims is never allocated ------------------------------------------------------


def _peak_bytes(path: Path, **kwargs) -> tuple[int, object]:
    tracemalloc.start()
    try:
        report = verify(path, **kwargs)
        return tracemalloc.get_traced_memory()[1], report
    finally:
        tracemalloc.stop()


def _raw_file(path: Path, entries: dict, data_size: int, written: bytes = b"", sparse_size: int | None = None):
    header = json.dumps(entries).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + written)
        if sparse_size is not None:
            f.truncate(8 + len(header) + sparse_size)  # a hole: no disk, no memory, reads as zeros
    return path


UP, DOWN = "lora_unet_mid_block_attentions_0_proj_out.lora_up.weight", "lora_unet_mid_block_attentions_0_proj_out.lora_down.weight"


def test_claimed_huge_shape_in_a_small_file_allocates_nothing(tmp_path):
    big = 65536 * 65536 * 4  # 16 GiB of F32 claimed, 16 bytes present
    path = _raw_file(tmp_path / "claims.safetensors", {UP: {"dtype": "F32", "shape": [65536, 65536],
                                                          "data_offsets": [0, big]}}, big, b"\x00" * 16)
    peak, report = _peak_bytes(path)
    assert report.codes() == ["LRG002"] and peak < 4 << 20


def test_huge_sparse_tensor_is_streamed_in_bounded_memory(tmp_path):
    size = 1280 * 65536 * 2  # a 160 MiB F16 'up' factor of rank 65536 (no Gram: above MAX_GRAM_SIDE)
    entries = {DOWN: {"dtype": "F16", "shape": [65536, 1280], "data_offsets": [0, size]},
               UP: {"dtype": "F16", "shape": [1280, 65536], "data_offsets": [size, 2 * size]}}
    path = _raw_file(tmp_path / "sparse.safetensors", entries, 2 * size, sparse_size=2 * size)
    peak, report = _peak_bytes(path)
    assert "LRG402" in report.codes()  # all zeros: untrained
    assert peak < 48 << 20, f"{peak / 2**20:.0f} MiB traced for a 320 MiB file"


def test_largest_gram_and_dense_loha_stay_bounded(tmp_path):
    rng = np.random.default_rng(0)
    side = 2048  # MAX_GRAM_SIDE: Grams of 2048^2 float64 (32 MiB each), forced by factors over the bound
    lora = {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": rng.normal(0, 4, (side, 8)).astype(np.float16),
            "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": rng.normal(0, 4, (8, side)).astype(np.float16)}
    peak, _ = _peak_bytes(write_adapter(tmp_path / "gram.safetensors", lora))
    assert peak < 160 << 20, f"{peak / 2**20:.0f} MiB"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"  # LoHa rank 40 x 40 > MAX_GRAM_SIDE / 2: dense row blocks
    loha = {f"{name}.hada_w{i}_{ab}": rng.normal(0, 2, shape).astype(np.float16)
            for i in (1, 2) for ab, shape in (("a", (2560, 40)), ("b", (40, 2560)))}
    peak, report = _peak_bytes(write_adapter(tmp_path / "loha.safetensors", loha))
    assert peak < 200 << 20, f"{peak / 2**20:.0f} MiB"


def test_large_metadata_costs_a_small_multiple_of_the_header(tmp_path):
    value = "x" * (8 << 20)
    path = write_adapter(tmp_path / "meta.safetensors", {UP: np.ones((1280, 2), np.float16),
                                                         DOWN: np.ones((2, 1280), np.float16)}, {"notes": value})
    peak, report = _peak_bytes(path)
    assert "LRG507" in report.codes()
    assert peak < 10 * len(value), f"{peak / 2**20:.0f} MiB for an 8 MiB header"


# --- targeted: what the 100,000-case run found ----------------------------------------------------------

_DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("key", ["lorareg", "lora_adapter_metadata", "ss_network_args", "ss_tag_frequency",
                                 "ss_dataset_dirs", "modelspec.title"])  # lora_adapter_metadata: case 16083, seed 0
def test_deeply_nested_json_in_metadata_gives_a_report(tmp_path, key):
    path = write_adapter(tmp_path / "deep.safetensors", {UP: np.ones((1280, 2), np.float16),
                                                         DOWN: np.ones((2, 1280), np.float16)}, {key: _DEEP})
    assert verify(path).codes()  # a report (the value's finding, missing trigger words...), not a traceback
