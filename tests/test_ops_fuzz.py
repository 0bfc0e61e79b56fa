"""Fuzzing the operations: mutated valid adapters through ``lorareg convert --to peft / --to kohya``, ``resize
--rank 2``, ``merge`` and ``fix`` (the CLI's ``main()`` in-process) end in exit 0, 1 or 2, never a traceback or
an exit 70, an exit-2 line names the file, a failed run writes nothing, and memory stays bounded.

The mutation engine is ``scripts/fuzz_ops.py`` (run it for 100,000 cases outside CI); here it runs
``CHUNKS * CASES_PER_CHUNK`` seeded cases, each a few kB, plus targeted cases for what the first runs found.
"""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from loraregistry.cli import main
from loraregistry.safetensors_io import write_safetensors

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_ops", ROOT / "scripts" / "fuzz_ops.py")
fuzz_ops = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_ops"] = fuzz_ops  # dataclasses look their module up by name
_spec.loader.exec_module(fuzz_ops)

CHUNKS, CASES_PER_CHUNK = 6, 500
CASE_TIMEOUT = 20.0  # seconds; a case takes ~10 ms of CPU
MEMORY_CASES = range(0, 600, 7)  # the subset measured with tracemalloc
MEMORY_FLOOR = 16 << 20  # bytes any case may use (imports' caches, verify's tables), whatever the input
MEMORY_FACTOR = 128  # and this many times the bytes of its input files


def test_suite_runs_at_least_three_thousand_cases():
    assert CHUNKS * CASES_PER_CHUNK >= 3000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz_ops.seeds(tmp_path_factory.mktemp("seeds"))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_mutated_adapters_end_in_exit_0_1_or_2(seeds, chunk, tmp_path):
    cases = range(chunk * CASES_PER_CHUNK, (chunk + 1) * CASES_PER_CHUNK)
    tally = fuzz_ops.fuzz(seeds, cases, seed=2026, scratch=tmp_path, out=tmp_path / "failures", timeout=CASE_TIMEOUT)
    failures = [f"{cause} ({count}x)\n{tally.examples[cause][:3000]}" for cause, count in tally.causes.most_common()]
    assert not failures, "\n\n".join(failures[:3])
    assert tally.cases == CASES_PER_CHUNK and not tally.outcomes["mutator-bug"]
    # the mutations reach every outcome: some still convert, some are refused, some fail verify afterwards
    assert tally.outcomes["ok"] > CASES_PER_CHUNK // 10
    assert tally.outcomes["refused"] > CASES_PER_CHUNK // 4
    assert {op for op, _ in (k.rsplit(" ", 1) for k in tally.by_operation)} == set(fuzz_ops.OPERATIONS)


def test_memory_is_bounded_by_the_input(seeds, tmp_path):
    case, partner = tmp_path / "case.safetensors", tmp_path / "partner.safetensors"
    fuzz_ops.write_case(partner, seeds[0].tensors, seeds[0].metadata)
    fuzz_ops.run_case("convert-peft", partner, partner)  # warm: imports and caches are not the input's cost
    worst = []
    for index in MEMORY_CASES:
        base, operation, tensors, metadata, applied = fuzz_ops.build_case(index, 2026, seeds)
        fuzz_ops.write_case(case, tensors, metadata)
        size = case.stat().st_size + partner.stat().st_size
        tracemalloc.start()
        try:
            outcome = fuzz_ops.run_case(operation, case, partner, CASE_TIMEOUT)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert outcome.kind in ("ok", "check-failed", "refused"), outcome.detail
        worst.append((peak - MEMORY_FACTOR * size, peak, size, index, base.name, operation, applied))
    over, peak, size, *what = max(worst)
    assert over < MEMORY_FLOOR, f"{peak / 2**20:.0f} MiB for {size / 1024:.0f} kB of input: {what}"


# --- what the first runs found, one case each ---------------------------------------------------------------

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _run(tmp_path, tensors, *command, metadata=None):
    src = tmp_path / "in.safetensors"
    write_safetensors(src, tensors, metadata)
    out = tmp_path / "out.safetensors"
    argv = [command[0], str(src), "-o", str(out), *command[1:]]
    return main(argv), src, out


def _lora(rank=2, **extra):
    rng = np.random.default_rng(0)
    return {f"{Q}.lora_down.weight": rng.normal(0, 0.05, (rank, 320)).astype(np.float16),
            f"{Q}.lora_up.weight": rng.normal(0, 0.01, (320, rank)).astype(np.float16), **extra}


