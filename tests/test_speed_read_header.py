"""The compact header reader (one split at '"', offsets compared with their spelling) and the os-level file reads
accept exactly what the careful reader accepts, with the same result.

``parse_header`` tries ``_parse_compact`` first; it may only say "not sure" (None), never reject and never read a
header differently. Each header here is read both ways (the fast readers on, then off) and must give the same
metadata and tensors in the same order, or the same error class and message. Random headers (seeded) are built in
the compact layout and then broken one character or one token at a time, near the places the reader checks.
"""

from __future__ import annotations

import json
import os
import random
import struct

import pytest

from loraregistry import safetensors_io as io
from loraregistry.errors import FileAccessError, LoraregError


def _read(raw: bytes) -> object:
    try:
        header = io.parse_header(raw, path="x.safetensors")
    except LoraregError as exc:
        return type(exc), str(exc)
    return header.metadata, list(header.tensors.items())


def _both_ways(body: str | bytes, monkeypatch) -> tuple[object, object]:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    raw = struct.pack("<Q", len(data)) + data
    fast = _read(raw)
    with monkeypatch.context() as patch:
        patch.setattr(io, "_parse_well_formed", lambda raw: None)
        careful = _read(raw)
    return fast, careful


def _entry(name: str, dtype: str, shape: list[int], start: int, end: int) -> str:
    return f'"{name}":{{"dtype":"{dtype}","shape":{json.dumps(shape, separators=(",", ":"))},' \
           f'"data_offsets":[{start},{end}]}}'


A = _entry("a", "F16", [2, 3], 0, 12)
B = _entry("b", "F16", [4], 12, 20)
C = _entry("c", "F32", [], 20, 24)
META = '"__metadata__":{"k":"v","note":"a:b, \\"c\\" ]},\\""}'

