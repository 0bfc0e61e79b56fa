"""The fast header readers accept exactly what the careful reader accepts, with the same result.

``parse_header`` first tries ``_parse_compact`` (the layout the safetensors library writes, split once at '"') and
``_parse_bulk`` (any layout: json without hooks, checks over all entries at once); either may only say "not sure",
never reject. Each header below is read both ways: the same metadata and tensors in the same order, or the same
error and message from the careful path.
"""

from __future__ import annotations

import json
import struct

import pytest

from loraregistry import safetensors_io as io
from loraregistry.errors import LoraregError

ALPHA = '"a.alpha":{"dtype":"F16","shape":[],"data_offsets":[0,2]}'
DOWN = '"a.lora_down.weight":{"dtype":"F16","shape":[4,8],"data_offsets":[2,66]}'
UP = '"a.lora_up.weight":{"dtype":"BF16","shape":[8,4],"data_offsets":[66,130]}'
META = '"__metadata__":{"ss_network_dim":"4","note":"a:b, c"}'


def _body(*items: str) -> str:
    return "{" + ",".join(items) + "}"


HEADERS: dict[str, str] = {
    "compact": _body(ALPHA, DOWN, UP),
    "metadata first": _body(META, ALPHA, DOWN, UP),
    "metadata last": _body(ALPHA, DOWN, UP, META),
    "metadata between": _body(ALPHA, META, DOWN, UP),
    "not in data order": _body(UP, ALPHA, DOWN),
    "padded": _body(META, ALPHA, DOWN, UP) + "      ",
    "blank tail": _body(ALPHA, DOWN, UP) + " \n\t ",
    "spaced layout": json.dumps({"__metadata__": {"k": "v"}, "a.alpha": {"dtype": "F16", "shape": [],
                                                                          "data_offsets": [0, 2]}}),
    "fields reordered": _body('"a.alpha":{"shape":[],"dtype":"F16","data_offsets":[0,2]}'),
    "one entry": _body(ALPHA),
    "empty": "{}",
    "metadata only": _body(META),
    "duplicate name": _body(ALPHA, DOWN, DOWN.replace("[2,66]", "[66,130]")),
    "duplicate name, spaced": _body(ALPHA, DOWN.replace(":", ": "), DOWN.replace("[2,66]", "[66,130]")),
    "duplicate inner key": _body(ALPHA.replace('"dtype":"F16"', '"dtype":"F16","dtype":"F16"')),
    "duplicate metadata key": _body('"__metadata__":{"k":"v","k":"w"}', ALPHA),
    "two metadata objects": _body(META, ALPHA, META),
    "entry named __metadata__": _body('"__metadata__":{"dtype":"F16","shape":[],"data_offsets":[0,2]}'),
    "metadata value a number": _body('"__metadata__":{"k":1}', ALPHA),
    "metadata null": _body('"__metadata__":null', ALPHA),
    "metadata holds an entry": _body('"__metadata__":{"x":' + ALPHA.split(":", 1)[1] + "}", ALPHA),
    "negative zero": _body(ALPHA.replace("[]", "[-0]")),
    "negative dims": _body(ALPHA.replace("[]", "[-1,-2]").replace("[0,2]", "[0,4]")),
    "float dim": _body(ALPHA.replace("[]", "[1.0]")),
    "bool dim": _body(ALPHA.replace("[]", "[true]")),
    "leading zero": _body(ALPHA.replace("[0,2]", "[0,02]")),
    "huge number": _body(ALPHA.replace("[0,2]", "[0," + "9" * 40 + "]")),
    "5000 digits": _body(ALPHA.replace("[0,2]", "[0," + "9" * 5000 + "]")),
    "5000-digit dimension": _body(ALPHA.replace("[]", "[" + "9" * 5000 + "]")),
    "65 dims": _body(ALPHA.replace("[]", "[" + ",".join(["1"] * 65) + "]")),
    "zero-size tensor": _body(ALPHA, '"z":{"dtype":"F32","shape":[0,4],"data_offsets":[2,2]}', DOWN, UP),
    "gap": _body(ALPHA, DOWN.replace("[2,66]", "[4,68]"), UP.replace("[66,130]", "[68,132]")),
    "overlap": _body(ALPHA, DOWN.replace("[2,66]", "[0,64]")),
    "not from 0": _body(DOWN),
    "wrong size": _body(ALPHA.replace("[0,2]", "[0,3]")),
    "end before start": _body(ALPHA.replace("[0,2]", "[2,0]")),
    "unknown dtype": _body(ALPHA.replace("F16", "F17")),
    "lower-case dtype": _body(ALPHA.replace("F16", "f16")),
    "dtype a number": _body(ALPHA.replace('"F16"', "16")),
    "extra field": _body(ALPHA.replace("}", ',"x":1}')),
    "missing field": _body('"a":{"dtype":"F16","shape":[]}'),
    "escaped quote in name": _body(ALPHA.replace("a.alpha", 'a\\"b')),
    "escaped letter in name": _body(ALPHA.replace("a.alpha", "\\u00e9")),
    "escaped colon in name": _body(ALPHA.replace("a.alpha", "a\\u003ab"), DOWN, UP),
    "colon in name": _body(ALPHA.replace("a.alpha", "a:b"), DOWN, UP),
    "lone surrogate in name": _body(ALPHA.replace("a.alpha", "\\ud800")),
    "lone surrogate in metadata": _body('"__metadata__":{"k":"\\udc00"}', ALPHA),
    "control character in name": _body(ALPHA.replace("a.alpha", "a\nb")),
    "NaN": _body(ALPHA.replace("[0,2]", "[0,NaN]")),
    "1e400": _body('"__metadata__":{"k":"v"}', ALPHA.replace("}", ',"x":1e400}')),
    "trailing garbage": _body(ALPHA) + "x",
    "two objects": _body(ALPHA) + _body(DOWN),
    "missing comma": "{" + ALPHA + DOWN.replace("[2,66]", "[2,66]") + "}",
    "double comma": "{" + ALPHA + ",," + DOWN + "}",
    "deep nesting": _body(ALPHA.replace("}", ',"x":' + "[" * 200 + "]" * 200 + "}")),
    "array, not object": "[" + ALPHA.split(":", 1)[1] + "]",
    "leading blank": " " + _body(ALPHA),
}


