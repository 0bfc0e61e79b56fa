from __future__ import annotations

import os
import stat
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from loraregistry import errors
from loraregistry.safetensors_io import (
    load_tensors,
    parse_header,
    read_header,
    rewrite_metadata,
    write_safetensors,
)

from .known_bad import GOOD_MODULE, KNOWN_BAD, good_file


@pytest.mark.parametrize("bad", KNOWN_BAD, ids=lambda b: b.name)
def test_known_bad_container_gets_its_own_error(tmp_path, bad):
    path = tmp_path / f"{bad.name}.safetensors"
    path.write_bytes(bad.content)
    with pytest.raises(bad.error) as info:
        read_header(path)
    message = str(info.value)
    assert bad.phrase in message
    assert str(path) in message  # every message says where
    assert "\n" not in message


def test_known_bad_names_are_unique():
    assert len({b.name for b in KNOWN_BAD}) == len(KNOWN_BAD) >= 20


def test_good_file_parses(tmp_path):
    path = tmp_path / "good.safetensors"
    path.write_bytes(good_file())
    header = read_header(path)
    assert header.metadata == {"ss_network_dim": "2"}
    assert list(header.tensors) == [f"{GOOD_MODULE}.lora_down.weight", f"{GOOD_MODULE}.lora_up.weight"]
    assert header.tensors[f"{GOOD_MODULE}.lora_up.weight"].shape == (2, 2)
    arrays = load_tensors(path)
    assert arrays[f"{GOOD_MODULE}.lora_up.weight"].tolist() == [[4.0, 5.0], [6.0, 7.0]]


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(errors.FileAccessError, match="no such file"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(errors.FileAccessError, match="is a folder"):
        read_header(tmp_path)


def test_header_length_starting_with_0x80_is_not_taken_for_pickle(tmp_path):
    # A header of exactly 0x80 bytes: the first byte of the file is 0x80 like a pickle's.
    base = b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    raw = base + b" " * (0x80 - len(base))
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x07")
    assert read_header(path).tensors["t"].shape == (1,)


def _sample_tensors():
    rng = np.random.default_rng(0)
    return {
        "b.lora_up.weight": rng.standard_normal((8, 4)).astype(np.float16),
        "a.lora_down.weight": rng.standard_normal((4, 8)).astype(np.float32),
        "a.alpha": np.array(2.0, dtype=np.float32),
        "c.bf16": rng.standard_normal((3, 3)).astype(ml_dtypes.bfloat16),
        "d.fp8": rng.standard_normal((4,)).astype(ml_dtypes.float8_e4m3fn),
        "e.empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_writer_output_is_read_back_by_the_safetensors_library(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = _sample_tensors()
    write_safetensors(path, tensors, {"k": "v"})
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"k": "v"}
        for name in ("b.lora_up.weight", "a.lora_down.weight", "a.alpha"):
            np.testing.assert_array_equal(f.get_tensor(name), tensors[name])
    ours = load_tensors(path)
    for name, value in tensors.items():
        assert ours[name].dtype == value.dtype
        assert ours[name].shape == value.shape
        assert ours[name].tobytes() == value.tobytes()


def test_reader_accepts_files_from_the_safetensors_library(tmp_path):
    path = tmp_path / "lib.safetensors"
    tensors = {k: v for k, v in _sample_tensors().items() if v.dtype in (np.float16, np.float32)}
    save_file(tensors, str(path), metadata={"x": "1"})
    header = read_header(path)
    assert header.metadata == {"x": "1"}
    assert set(header.tensors) == set(tensors)


def test_rewrite_metadata_keeps_tensor_bytes_and_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, _sample_tensors(), {"old": "1"})
    os.chmod(path, 0o640)
    before = read_header(path)
    data_before = path.read_bytes()[before.data_offset:]
    after = rewrite_metadata(path, {"new": "2" * 1000})
    assert read_header(path).metadata == {"new": "2" * 1000}
    assert path.read_bytes()[after.data_offset:] == data_before
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_failed_write_leaves_target_untouched(tmp_path):
    path = tmp_path / "keep.safetensors"
    path.write_bytes(good_file())
    with pytest.raises(errors.InvalidSafetensorsError):
        write_safetensors(path, {"x": np.zeros(2, np.float32)}, {"bad": 1})  # type: ignore[dict-item]
    assert path.read_bytes() == good_file()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_parser_raises_only_lorareg_errors_on_any_bytes(blob):
    try:
        parse_header(blob, file_size=len(blob))
    except errors.LoraregError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_parser_survives_mutations_of_a_good_file(data):
    raw = bytearray(good_file())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    blob = bytes(raw[:cut])
    try:
        parse_header(blob, file_size=len(blob))
    except errors.LoraregError:
        pass