# Headers aimed at what the compact reader checks: where the metadata ends, the constant parts, the names, the
# spelling of the offsets, and the two routes (entries back to back; any other order or sub-byte dtypes).
HEADERS: dict[str, str] = {
    "back to back": "{" + ",".join([A, B, C]) + "}",
    "metadata first": "{" + ",".join([META, A, B, C]) + "}",
    "metadata last": "{" + ",".join([A, B, C, META]) + "}",
    "metadata first, padded": "{" + ",".join([META, A, B]) + "}" + " " * 7,
    "metadata first, long padding": "{" + ",".join([META, A, B]) + "}" + " " * 100,
    "long padding after garbage": "{" + ",".join([A, B]) + "}x" + " \n" * 50,
    "only blanks after the opening brace": "{" + " " * 100,
    "metadata first, no closing brace": "{" + ",".join([META, A, B]),
    "metadata first, garbage for the closing brace": "{" + ",".join([META, A, B]) + "x",
    "metadata first, garbage after the closing brace": "{" + ",".join([META, A, B]) + "}x",
    "metadata last, garbage after it": "{" + ",".join([A, B, META]) + "}x",
    "metadata first, blank after it": "{" + META + " ," + ",".join([A, B]) + "}",
    "metadata with a blank inside": "{" + META.replace(':{"k"', ': {"k"') + "," + A + "}",
    "metadata only": "{" + META + "}",
    "metadata that looks like the tail": "{" + A + ',"__metadata__":{"x":",\\"__metadata__\\":{"}}',
    "metadata not an object": '{"__metadata__":"v",' + A + "}",
    "metadata holding a number": '{"__metadata__":{"k":-0},' + A + "}",
    "metadata with a repeated key": '{"__metadata__":{"k":"v","k":"w"},' + A + "}",
    "metadata with a lone surrogate": '{"__metadata__":{"k":"\\udc00"},' + A + "}",
    "metadata twice": "{" + ",".join([META, A, META]) + "}",
    "in another order": "{" + ",".join([C, A, B]) + "}",
    "sub-byte dtype": "{" + ",".join([_entry("q", "F4", [4, 2], 0, 4), _entry("r", "F16", [2], 4, 8)]) + "}",
    "sub-byte dtype, odd size": "{" + _entry("q", "F4", [3], 0, 2) + "}",
    "one dtype": "{" + ",".join([_entry("p", "BF16", [3], 0, 6), _entry("q", "BF16", [1, 1], 6, 8)]) + "}",
    "unknown dtype": "{" + ",".join([A, _entry("b", "F17", [4], 12, 20)]) + "}",
    "unknown dtype, alone": "{" + _entry("b", "F17", [4], 0, 8) + "}",
    "key misspelt": "{" + ",".join([A, B.replace('"dtype"', '"dtypo"')]) + "}",
    "shape key misspelt": "{" + ",".join([A, B.replace('"shape"', '"Shape"')]) + "}",
    "offsets key misspelt": "{" + ",".join([A, B.replace('"data_offsets"', '"data_offset"')]) + "}",
    "key spelt across two entries": "{" + ",".join([A.replace('"dtype"', '"dtypedtype"'), B.replace('"dtype"', '""')])
                                    + "}",
    "colon missing": "{" + ",".join([A, B.replace('"shape":', '"shape"')]) + "}",
    "comma for a colon": "{" + ",".join([A, B.replace('"dtype":', '"dtype",')]) + "}",
    "blank before an entry": "{" + A + ", " + B + "}",
    "semicolon between entries": "{" + A + ";" + B + "}",
    "entry not closed": "{" + A[:-1] + "," + B + "}",
    "name with JSON punctuation": "{" + _entry('a:{b},[c]', "F16", [1], 0, 2) + "}",
    "name that spells an entry": "{" + _entry('x:{dtype:F16}', "F16", [1], 0, 2) + "}",
    "name with an escape": "{" + _entry("a\\u0062", "F16", [1], 0, 2) + "}",
    "name with a control character": "{" + _entry("a\tb", "F16", [1], 0, 2) + "}",
    "name with DEL and U+2028": "{" + _entry("a\x7fb\u2028", "F16", [1], 0, 2) + "}",
    "name not ASCII": "{" + _entry("é✓🙂", "F16", [1], 0, 2) + "}",
    "empty name": "{" + _entry("", "F16", [1], 0, 2) + "}",
    "name __metadata__": "{" + _entry("__metadata__", "F16", [1], 0, 2) + "}",
    "repeated name": "{" + ",".join([A, B.replace('"b"', '"a"')]) + "}",
    "offsets not from 0": "{" + _entry("a", "F16", [1], 2, 4) + "}",
    "offsets with a gap": "{" + ",".join([A, _entry("b", "F16", [4], 14, 22)]) + "}",
    "offsets overlapping": "{" + ",".join([A, _entry("b", "F16", [4], 10, 18)]) + "}",
    "offsets of another size": "{" + ",".join([A, _entry("b", "F16", [4], 12, 21)]) + "}",
    "offset with a leading zero": "{" + ",".join([A, B.replace("[12,20]", "[012,20]")]) + "}",
    "offset -0": "{" + _entry("a", "F16", [1], 0, 2).replace("[0,2]", "[-0,2]") + "}",
    "offset as a float": "{" + _entry("a", "F16", [1], 0, 2).replace("[0,2]", "[0,2.0]") + "}",
    "offset with a blank": "{" + _entry("a", "F16", [1], 0, 2).replace("[0,2]", "[0, 2]") + "}",
    "three offsets": "{" + _entry("a", "F16", [1], 0, 2).replace("[0,2]", "[0,2,2]") + "}",
    "offsets shifted between entries": "{" + ",".join([A.replace("[0,12]", "[0]"), B.replace("[12,20]", "[12,12,20]")])
                                       + "}",
    "huge offset": "{" + _entry("a", "U8", [2**60], 0, 2**60) + "}",
    "offset past 2^63": "{" + ",".join([_entry("a", "U8", [2**62], 0, 2**62), _entry("b", "U8", [2**62, 3], 2**62,
                                                                                      2**64)]) + "}",
    "empty tensor": "{" + ",".join([_entry("z", "F16", [0], 0, 0), A.replace("[0,12]", "[0,12]")]) + "}",
    "dimension with a leading zero": "{" + _entry("a", "F16", [1], 0, 2).replace("[1]", "[01]") + "}",
    "65 dimensions": "{" + _entry("a", "U8", [1] * 65, 0, 1) + "}",
    "64 dimensions": "{" + _entry("a", "U8", [1] * 64, 0, 1) + "}",
    "5000-digit dimension": "{" + _entry("a", "U8", [1], 0, 1).replace("[1]", "[" + "9" * 5000 + "]") + "}",
    "no entries": "{}",
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_compact_and_careful_readers_agree(name, monkeypatch):
    fast, careful = _both_ways(HEADERS[name], monkeypatch)
    assert fast == careful


@pytest.mark.parametrize("name", ["back to back", "metadata first", "metadata last", "metadata first, padded",
                                  "in another order", "sub-byte dtype", "one dtype", "name with JSON punctuation",
                                  "name that spells an entry", "name with DEL and U+2028", "name not ASCII",
                                  "empty name", "64 dimensions"])
def test_the_compact_reader_takes_these(name, monkeypatch):
    """Not only agreement: these are read by the compact reader itself (a reader that always declined would pass
    the test above)."""
    compact = io._parse_compact(HEADERS[name])
    assert compact is not None
    _, careful = _both_ways(HEADERS[name], monkeypatch)
    assert (compact[0], list(compact[1].items())) == careful


# --- random headers, broken near what the reader checks ------------------------------------------------------------

_NAME_CHARS = "abz_.09:,{}[] é✓"
_DTYPES = ["F16", "BF16", "F32", "U8", "I64", "F8_E4M3", "F4", "F6_E2M3", "BOOL"]
_NOISE = ['"', "\\", ":", ",", "{", "}", "[", "]", "0", "1", "9", "-", ".", "e", " ", "\n", "\x01", "é"]
_NUMBER_SPELLINGS = ["0", "00", "01", "-0", "-1", "1.0", "1e2", "2", "18446744073709551616", "9" * 30]


def _random_header(rng: random.Random) -> str:
    count = rng.randint(1, 6)
    names = ["".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(0, 8))) + f"#{i}" for i in range(count)]
    dtypes = [rng.choice(_DTYPES)] * count if rng.random() < 0.5 else [rng.choice(_DTYPES) for _ in range(count)]
    entries = []
    offset = 0
    for name, dtype in zip(names, dtypes):
        shape = [rng.choice([1, 2, 3, 4, 8]) for _ in range(rng.randint(0, 3))]
        numel = 1
        for d in shape:
            numel *= d
        size = -(-numel * io.DTYPE_BITS[dtype] // 8)
        entries.append(_entry(name, dtype, shape, offset, offset + size))
        offset += size
    if rng.random() < 0.3:
        rng.shuffle(entries)
    metadata = '"__metadata__":' + json.dumps({"k": "v", "x": rng.choice(["", "a:b", '"q"', "]},"])},
                                              separators=(",", ":"))
    where = rng.random()
    if where < 0.3:
        entries.insert(0, metadata)
    elif where < 0.5:
        entries.append(metadata)
    elif where < 0.55:
        entries.insert(len(entries) // 2, metadata)
    return "{" + ",".join(entries) + "}" + " " * rng.randint(0, 7)


def _break(text: str, rng: random.Random) -> str:
    """One random change: a character replaced, dropped or added (often next to a '"', ':' or ','), a number
    respelt, an entry repeated, or two offsets swapped."""
    kind = rng.randrange(6)
    marks = [i for i, ch in enumerate(text) if ch in '":,[]{}'] or [0]
    at = rng.choice(marks) + rng.choice([-1, 0, 1]) if rng.random() < 0.7 else rng.randrange(len(text))
    at = min(max(at, 0), len(text) - 1)
    if kind == 0:
        return text[:at] + rng.choice(_NOISE) + text[at + 1 :]
    if kind == 1:
        return text[:at] + text[at + 1 :]
    if kind == 2:
        return text[:at] + rng.choice(_NOISE) + text[at:]
    if kind == 3:
        digits = [i for i, ch in enumerate(text) if ch.isdigit() and not text[i - 1].isdigit()]
        if not digits:
            return text
        start = rng.choice(digits)
        stop = start
        while stop < len(text) and text[stop].isdigit():
            stop += 1
        return text[:start] + rng.choice(_NUMBER_SPELLINGS) + text[stop:]
    if kind == 4:
        entry = text.find('":{"dtype"')
        close = text.find("]}", entry)
        opening = text.rfind('"', 0, entry)
        if entry == -1 or close == -1 or opening == -1:
            return text
        return text[: close + 2] + "," + text[opening : close + 2] + text[close + 2 :]
    pairs = [i for i in range(len(text)) if text.startswith('"data_offsets":[', i)]
    if len(pairs) < 2:
        return text
    first, second = rng.sample(pairs, 2)
    span = len('"data_offsets":[')
    one, two = text[first + span : text.index("]", first)], text[second + span : text.index("]", second)]
    swapped = text.replace(f'"data_offsets":[{one}]', "\0", 1).replace(f'"data_offsets":[{two}]', f'"data_offsets":[{one}]', 1)
    return swapped.replace("\0", f'"data_offsets":[{two}]', 1)


@pytest.mark.parametrize("seed", range(30))
def test_random_headers_read_the_same_both_ways(seed, monkeypatch):
    rng = random.Random(seed)
    taken = 0
    for case in range(100):
        text = _random_header(rng)
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            text = _break(text, rng)
        fast, careful = _both_ways(text, monkeypatch)
        assert fast == careful, (seed, case, text)
        compact = io._parse_compact(text)
        if compact is not None:
            taken += 1
            assert (compact[0], list(compact[1].items())) == careful, (seed, case, text)
    assert taken >= 20  # the compact reader itself was exercised, not only the readers behind it


@pytest.mark.parametrize("cap", [0, 3, 12, 4096])
def test_the_kept_shapes_never_change_a_reading(cap, monkeypatch):
    """Shapes read before are kept for the next header (up to a cap, then replaced): with none kept, a few, or
    all, every random header reads as the careful reader reads it, the first time and again (its shapes known)."""
    monkeypatch.setattr(io, "_KNOWN_SHAPES_CAP", cap)
    monkeypatch.setattr(io, "_KNOWN_SHAPES", ({}, {}))
    rng = random.Random(cap)
    for case in range(150):
        text = _random_header(rng)
        if case % 3:
            text = _break(text, rng)
        for _ in range(2):
            fast, careful = _both_ways(text, monkeypatch)
            assert fast == careful, (case, text)
    assert len(io._KNOWN_SHAPES[0]) <= max(cap, 0) and len(io._KNOWN_SHAPES[0]) == len(io._KNOWN_SHAPES[1])


def test_a_kept_shape_does_not_vouch_for_a_new_one(monkeypatch):
    monkeypatch.setattr(io, "_KNOWN_SHAPES", ({}, {}))
    good = "{" + ",".join([A, B]) + "}"
    assert io._parse_compact(good) is not None and ":[2,3]," in io._KNOWN_SHAPES[0]
    for dims in ("[01]", "[0]", "[" + ",".join(["1"] * 65) + "]", "[1.0]", "[ 4]"):
        text = "{" + ",".join([A, B.replace("[4]", dims)]) + "}"
        fast, careful = _both_ways(text, monkeypatch)
        assert fast == careful and io._parse_compact(text) is None, dims


# --- the file reads ---------------------------------------------------------------------------------------------------


def _adapter_bytes(metadata_size: int) -> bytes:
    body = ("{" + ",".join([f'"__metadata__":{{"big":"{"x" * metadata_size}"}}', A, B, C]) + "}").encode()
    return struct.pack("<Q", len(body)) + body + bytes(24)


@pytest.mark.parametrize("metadata_size", [10, 5000])  # the header inside the first read, and past it
def test_short_os_reads_give_the_same_header(tmp_path, monkeypatch, metadata_size):
    path = tmp_path / "a.safetensors"
    path.write_bytes(_adapter_bytes(metadata_size))
    whole = io.read_header(path)
    real_read = os.read
    with monkeypatch.context() as patch:
        patch.setattr(io.os, "read", lambda fd, size: real_read(fd, min(size, 7)))
        assert io.read_header(path) == whole
    assert list(whole.tensors) == ["a", "b", "c"] and whole.total_size == path.stat().st_size


def test_a_file_that_shrinks_under_the_reader_is_truncated(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    path.write_bytes(_adapter_bytes(5000))
    real_read = os.read
    with monkeypatch.context() as patch:  # the second read (the whole header) ends early, as if the file were cut
        patch.setattr(io.os, "read", lambda fd, size: real_read(fd, size)[:1500] if size > 1024 else real_read(fd, size))
        with pytest.raises(LoraregError, match="points past the end of the data"):
            io.read_header(path)


def test_a_fifo_is_named_not_opened(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(FileAccessError, match="is not a regular file"):
        io.read_header(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_says_so(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(_adapter_bytes(10))
    path.chmod(0)
    with pytest.raises(FileAccessError, match="cannot read: Permission denied"):
        io.read_header(path)