def _both_ways(body: bytes, monkeypatch) -> tuple[object, object]:
    raw = struct.pack("<Q", len(body)) + body

    def read() -> object:
        try:
            header = io.parse_header(raw, path="x.safetensors")
        except LoraregError as exc:
            return type(exc), str(exc)
        return header.metadata, list(header.tensors.items())

    fast = read()
    with monkeypatch.context() as patch:
        patch.setattr(io, "_parse_well_formed", lambda raw: None)
        careful = read()
    return fast, careful


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_fast_and_careful_readers_agree(name, monkeypatch):
    fast, careful = _both_ways(HEADERS[name].encode(), monkeypatch)
    assert fast == careful


def test_not_utf8_is_refused_the_same_way(monkeypatch):
    fast, careful = _both_ways(_body(ALPHA).encode().replace(b"a.alpha", b"a\xffb"), monkeypatch)
    assert fast == careful and careful[0] is not dict


@pytest.mark.parametrize("name", ["compact", "metadata first", "metadata last", "not in data order", "padded"])
def test_what_the_library_writes_is_read_by_the_compact_reader(name):
    tensors = io._parse_compact(HEADERS[name])
    assert tensors is not None and list(tensors[1]) == ["a.alpha", "a.lora_down.weight", "a.lora_up.weight"]


@pytest.mark.parametrize("name", ["spaced layout", "fields reordered"])
def test_other_layouts_are_read_in_bulk(name):
    assert io._parse_compact(HEADERS[name]) is None and io._parse_bulk(HEADERS[name]) is not None


def test_a_real_file_reads_the_same_both_ways(tmp_path, monkeypatch):
    from tests.adapters import lora_tensors, write_adapter

    path = write_adapter(tmp_path / "a.safetensors", lora_tensors("sdxl-base", small=False),
                         {"ss_tag_frequency": json.dumps({"x": {"a:b": 1, 'q"uote': 2}}), "k": "é\u2028"})
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    fast, careful = _both_ways(path.read_bytes()[8 : 8 + n], monkeypatch)
    assert fast == careful and len(fast[1]) > 1000
