"""A library of broken safetensors containers, one per defect, named after it.

Each entry builds the file's bytes from a small valid file, changing one thing, and names the error
class and a phrase the one-line message must contain.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from loraregistry import errors


def header_bytes(obj: dict, pad: bool = True) -> bytes:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def tensor_entry(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


GOOD_MODULE = "lora_unet_down_blocks_0_attentions_0_proj_in"


def good_file() -> bytes:
    """Two F32 tensors (a 2x2 down, a 2x2 up) and one metadata key."""
    header = {
        "__metadata__": {"ss_network_dim": "2"},
        f"{GOOD_MODULE}.lora_down.weight": tensor_entry("F32", [2, 2], 0, 16),
        f"{GOOD_MODULE}.lora_up.weight": tensor_entry("F32", [2, 2], 16, 32),
    }
    return header_bytes(header) + struct.pack("<8f", *range(8))


def _with_header(obj: dict, data: bytes = struct.pack("<8f", *range(8))) -> bytes:
    return header_bytes(obj) + data


def _good_entries() -> dict:
    return {"a.lora_down.weight": tensor_entry("F32", [2, 2], 0, 16),
            "a.lora_up.weight": tensor_entry("F32", [2, 2], 16, 32)}


@dataclass(frozen=True)
class BadFile:
    name: str
    content: bytes
    error: type
    phrase: str


def _duplicate_key() -> bytes:
    raw = (b'{"a.lora_down.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
           b'"a.lora_down.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}')
    return struct.pack("<Q", len(raw)) + raw + bytes(32)


def _duplicate_metadata_key() -> bytes:
    entries = json.dumps(_good_entries(), separators=(",", ":"))[1:-1]
    raw = ('{"__metadata__":{"ss_network_dim":"2","ss_network_dim":"4"},' + entries + "}").encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<8f", *range(8))


KNOWN_BAD: list[BadFile] = [
    BadFile("empty_file", b"", errors.InvalidSafetensorsError, "empty file"),
    BadFile("shorter_than_length_field", b"\x10\x00\x00", errors.TruncatedFileError, "too short"),
    BadFile("zip_checkpoint_renamed", b"PK\x03\x04" + bytes(60), errors.PickleCheckpointError, "never unpickles"),
    BadFile("pickle_checkpoint_renamed", b"\x80\x02}q\x00(X\x05\x00\x00\x00" + bytes(40),
            errors.PickleCheckpointError, "pickle"),
    BadFile("header_length_past_end", struct.pack("<Q", 4096) + b"{}", errors.TruncatedFileError,
            "past the end of the file"),
    BadFile("header_over_cap", struct.pack("<Q", 200_000_000) + b"{" + bytes(16), errors.HeaderTooLarge,
            "exceeds the cap"),
    BadFile("header_invalid_json", struct.pack("<Q", 8) + b'{"a":1,,', errors.InvalidSafetensorsError,
            "not valid JSON"),
    BadFile("header_not_utf8", struct.pack("<Q", 8) + b'{"\xff\xfe":1}', errors.InvalidSafetensorsError,
            "UTF-8"),
    BadFile("header_is_json_array", struct.pack("<Q", 8) + b"[1,2,3] ", errors.InvalidSafetensorsError,
            "JSON object"),
    BadFile("metadata_value_not_string", _with_header({"__metadata__": {"ss_network_dim": 32}, **_good_entries()}),
            errors.InvalidSafetensorsError, "must be strings"),
    BadFile("metadata_not_object", _with_header({"__metadata__": ["x"], **_good_entries()}),
            errors.InvalidSafetensorsError, "__metadata__"),
    BadFile("unknown_dtype", _with_header({"a": tensor_entry("F17", [2, 2], 0, 16),
                                           "b": tensor_entry("F32", [2, 2], 16, 32)}),
            errors.InvalidSafetensorsError, "unknown dtype 'F17'"),
    BadFile("shape_span_mismatch", _with_header({"a": tensor_entry("F32", [2, 3], 0, 16),
                                                 "b": tensor_entry("F32", [2, 2], 16, 32)}),
            errors.InvalidSafetensorsError, "span 16 bytes"),
    BadFile("negative_dimension", _with_header({"a": tensor_entry("F32", [-2, 2], 0, 16)}, bytes(16)),
            errors.InvalidSafetensorsError, "non-negative"),
    BadFile("overlapping_offsets", _with_header({"a": tensor_entry("F32", [2, 2], 0, 16),
                                                 "b": tensor_entry("F32", [2, 2], 8, 24)}, bytes(24)),
            errors.InvalidSafetensorsError, "overlapping"),
    BadFile("gap_between_tensors", _with_header({"a": tensor_entry("F32", [2, 2], 0, 16),
                                                 "b": tensor_entry("F32", [2, 2], 24, 40)}, bytes(40)),
            errors.InvalidSafetensorsError, "gap of 8 bytes"),
    BadFile("offsets_reversed", _with_header({"a": tensor_entry("F32", [0], 16, 0)}, b""),
            errors.InvalidSafetensorsError, "before start"),
    BadFile("truncated_data", good_file()[:-5], errors.TruncatedFileError, "missing 5 bytes"),
    BadFile("trailing_bytes", good_file() + b"junk", errors.InvalidSafetensorsError, "4 trailing bytes"),
    BadFile("duplicate_tensor_key", _duplicate_key(), errors.InvalidSafetensorsError, "more than once"),
    BadFile("duplicate_metadata_key", _duplicate_metadata_key(), errors.InvalidSafetensorsError,
            "'ss_network_dim' appears more than once"),
    BadFile("entry_missing_dtype", _with_header({"a": {"shape": [2, 2], "data_offsets": [0, 16]},
                                                 "b": tensor_entry("F32", [2, 2], 16, 32)}),
            errors.InvalidSafetensorsError, "lacks dtype"),
    BadFile("header_length_zero", struct.pack("<Q", 0), errors.InvalidSafetensorsError, "too small"),
]
