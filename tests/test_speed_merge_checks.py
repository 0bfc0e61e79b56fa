"""Reading an op's input checks every factor's values in one chunked pass over a 16-bit file's data
(``io._sixteen_bit_finite``) instead of one masked copy per tensor; the outcome must be the per-tensor check's:
the same error (module, role, message) or none, wherever the bad value sits (chunk edges, the last byte, an alpha,
a tensor no format claims, a wider float).

Each case edits the 16-bit value at one place of a real SD1 adapter's data section, then reads it twice: as ops do,
and with the one-pass check switched off (the per-tensor reference).
"""

from __future__ import annotations

import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from loraregistry.adapter import AdapterFile
from loraregistry.errors import LoraregError
from loraregistry.ops import io as ops_io
from loraregistry.ops import validate
from loraregistry.safetensors_io import read_header
from tests.adapters import lora_tensors, write_adapter

_NAN16, _INF16, _NEG_INF16, _NEG_NAN16 = 0x7E00, 0x7C00, 0xFC00, 0xFE01
_BF16_NAN = 0x7FC0


def _fp16(folder: Path) -> Path:
    return write_adapter(folder / "fp16.safetensors", lora_tensors("sd1", rank=8, small=False, seed=1))


def _bf16(folder: Path) -> Path:
    tensors = {k: v.astype(np.float32).astype(ml_dtypes.bfloat16)
               for k, v in lora_tensors("sd1", rank=8, small=False, seed=2).items()}
    return write_adapter(folder / "bf16.safetensors", tensors)


def _fp32(folder: Path) -> Path:
    return write_adapter(folder / "fp32.safetensors", lora_tensors("sd1", rank=4, seed=3, dtype=np.float32))


def _with_stray(folder: Path) -> Path:
    tensors = lora_tensors("sd1", rank=4, seed=4)
    tensors["some_other_tool.scale"] = np.ones(64, np.float16)  # a tensor no format claims
    return write_adapter(folder / "stray.safetensors", tensors)


def _element(path: Path, where: str) -> int:
    """The 16-bit element index (in the data section) that ``where`` names."""
    header = read_header(path)
    size = header.data_size // 2
    if where == "first":
        return 0
    if where == "last":
        return size - 1
    if where.startswith("chunk+"):  # an element at or beside the end of the scan's first chunk
        assert size > 2 * ops_io._SCAN_ELEMENTS  # the file spans several chunks
        return ops_io._SCAN_ELEMENTS + int(where[len("chunk+"):])
    role_end = where.split(":")
    name = next(n for n in header.tensors if n.endswith(role_end[0]))
    info = header.tensors[name]
    return info.start // 2 if role_end[1] == "start" else info.end // 2 - 1


def _poke(path: Path, element: int, bits: int) -> None:
    offset = read_header(path).data_offset + 2 * element
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<H", bits))


def _outcome(path: Path) -> str:
    try:
        ops_io.load_canonical(AdapterFile.open(path), copy=False)
    except LoraregError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "read"


# name -> (file maker, where, the 16-bit pattern written there (None: file as made), whether the one pass answers)
CASES = {
    "clean fp16": (_fp16, None, None, True),
    "clean bf16": (_bf16, None, None, True),
    "NaN at the first value": (_fp16, "first", _NAN16, False),
    "inf at the very last value": (_fp16, "last", _INF16, False),
    "-inf at a chunk's last value": (_fp16, "chunk+-1", _NEG_INF16, False),
    "-NaN at the next chunk's first value": (_fp16, "chunk+0", _NEG_NAN16, False),
    "NaN at the end of an up": (_fp16, "to_v.lora_up.weight:end", _NAN16, False),
    "NaN at the start of a down": (_fp16, "to_out_0.lora_down.weight:start", _NAN16, False),
    "NaN in an fp16 alpha": (_fp16, ".alpha:start", _NAN16, False),
    "bf16 NaN in a down": (_bf16, "proj_in.lora_down.weight:end", _BF16_NAN, False),
    "fp32 factors (the per-tensor check)": (_fp32, None, None, False),
    "NaN in a tensor no format claims": (_with_stray, "some_other_tool.scale:start", _NAN16, False),
}


@pytest.mark.parametrize("case", CASES)
def test_one_pass_value_check_gives_the_per_tensor_outcome(case, tmp_path, monkeypatch):
    make, where, bits, answers = CASES[case]
    path = make(tmp_path)
    if where is not None:
        _poke(path, _element(path, where), bits)
    adapter = AdapterFile.open(path)
    data = ops_io._mapped_data(adapter)
    factors = [adapter.header.tensors[n] for n, k in adapter.mapping.mapped.items() if k.role != "alpha"]
    assert ops_io._sixteen_bit_finite(data, adapter.header, factors) is answers
    if answers:  # the one pass vouched for every factor: no per-tensor value check runs
        monkeypatch.setattr(validate, "_finite", lambda a: pytest.fail("per-tensor value check after the pass"))
    fast = _outcome(path)
    monkeypatch.undo()
    monkeypatch.setattr(ops_io, "_sixteen_bit_finite", lambda *args: False)
    assert fast == _outcome(path)
    if bits is not None and case != "NaN in a tensor no format claims":
        assert fast.startswith("MalformedModule") and ("NaN" in fast or "alpha" in fast)
