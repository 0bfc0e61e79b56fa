"""An exact merge's output file holds exactly the bytes a plain sequential writer gives (issue 14, target 4).

However the merge is made fast (factors stacked in place, bytes streamed from the inputs' memory maps, hashes
taken on threads while the file is written, the header reserved and filled in), its output must stay the file
this test builds the slow, obvious way:

* the tensors: each module's parents stacked with numpy from the inputs as read back (``load_canonical``),
  ``up`` scaled in float32 by ``weight * alpha / rank`` unless every parent shares one positive scale and the
  output dtype (then stored as is, alpha carrying the scale), ``down`` rows as stored;
* the file: ``write_safetensors`` of the output's own tensors and metadata (safetensors' layout and padding),
  which must reproduce the output byte for byte;
* the hashes: the record's ``tensor_sha256`` and the reported sha256 against hashlib over the file, the parents'
  against hashlib over the inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.cli import main
from loraregistry.ops.common import by_module
from loraregistry.ops.io import load_canonical
from loraregistry.safetensors_io import read_header, write_safetensors
from tests.adapters import independent_hashes, lora_tensors, write_adapter

_DTYPES = {"fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32)}


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> dict[str, Path]:
    """SD1 kohya parents: fp16 rank 8 (every target), bf16 rank 4 alpha 3 (every target), fp32 rank 6 without
    alpha (a subset: modules only some parents patch), and the first one as peft."""
    folder = tmp_path_factory.mktemp("parents")
    bf16 = {k: v.astype(np.float32).astype(ml_dtypes.bfloat16) if v.ndim else v
            for k, v in lora_tensors("sd1", rank=4, seed=2, small=False, alpha=3.0).items()}
    files = {
        "a16": write_adapter(folder / "a16.safetensors", lora_tensors("sd1", rank=8, seed=1, small=False)),
        "bbf": write_adapter(folder / "bbf.safetensors", bf16),
        "c32": write_adapter(folder / "c32.safetensors",
                             lora_tensors("sd1", rank=6, seed=3, dtype=np.float32, alpha=None)),
    }
    files["apeft"] = folder / "apeft.safetensors"
    assert _cli(["convert", str(files["a16"]), "--to", "peft", "-o", str(files["apeft"])]) == 0
    return files


def _cli(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(args)


# name -> ([(parent, weight)], extra options, output dtype)
CASES = {
    "exact, one common scale": ([("a16", 1.0), ("a16", 1.0)], [], "fp16"),
    "exact, two scales": ([("a16", 1.0), ("bbf", 1.0)], [], "fp16"),
    "weighted": ([("a16", 0.8), ("a16", 0.5)], [], "fp16"),
    "negative weight, fp32 output": ([("a16", 0.8), ("bbf", -0.5)], ["--dtype", "fp32"], "fp32"),
    "mixed rank and dtype": ([("a16", 1.0), ("bbf", 1.0), ("c32", 1.0)], [], "fp16"),
    "mixed, weighted, bf16 output": ([("a16", 1.5), ("bbf", 0.25), ("c32", -1.0)], ["--dtype", "bf16"], "bf16"),
    "a zero weight": ([("a16", 0.0), ("c32", 2.0)], [], "fp16"),
    "peft and kohya parents": ([("apeft", 1.0), ("bbf", 1.0)], [], "fp16"),
    "peft output": ([("a16", 0.5), ("bbf", 0.5)], ["--to", "peft"], "fp16"),
    "kohya output of peft parents": ([("apeft", 0.5), ("a16", 0.5)], ["--to", "kohya"], "fp16"),
}


def _expected(inputs: list[tuple[Path, float]], dtype: np.dtype) -> dict:
    """{module: {role: array}} of the exact merge, the obvious way (see the module docstring)."""
    modules: dict = {}
    for path, weight in inputs:
        if weight == 0:
            continue
        for module, roles in by_module(load_canonical(AdapterFile.open(path))).items():
            rank = roles["down"].shape[0]
            scale = (float(roles["alpha"]) or rank) / rank
            modules.setdefault(module, []).append((roles["up"], roles["down"], weight * scale))
    merged = {}
    for module, pieces in modules.items():
        first = pieces[0][2]
        as_stored = first > 0 and all(c == first and up.dtype == dtype for up, _, c in pieces)
        if as_stored:
            up, alpha_scale = np.concatenate([up for up, _, _ in pieces], axis=1), first
        else:
            up = np.concatenate([up.astype(np.float32) * np.float32(c) for up, _, c in pieces], axis=1)
            up, alpha_scale = up.astype(dtype), 1.0
        down = np.concatenate([d.astype(np.float32) for _, d, _ in pieces], axis=0).astype(dtype)
        merged[module] = {"up": up, "down": down, "alpha": alpha_scale * up.shape[1]}
    return merged


@pytest.mark.parametrize("case", CASES)
def test_merge_output_is_the_plain_sequential_file(case, parents, tmp_path):
    chosen, options, dtype = CASES[case]
    inputs = [(parents[name], weight) for name, weight in chosen]
    out = tmp_path / "merged.safetensors"
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        code = main(["merge", *(f"{p}:{w}" for p, w in inputs), "-o", str(out), "--json", *options])
    assert code == 0
    reported = json.loads(summary.getvalue())

    # the tensors: every module's stacked factors, bit for bit
    written = by_module(load_canonical(AdapterFile.open(out)))
    expected = _expected(inputs, _DTYPES[dtype])
    assert sorted(written) == sorted(expected)
    for module, roles in expected.items():
        for role in ("up", "down"):
            got = written[module][role]
            want = roles[role].reshape(got.shape)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (module, role)
        assert float(written[module]["alpha"]) == pytest.approx(roles["alpha"], rel=1e-6)

    # the file: safetensors' own layout of those tensors and that header, nothing else
    header = read_header(out)
    with open(out, "rb") as f:
        mapped = np.frombuffer(f.read(), dtype=np.uint8)
    arrays = {name: mapped[header.data_offset + info.start:header.data_offset + info.end]
              for name, info in header.tensors.items()}
    plain = tmp_path / "plain.safetensors"
    write_safetensors(plain, {name: arrays[name].view(_stored_dtype(info.dtype)).reshape(info.shape)
                              for name, info in header.tensors.items()}, metadata=header.metadata)
    assert plain.read_bytes() == out.read_bytes()

    # the hashes: the output's own, its parents'
    whole, data = independent_hashes(out)
    record = json.loads(header.metadata["lorareg"])
    assert (reported["sha256"], record["tensor_sha256"]) == (whole, data)
    assert [(p["sha256"], p["tensor_sha256"]) for p in record["provenance"]["parents"]] == \
        [independent_hashes(p) for p, _ in inputs]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["merged.safetensors", "plain.safetensors"]  # no temp left
    assert hashlib.sha256(out.read_bytes()).hexdigest() == whole


def _stored_dtype(name: str) -> np.dtype:
    return {"F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype(np.float32)}[name]