BROKEN = [  # (what, tensors, phrase of the one-line error)
    ("alpha stored as [1]", _lora(**{f"{Q}.alpha": np.ones(2, np.float16)}), "alpha is float16 (2,)"),
    ("alpha negative", _lora(**{f"{Q}.alpha": np.asarray(-4, np.float16)}), "alpha is -4.0"),
    ("alpha bool", _lora(**{f"{Q}.alpha": np.asarray(True)}), "alpha is bool"),
    ("rank 0", _lora(rank=0), "down is empty"),
    ("up without down", {f"{Q}.lora_up.weight": np.ones((320, 2), np.float16)}, "has no down"),
    ("ranks disagree", {**_lora(), f"{Q}.lora_down.weight": np.ones((3, 320), np.float16)}, "rank of up and down"),
    ("1-D factor", {**_lora(), f"{Q}.lora_down.weight": np.ones(640, np.float16)}, "down is 1-D"),
    ("integer factor", {**_lora(), f"{Q}.lora_down.weight": np.ones((2, 320), np.int8)}, "down is int8"),
    ("NaN factor", {**_lora(), f"{Q}.lora_up.weight": np.full((320, 2), np.nan, np.float16)}, "NaN"),
    ("LoHa half missing", {f"{Q}.hada_w1_a": np.ones((320, 2), np.float16),
                           f"{Q}.hada_w1_b": np.ones((2, 320), np.float16)}, "has no hada_w2_a, hada_w2_b"),
    ("LoKr 1-D w2_b", {f"{Q}.lokr_w1": np.ones((4, 4), np.float16), f"{Q}.lokr_w2_a": np.ones((80, 2), np.float16),
                       f"{Q}.lokr_w2_b": np.ones(160, np.float16)}, "lokr_w2_b is 1-D"),
    ("LoRA with a LoHa role", {**_lora(), f"{Q}.hada_t1": np.ones((2, 2, 3, 3), np.float16)}, "mixes lora factors"),
    ("Tucker mid on a 3x3 down", {f"{Q}.lora_down.weight": np.ones((2, 320, 3, 3), np.float16),
                                  f"{Q}.lora_up.weight": np.ones((320, 2, 1, 1), np.float16),
                                  f"{Q}.lora_mid.weight": np.ones((2, 2, 3, 3), np.float16)}, "a Tucker down is 1x1"),
    ("DoRA scale of 7", {**_lora(), f"{Q}.dora_scale": np.ones((7, 1), np.float16)}, "dora_scale has 7 values"),
    ("huge LoKr claim", {f"{Q}.lokr_w1": np.ones((1, 1), np.float16),
                         f"{Q}.lokr_w2_a": np.ones((100_000, 1), np.float16),
                         f"{Q}.lokr_w2_b": np.ones((1, 100_000), np.float16)}, "larger than any base model"),
]


@pytest.mark.parametrize("command", [["convert", "--to", "peft"], ["convert", "--to", "kohya"],
                                     ["resize", "--rank", "1"], ["fix"]], ids=lambda c: " ".join(c))
@pytest.mark.parametrize("what, tensors, phrase", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_modules_are_one_line_naming_file_and_module(tmp_path, capsys, command, what, tensors, phrase):
    code, src, out = _run(tmp_path, tensors, *command)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and str(src) in err and "attn1.to_q" in err and phrase in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]


def test_peft_config_alpha_too_large_for_the_file_is_refused(tmp_path, capsys):
    metadata = {"lora_adapter_metadata": '{"r": 2, "lora_alpha": 1e308, "target_modules": ["to_q"]}'}
    rng = np.random.default_rng(0)
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors = {f"{module}.lora_A.weight": rng.normal(0, 0.05, (2, 320)).astype(np.float16),
               f"{module}.lora_B.weight": rng.normal(0, 0.01, (320, 2)).astype(np.float16)}
    code, src, _ = _run(tmp_path, tensors, "convert", "--to", "kohya", metadata=metadata)
    err = capsys.readouterr().err
    assert code == 2 and "too large to store" in err and str(src) in err, err


def test_alpha_zero_is_alpha_equals_rank_in_the_record(tmp_path, capsys):
    code, _, out = _run(tmp_path, _lora(**{f"{Q}.alpha": np.asarray(0, np.float16)}), "convert", "--to", "kohya",
                        "--force")
    assert code == 0, capsys.readouterr().err
    from loraregistry.adapter import AdapterFile

    assert AdapterFile.open(out).metadata.network.alpha is None


def test_lokr_with_a_rank_wider_than_its_factor_stays_small(tmp_path, capsys):
    """A LoKr whose w2 is factored at rank 900 over an 80 x 80 matrix: each half shrinks before the Kronecker
    product (it took 512 MiB for a 296 kB file before)."""
    rng = np.random.default_rng(0)
    tensors = {f"{Q}.lokr_w1": rng.normal(0, 0.05, (4, 4)).astype(np.float16),
               f"{Q}.lokr_w2_a": rng.normal(0, 0.05, (80, 900)).astype(np.float16),
               f"{Q}.lokr_w2_b": rng.normal(0, 0.05, (900, 80)).astype(np.float16)}
    tracemalloc.start()
    try:
        code, src, _ = _run(tmp_path, tensors, "convert", "--to", "peft", "--force")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB"
