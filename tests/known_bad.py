"""A library of broken safetensors containers, one per defect, named after it.

Each entry builds the file's bytes from a small valid file, changing one thing, and names the error
class and a phrase the one-line message must contain.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
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
    # True where the safetensors library loads the file and lorareg is stricter on purpose (a repeated key
    # the library silently resolves, bytes it ignores); everything else the library refuses too.
    library_loads: bool = False


def _duplicate_key() -> bytes:
    raw = (b'{"a.lora_down.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
           b'"a.lora_down.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}')
    return struct.pack("<Q", len(raw)) + raw + bytes(32)


def _duplicate_metadata_key() -> bytes:
    entries = json.dumps(_good_entries(), separators=(",", ":"))[1:-1]
    raw = ('{"__metadata__":{"ss_network_dim":"2","ss_network_dim":"4"},' + entries + "}").encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<8f", *range(8))


# --- headers the safetensors library (serde_json) refuses but Python's json reads --------------------------

_DATA = struct.pack("<8f", *range(8))
_GOOD_ENTRIES_JSON = json.dumps(_good_entries(), separators=(",", ":"))[1:-1]


def _raw_header(text: str, data: bytes = b"") -> bytes:
    """A file from header text written by hand (escapes and all), unpadded."""
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def _before_good_entries(members: str) -> bytes:
    return _raw_header("{" + members + "," + _GOOD_ENTRIES_JSON + "}", _DATA)


def _with_entry_field(value: str) -> bytes:
    """The good entries, the first with an extra field holding ``value`` (JSON text)."""
    return _raw_header('{"a.lora_down.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16],"x":' + value
                       + '},"a.lora_up.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}', _DATA)


def _empty_tensor(shape: str, dtype: str = "F32") -> bytes:
    return _raw_header('{"a":{"dtype":"' + dtype + '","shape":' + shape + ',"data_offsets":[0,0]}}')


def _too_many_tensors(count: int = 100_001) -> bytes:
    return _raw_header("{" + ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
                                      for i in range(count)) + "}")


# --- files that are not safetensors at all (what a failed download leaves behind) --------------------------

def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def _zipped_safetensors() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("my_lora.safetensors", good_file())
    return buffer.getvalue()


GIT_LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
                   b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
                   b"size 151108832\n")
HTML_LOGIN_PAGE = (b"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in - Model Hub"
                   b"</title></head><body><form action=\"/login\">" + b" " * 2000 + b"</form></body></html>\n")
XML_ERROR_PAGE = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                  b"<Message>Request has expired</Message></Error>")
JSON_ERROR_BODY = b'{"error":"Access to model acme/lora is restricted. You must be authenticated to access it."}'


KNOWN_BAD: list[BadFile] = [
    BadFile("empty_file", b"", errors.EmptyFileError, "empty file"),
    BadFile("shorter_than_length_field", b"\x10\x00\x00", errors.TruncatedFileError, "too short"),
    BadFile("zip_checkpoint_renamed", _torch_zip(), errors.PickleCheckpointError, "never unpickles"),
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
            "'ss_network_dim' appears more than once", library_loads=True),
    BadFile("entry_missing_dtype", _with_header({"a": {"shape": [2, 2], "data_offsets": [0, 16]},
                                                 "b": tensor_entry("F32", [2, 2], 16, 32)}),
            errors.InvalidSafetensorsError, "lacks dtype"),
    BadFile("header_length_zero", struct.pack("<Q", 0), errors.InvalidSafetensorsError, "too small"),
    # Refused by the safetensors library, read by Python's json (issue 13, items 13 and 14).
    BadFile("duplicate_metadata_spelled_with_escapes", _before_good_entries(
        '"__metadata__":{"a":"1"},"\\u005f_metadata__":{"b":"2"}'), errors.InvalidSafetensorsError,
        "'__metadata__' appears more than once"),
    BadFile("duplicate_tensor_key_hiding_an_incomplete_entry", _before_good_entries(
        '"a.lora_down.weight":{"dtype":"F32","shape":[2,2]}'), errors.InvalidSafetensorsError,
        "'a.lora_down.weight' appears more than once"),
    BadFile("duplicate_field_in_tensor_entry", _raw_header(
        '{"a":{"dtype":"F16","dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
        '"b":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}', _DATA), errors.InvalidSafetensorsError,
        "'dtype' appears more than once"),
    BadFile("lone_surrogate_in_tensor_name", _raw_header(
        '{"a\\ud800":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
        '"b":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}', _DATA), errors.LoneSurrogateError,
        "lone UTF-16 surrogate"),
    BadFile("lone_surrogate_in_metadata_value", _before_good_entries('"__metadata__":{"ss_tag":"x\\udc00"}'),
            errors.LoneSurrogateError, "lone UTF-16 surrogate"),
    BadFile("lone_surrogate_in_metadata_key", _before_good_entries('"__metadata__":{"\\udbff":"x"}'),
            errors.LoneSurrogateError, "lone UTF-16 surrogate"),
    BadFile("integer_over_4300_digits", _empty_tensor("[" + "9" * 5000 + ",0]"), errors.NumberOutOfRangeError,
            "4,300 digits"),
    BadFile("dimension_over_64_bits", _empty_tensor(f"[{2**64},0]"), errors.NumberOutOfRangeError,
            "over 2^63-1"),
    BadFile("dimension_over_63_bits", _empty_tensor(f"[{2**64 - 1},0]"), errors.NumberOutOfRangeError,
            "over 2^63-1"),
    BadFile("dimension_over_63_bits_in_a_4_bit_tensor", _empty_tensor(f"[{3 * 2**62},0]", "F4"),
            errors.NumberOutOfRangeError, "over 2^63-1"),
    BadFile("shape_product_overflows", _empty_tensor(f"[{2**32},{2**32},0]"), errors.NumberOutOfRangeError,
            "overflows"),
    BadFile("byte_size_overflows", _empty_tensor(f"[{2**62}]"), errors.NumberOutOfRangeError, "overflows"),
    BadFile("more_than_64_dimensions", _empty_tensor("[" + ",".join(["1"] * 64 + ["0"]) + "]"),
            errors.NumberOutOfRangeError, "65 dimensions"),
    BadFile("negative_zero_dimension", _empty_tensor("[-0]"), errors.InvalidSafetensorsError,
            "shape [-0] is not a list of non-negative integers"),
    BadFile("nan_in_tensor_entry", _with_entry_field("NaN"), errors.InvalidSafetensorsError,
            "NaN is not a JSON number"),
    BadFile("float_beyond_double_in_tensor_entry", _with_entry_field("1e400"), errors.NumberOutOfRangeError,
            "beyond the range of a double"),
    BadFile("integer_beyond_double_in_tensor_entry", _with_entry_field("1" + "0" * 309),
            errors.NumberOutOfRangeError, "beyond the range of a double"),
    BadFile("nesting_past_the_json_parser_limit", _with_entry_field("[" * 126 + "]" * 126),
            errors.InvalidSafetensorsError, "over 127 levels deep"),
    BadFile("too_many_tensors", _too_many_tensors(), errors.TooManyTensorsError, "over lorareg's cap of 100,000",
            library_loads=True),
    BadFile("too_many_values_in_a_tensor_entry", _with_entry_field("[" + ",".join(["7"] * 2_000_001) + "]"),
            errors.TooManyValuesError, "JSON values outside strings, over lorareg's cap of 2,000,000",
            library_loads=True),
    # Not safetensors at all: what failed downloads leave behind (issue 12, item 6).
    BadFile("git_lfs_pointer", GIT_LFS_POINTER, errors.GitLfsPointerError, "git lfs pull"),
    BadFile("html_login_page", HTML_LOGIN_PAGE, errors.HtmlPageError, "'Sign in - Model Hub'"),
    BadFile("xml_error_page", XML_ERROR_PAGE, errors.HtmlPageError, "HTML or XML page"),
    BadFile("json_error_body", JSON_ERROR_BODY, errors.JsonDocumentError, "Access to model acme/lora is restricted"),
    BadFile("json_empty_object", b"{}", errors.JsonDocumentError, "JSON document"),
    BadFile("gzip_compressed", gzip.compress(good_file(), mtime=0), errors.CompressedFileError, "gzip -dc"),
    BadFile("zip_of_safetensors", _zipped_safetensors(), errors.CompressedFileError, "'my_lora.safetensors'"),
    BadFile("text_error_message", b"Entry not found", errors.TextFileError, "'Entry not found'"),
]
