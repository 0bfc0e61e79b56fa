"""Operations write their output once and hash it once (``ops.outfile``, ``io.write_op_output``).

Counted, not timed: every sha256 the process feeds (hashlib patched), every file created beside the output
(os.open with O_CREAT), and the hash verify asks for (``hashes.tensor_sha256``). The hashes an output
reports and records are checked against hashlib over the file's own bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from loraregistry import hashes
from loraregistry.adapter import AdapterFile
from loraregistry.canonical import CanonicalKey
from loraregistry.ops import io as ops_io
from loraregistry.ops.convert import convert
from loraregistry.ops.merge import MergeInput, merge
from loraregistry.ops.outfile import Layout, OutputFile
from loraregistry.ops.resize import ResizeSettings, resize
from loraregistry.safetensors_io import read_header, write_safetensors
from tests.adapters import independent_hashes, lora_tensors, sd1_adapter


class _Counter:
    """hashlib.sha256 that counts the bytes fed to every hash object it makes."""

    def __init__(self, real):
        self.real, self.fed = real, 0

    def __call__(self, data=b"", **kwargs):
        counter = self

        class Hash:
            def __init__(self):
                self.inner = counter.real(**kwargs)
                self.update(data)

            def update(self, chunk):
                counter.fed += memoryview(chunk).nbytes
                self.inner.update(chunk)

            def hexdigest(self):
                return self.inner.hexdigest()

        return Hash()


def _run(op: str, folder: Path) -> tuple[Path, object, list[Path]]:
    a = sd1_adapter(folder, "a.safetensors", rank=8, seed=1)
    b = sd1_adapter(folder, "b.safetensors", rank=4, seed=2)
    out = folder / "out" / "o.safetensors"
    out.parent.mkdir()
    if op == "resize":
        return out, resize(a, out, ResizeSettings(rank=2), show_progress=False), [a]
    if op == "merge":
        return out, merge([MergeInput(a, 0.7), MergeInput(b, -0.4)], out, show_progress=False), [a, b]
    return out, convert(a, out, to="peft", show_progress=False), [a]


OPS = ["resize", "merge", "convert"]


@pytest.mark.parametrize("op", OPS)
def test_reported_and_recorded_hashes_are_the_files_own(op, tmp_path):
    out, result, _ = _run(op, tmp_path)
    whole, data = independent_hashes(out)
    assert (result.output.sha256, result.output.tensor_sha256) == (whole, data)
    record = json.loads(read_header(out).metadata["lorareg"])
    assert record["tensor_sha256"] == data
    assert result.output.report.ok and result.output.report.tensors_checked


@pytest.mark.parametrize("op", OPS)
def test_each_byte_is_hashed_once_per_hash_and_the_output_created_once(op, tmp_path, monkeypatch):
    counter = _Counter(hashlib.sha256)
    monkeypatch.setattr(hashlib, "sha256", counter)
    created: list[str] = []
    real_open = os.open

    def spy_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == tmp_path / "out":
            created.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    asked: list[str] = []
    real_tensor_sha256 = hashes.tensor_sha256

    def spy_tensor_sha256(path, data_offset):
        asked.append(os.fspath(path))
        return real_tensor_sha256(path, data_offset)

    monkeypatch.setattr(hashes, "tensor_sha256", spy_tensor_sha256)
    import loraregistry.verify.checks.tensors as tensor_checks  # it may import the function at load time

    if hasattr(tensor_checks, "tensor_sha256"):
        monkeypatch.setattr(tensor_checks, "tensor_sha256", spy_tensor_sha256)
    out, result, inputs = _run(op, tmp_path)
    size, data = out.stat().st_size, out.stat().st_size - read_header(out).data_offset
    parents = sum(p.stat().st_size + (p.stat().st_size - read_header(p).data_offset) for p in inputs)
    # parents: sha256 + AutoV3 each; output: AutoV3 from memory, then the whole file as written. Nothing more.
    assert counter.fed == parents + data + size
    assert len(created) == 1 and not Path(created[0]).name.endswith(".safetensors")  # one temp file, renamed
    assert len(asked) == 1  # verify checked the recorded hash ...
    assert result.output.report.ok  # ... and found it right, without hashing the data again (counted above)


def test_a_known_hash_is_forgotten_when_the_file_changes(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": np.arange(6, dtype=np.float32)})
    offset = read_header(path).data_offset
    true = hashes.tensor_sha256(path, offset)
    with hashes.known_tensor_sha256(path, offset, "0" * 64):
        assert hashes.tensor_sha256(path, offset) == "0" * 64
        assert hashes.tensor_sha256(path, 0) == hashlib.sha256(path.read_bytes()).hexdigest()  # another offset
        with path.open("r+b") as f:  # same size, new bytes: the mtime moves
            f.seek(offset)
            f.write(b"\x01\x02\x03\x04")
        os.utime(path, ns=(1, 1))
        assert hashes.tensor_sha256(path, offset) != "0" * 64
    assert hashes.tensor_sha256(path, offset) != true  # the real bytes, read
    assert hashes.tensor_sha256(path, offset) == hashlib.sha256(path.read_bytes()[offset:]).hexdigest()


def test_the_layout_writes_what_write_safetensors_writes(tmp_path):
    import ml_dtypes

    named = {"b.weight": np.arange(12, dtype=np.float16).reshape(3, 4), "a.alpha": np.array(2.0, np.float32),
             "c": np.ones((2, 2), dtype=np.float64), "d": np.zeros((2,), dtype=ml_dtypes.bfloat16),
             "empty": np.zeros((0, 3), np.float32)}
    reference = tmp_path / "ref.safetensors"
    write_safetensors(reference, named, {"k": "v"})
    layout = Layout.of(named)
    encoded, parsed = layout.header({"k": "v"}, path=tmp_path / "new.safetensors")
    output = OutputFile(layout)
    try:
        output.write_data(tmp_path / "new.safetensors", len(encoded))  # the data first, behind the header's room
        data_sha256 = output.data_sha256()
        output.finish(encoded)
        sha256 = output.sha256()
    finally:
        output.close()
    assert (tmp_path / "new.safetensors").read_bytes() == reference.read_bytes()
    assert sha256 == hashlib.sha256(reference.read_bytes()).hexdigest()
    assert data_sha256 == hashes.tensor_sha256(reference, parsed.data_offset)
    again = OutputFile(layout)
    try:
        with pytest.raises(FileExistsError):  # a new file only: never writes over one
            again.write_data(tmp_path / "new.safetensors", len(encoded))
    finally:
        again.close()


def test_the_record_describes_the_weights_as_reading_the_file_does(tmp_path):
    """The network facts come from an in-memory view of the file before it exists; reading the written file
    gives the same (ranks, alphas from the alpha tensors, peft config alphas)."""
    tensors = {CanonicalKey("unet", "down_blocks.0.attentions.0.proj_in", role): value for role, value in
               {"down": np.ones((4, 8), np.float16), "up": np.ones((6, 4), np.float16),
                "alpha": np.array(3.0, np.float32)}.items()}
    tensors |= {CanonicalKey("unet", "mid_block.attentions.0.proj_out", role): value for role, value in
                {"down": np.ones((2, 8), np.float16), "up": np.ones((6, 2), np.float16),
                 "alpha": np.array(2.0, np.float16)}.items()}
    record = ops_io.op_metadata(None, operation="convert", params={}, parents=[])
    for fmt in ("kohya", "peft"):
        out = tmp_path / f"{fmt}.safetensors"
        ops_io.write_op_output(out, tensors, format=fmt, metadata=record, force=True)
        written = AdapterFile.open(out)
        stored = json.loads(written.header.metadata["lorareg"])["network"]
        expected = json.loads(ops_io._network_info(written).model_dump_json())
        assert {k: v for k, v in stored.items() if v not in (None, [], {})} == \
            {k: v for k, v in expected.items() if v not in (None, [], {})}
        assert stored["rank"] == 4 and stored["alpha"] == 3.0 and stored["alpha_pattern"]


# --- exact merge: bytes that need no arithmetic are written as stored ------------------------------------------------


def _modules(path: Path):
    from loraregistry.ops.common import by_module

    return by_module(ops_io.load_canonical(AdapterFile.open(path)))


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.8, -0.5)])
def test_exact_merge_streams_the_parents_bytes(weights, tmp_path, monkeypatch):
    from loraregistry.ops import merge as merge_module
    from loraregistry.ops.delta import module_delta

    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    write_safetensors(a, lora_tensors("sd1", rank=4, alpha=2.0, seed=1))  # scale 0.5
    write_safetensors(b, lora_tensors("sd1", rank=2, alpha=1.0, seed=2))  # scale 0.5
    common = weights == (1.0, 1.0)
    if common:  # one scale for both: no value may be converted, let alone scaled
        monkeypatch.setattr(merge_module, "to_float32", lambda *_: pytest.fail("arithmetic on an unweighted merge"))
    out = tmp_path / "m.safetensors"
    merge([MergeInput(a, weights[0]), MergeInput(b, weights[1])], out, show_progress=False)
    parents, merged = (_modules(a), _modules(b)), _modules(out)
    for module, roles in merged.items():
        first, second = parents[0][module], parents[1][module]
        assert roles["down"].tobytes() == np.concatenate([first["down"], second["down"]]).tobytes()
        if common:
            assert roles["up"].tobytes() == np.concatenate([first["up"], second["up"]], axis=1).tobytes()
            assert float(roles["alpha"]) == 0.5 * 6  # alpha carries the common scale
        want = weights[0] * module_delta(first) + weights[1] * module_delta(second)
        assert np.linalg.norm(module_delta(roles) - want) <= 1e-3 * np.linalg.norm(want)


def test_streamed_down_factors_are_views_of_the_inputs(tmp_path):
    from loraregistry.ops.merge import merge_modules
    from loraregistry.ops.outfile import RowStack

    a = tmp_path / "a.safetensors"
    write_safetensors(a, lora_tensors("sd1", rank=4, alpha=2.0, seed=1))
    parent = ops_io.load_canonical(AdapterFile.open(a), copy=False)
    merged, _ = merge_modules([(parent, 0.7), (parent, 0.2)], stream=True)
    downs = [v for k, v in merged.items() if k.role == "down"]
    assert downs and all(isinstance(d, RowStack) for d in downs)
    for down in downs:  # no copy: the parts are the memory map's bytes
        assert all(not part.flags.owndata and not part.flags.writeable for part in down.parts)
