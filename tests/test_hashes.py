from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest

from loraregistry import errors
from loraregistry.hashes import civitai_crc32, hash_file
from loraregistry.safetensors_io import read_header, rewrite_metadata, write_safetensors


def test_civitai_crc32_byte_order():
    # FORMATS.md: "hello world" -> 85114A0D (zlib gives 0D4A1185).
    assert f"{zlib.crc32(b'hello world'):08X}" == "0D4A1185"
    assert civitai_crc32(zlib.crc32(b"hello world")) == "85114A0D"


@pytest.mark.parametrize("size_mib", [0.01, 1.5, 3.2])
def test_hashes_match_independent_computation(tmp_path, size_mib):
    n = int(size_mib * (1 << 20)) // 4
    path = tmp_path / "a.safetensors"
    write_safetensors(path, {"w": np.random.default_rng(1).standard_normal(n).astype(np.float32)}, {"m": "x"})
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    got = hash_file(path)
    sha = hashlib.sha256(raw).hexdigest()
    assert got.sha256 == sha
    assert got.autov2 == sha[:10]
    assert got.autov3 == hashlib.sha256(raw[8 + header_len:]).hexdigest()
    crc = zlib.crc32(raw)
    assert got.crc32 == crc.to_bytes(4, "little").hex().upper()
    if len(raw) >= 0x110000:
        assert got.autov1 == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    else:
        assert got.autov1 is None


def test_autov3_survives_metadata_edit_but_sha256_does_not(tmp_path):
    path = tmp_path / "a.safetensors"
    write_safetensors(path, {"w": np.arange(100, dtype=np.float32)}, {"a": "1"})
    before = hash_file(path)
    rewrite_metadata(path, {"a": "2", "b": "much longer metadata" * 10})
    after = hash_file(path)
    assert before.autov3 == after.autov3
    assert before.sha256 != after.sha256
    assert after.autov3 == hash_file(path, data_offset=read_header(path).data_offset).autov3


def test_missing_file_is_a_lorareg_error(tmp_path):
    with pytest.raises(errors.FileAccessError, match="no such file"):
        hash_file(tmp_path / "missing.safetensors")
