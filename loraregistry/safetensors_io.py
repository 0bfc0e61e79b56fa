"""Read, validate and write safetensors files without torch.

The reader follows the format byte for byte: an unsigned 64-bit little-endian header length N, N bytes
of UTF-8 JSON (an object of tensor entries plus an optional ``__metadata__`` of str -> str), then the
data section, which the tensor entries must cover exactly: sorted, contiguous, non-overlapping, every
``shape x itemsize`` equal to the entry's byte span. Every failure raises a ``LoraregError`` subclass
that names the tensor and the numbers involved.

Headers come from strangers, so the reader refuses whatever the safetensors library refuses (its JSON
parser is stricter than Python's: see "JSON, read the way ..."), and bounds its work before parsing: a
header over 100 MB (the library's cap), over ``MAX_TENSORS`` entries or over ``MAX_JSON_VALUES`` values
is refused after one scan of the bytes. A file that is not safetensors at all is named by ``sniff``.

Tensor data is read through numpy memory maps (bf16 and fp8 through ml_dtypes). Writes are atomic
(``atomic_write``: temp file in the same folder, fsync, rename; an existing file's mode is kept).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import os
import stat
import struct
from collections.abc import Iterator, Mapping
from json.decoder import scanstring
from pathlib import Path
from typing import Any, NamedTuple

from .errors import (
    EmptyFileError,
    FileAccessError,
    HeaderTooLarge,
    InvalidSafetensorsError,
    LoraregError,
    LoneSurrogateError,
    NumberOutOfRangeError,
    TooManyTensorsError,
    TooManyValuesError,
    TruncatedFileError,
)
from .lazy_re import lazy
from .record import FrozenRecord
from .sniff import SNIFF_BYTES, sniff

# The atomic writer lives in atomic_write.py; imported here so existing callers keep working.
from .atomic_write import ConcurrentEditError, FileSnapshot, atomic_write, check_unchanged  # noqa: F401

# Same cap as the safetensors library: a header larger than this is refused before it is read.
DEFAULT_HEADER_CAP = 100_000_000
# lorareg's own cap on tensor entries: a FLUX LoRA has under 2,000, a full SDXL LyCORIS about 10,000; past this
# a header is refused before it is parsed (a 99 MB header of empty entries would hold ~900,000).
MAX_TENSORS = 100_000
# And on JSON values outside strings (numbers, arrays, objects...): an entry needs about 8, so 2,000,000 leaves
# room for the tensor cap and metadata; past it Python's json would build gigabytes of objects.
MAX_JSON_VALUES = 2_000_000
METADATA_KEY = "__metadata__"
_OFFSETS_KEY = b'"data_offsets"'  # every tensor entry holds it once
_CHUNK = 1 << 20

# dtype -> size in bits (sub-byte float formats exist in newer safetensors releases).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0"})
# +Inf's bits in the IEEE floats read on their bits: the exponent all ones (a magnitude above it is NaN). The scan's
# two passes and the ops' value check share it.
INF_BITS: dict[str, int] = {"F16": 0x7C00, "BF16": 0x7F80, "F32": 0x7F80_0000, "F64": 0x7FF0_0000_0000_0000}


class TensorInfo(NamedTuple):
    """One tensor entry of a header; offsets are relative to the start of the data section.
    (A NamedTuple: headers hold thousands of these and tuples are cheap to build.)"""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_END = operator.itemgetter(4)  # TensorInfo.end, read in C


class SafetensorsHeader(FrozenRecord):
    """A validated header. ``tensors`` is ordered by data offset."""

    header_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    path: str | None

    def __init__(self, header_size: int, metadata: dict[str, str], tensors: dict[str, TensorInfo],
                 path: str | None = None) -> None:
        self._set(header_size=header_size, metadata=metadata, tensors=tensors, path=path)

    @property
    def data_offset(self) -> int:
        return 8 + self.header_size

    @property
    def data_size(self) -> int:
        return max(map(_END, self.tensors.values()), default=0)

    @property
    def total_size(self) -> int:
        return self.data_offset + self.data_size


# --- parsing -----------------------------------------------------------------------------


def _fail(message: str, path: str | None, hint: str | None = None, cls=InvalidSafetensorsError):
    raise cls(message, path=path, hint=hint)


def _short(value: Any, limit: int = 200) -> str:
    """``repr`` of a value read from the file, cut short: a hostile header can make it megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sniff_not_safetensors(prefix: bytes, path: str | None, file_size: int | None = None) -> None:
    """Raise a specific error when ``prefix`` is a well-known non-safetensors file (see ``sniff``)."""
    sniff(prefix, path=path, file_size=file_size)


def header_length(prefix: bytes, *, path: str | None = None, file_size: int | None = None,
                  cap: int = DEFAULT_HEADER_CAP) -> int:
    """Validate the 8-byte header length at the start of ``prefix`` and return it.

    When the length is implausible (or the header does not start with ``{``), the first bytes are sniffed
    first: a Git LFS pointer, an HTML page, a JSON body, an archive or a pickle gets its own error."""
    if len(prefix) == 0:
        _fail("empty file (0 bytes)", path, "the download or copy did not finish; fetch the file again",
              EmptyFileError)
    if len(prefix) < 8:
        sniff_not_safetensors(prefix, path, file_size)
        _fail(f"file is {len(prefix)} bytes, too short for the 8-byte header length", path,
              "the file is truncated or not safetensors", TruncatedFileError)
    (n,) = struct.unpack("<Q", prefix[:8])
    implausible = n > cap or n < 2 or (file_size is not None and 8 + n > file_size)
    if implausible or (len(prefix) > 8 and prefix[8:9] != b"{"):
        # Only a failing safetensors reading is sniffed: a valid header length can start with 0x80 or "PK".
        sniff_not_safetensors(prefix, path, file_size)
    if n > cap:
        _fail(f"header length {n} bytes exceeds the cap of {cap} bytes", path,
              "the file is corrupt or not safetensors", HeaderTooLarge)
    if n < 2:
        _fail(f"header length {n} is too small for a JSON object", path, "the file is corrupt or not safetensors")
    if file_size is not None and 8 + n > file_size:
        _fail(f"header length {n} points past the end of the file ({file_size} bytes)", path,
              "the file is truncated or not safetensors", TruncatedFileError)
    return n


# --- JSON, read the way the safetensors library (serde_json) reads it --------------------------------------
# Python's json accepts what serde_json refuses: repeated keys (last wins), lone surrogate escapes, NaN and
# Infinity, integers of any size (up to 4,300 digits, then ValueError), floats beyond a double (as inf),
# "-0" as an integer, nesting past serde's recursion limit. Each is refused here, so what the library cannot
# load never passes verify. The hooks below run only on what is rare in a header (floats, constants, "-0").

_MAX_DEPTH = 127  # serde_json's limit of 128 nested arrays/objects, counting the header object itself
_MAX_INDEX = 2**63 - 1  # the largest size numpy and torch can index: dimensions, element counts, offsets
_MAX_DIMENSIONS = 64  # numpy's and torch's limit on a tensor's number of dimensions
_FAST_OFFSET_LIMIT = 2**56  # offsets below this cannot overflow any product checked in the fast path
_NEGATIVE_ZERO = lazy(r"[\[,:]\s*-0(?![0-9.eE])")  # a constant pattern: finds "-0" written as a number
_SURROGATE_ESCAPE = lazy(r"\\u[dD][89a-fA-F]")  # the start of a \ud800-\udfff escape
_STRING_TOKEN = lazy(r'"(?:[^"\\]++|\\.)*+"')  # a JSON string; possessive: no backtracking


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _NotJson(Exception):
    """NaN / Infinity: Python's json reads them, JSON (and serde_json) does not."""


class _OutOfRange(Exception):
    """A float beyond a double's range: Python's json reads it as inf, serde_json refuses it."""


class _NegativeZero(int):
    """``-0`` written as an integer: serde_json reads it as the float -0.0, never as a size."""

    def __repr__(self) -> str:
        return "-0"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: find which key repeats, for the message
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _OutOfRange(f"the number {_short(text, 30)} is beyond the range of a double")
    return value


def _int_or_negative_zero(text: str) -> int:
    return _NegativeZero(0) if text == "-0" else int(text)


# json.loads(text, **hooks) builds a decoder per call; these two are built once (the text starts with "{": the
# byte-order-mark check json.loads adds cannot apply).
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_refuse_constant,
                                   parse_float=_finite_float)
_STRICT_NEGATIVE_ZERO_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_refuse_constant,
                                                 parse_float=_finite_float, parse_int=_int_or_negative_zero)


def _surrogate_place(obj: dict[str, Any]) -> str | None:
    """Where the header holds a lone surrogate (a string that cannot be encoded as UTF-8), or None."""

    def bad(text: Any) -> bool:
        if not isinstance(text, str):
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    for key, value in obj.items():
        if bad(key):
            return f"the key {_short(key)}"
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for inner_key, inner in item.items():
                    if bad(inner_key):
                        return f"a key inside {_short(key)}"
                    stack.append(inner)
            elif isinstance(item, list):
                stack.extend(item)
            elif bad(item):
                return f"a value inside {_short(key)}"
    return None


def _decode_json(raw: bytes | memoryview, path: str | None) -> dict[str, Any]:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"header is not valid UTF-8 (byte {exc.start} of the header)", path, "the file is corrupt")
    return _decode_json_text(text, path)


def _decode_json_text(text: str, path: str | None) -> dict[str, Any]:
    # safetensors pads the header with spaces; anything before '{' is not allowed.
    if not text.startswith("{"):
        _fail("header does not start with a JSON object '{'", path, "the file is corrupt or not safetensors")
    # Commas bound the number of values; only when there are many are the ones inside strings left out.
    if text.count(",") >= MAX_JSON_VALUES:
        values = _STRING_TOKEN.sub("", text).count(",") + 1
        if values > MAX_JSON_VALUES:
            _fail(f"header holds {values:,} JSON values outside strings, over lorareg's cap of {MAX_JSON_VALUES:,}",
                  path, "an adapter at the 100,000-tensor cap needs under 1,000,000; the file is corrupt or hostile",
                  TooManyValuesError)
    try:
        negative_zero = "-0" in text and _NEGATIVE_ZERO.search(text)
        obj = (_STRICT_NEGATIVE_ZERO_DECODER if negative_zero else _STRICT_DECODER).decode(text)
    except _DuplicateKey as exc:
        _fail(f"key {_short(exc.key)} appears more than once in the header", path,
              "the writer is broken; re-export the file")
    except _NotJson as exc:
        _fail(f"header is not valid JSON: {exc}", path, "the file is corrupt")
    except _OutOfRange as exc:
        _fail(f"header number out of range: {exc}", path, "the file is corrupt", NumberOutOfRangeError)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = getattr(exc, "msg", "too deeply nested")
        pos = getattr(exc, "pos", None)
        at = f" at byte {pos} of the header" if pos is not None else ""
        _fail(f"header is not valid JSON: {msg}{at}", path, "the file is corrupt or not safetensors")
    except ValueError:  # Python's int-from-text limit (4,300 digits); no loader reads such a number either
        _fail("header number out of range: an integer of more than 4,300 digits", path, "the file is corrupt",
              NumberOutOfRangeError)
    if not isinstance(obj, dict):
        _fail(f"header is a JSON {type(obj).__name__}, expected an object", path, "the file is corrupt")
    maybe_surrogate = ("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text)
    if maybe_surrogate and (place := _surrogate_place(obj)) is not None:
        _fail(f"header holds a lone UTF-16 surrogate escape (\\ud800-\\udfff) in {place}", path,
              "the safetensors library refuses such headers; re-export the file with valid Unicode strings",
              LoneSurrogateError)
    return obj


def _too_many(count: int, path: str | None) -> None:
    _fail(f"header lists {count:,} tensor entries, over lorareg's cap of {MAX_TENSORS:,}", path,
          "no adapter has that many, a FLUX LoRA has under 2,000; the file is corrupt or hostile",
          TooManyTensorsError)


def _parse_metadata(raw: Any, path: str | None) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail(f"__metadata__ is a JSON {type(raw).__name__}, expected an object of strings", path,
              "re-save the file with string metadata values")
    for key, value in raw.items():
        if not isinstance(value, str):
            _fail(f"metadata value for {_short(key)} is a JSON {type(value).__name__}; metadata values must be "
                  "strings", path, "re-save the file with string metadata values (json.dumps nested values)")
    return dict(raw)


def _parse_entry(name: str, entry: Any, path: str | None) -> TensorInfo:
    """Validate one entry: a fast path for well-formed entries (headers hold thousands), and the careful
    path, which names what is wrong, for anything else (extra fields, empty tensors, big numbers)."""
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        bits = DTYPE_BITS[dtype] if type(dtype) is str else 0
        start, end = offsets if type(offsets) is list and len(offsets) == 2 else (-1, -1)
        numel = nonzero = 1  # nonzero: the product numpy checks for overflow, zeros left out
        for d in shape if type(shape) is list and len(shape) <= _MAX_DIMENSIONS else (-1,):
            if type(d) is not int or d < 0 or nonzero > _MAX_INDEX:  # stop early: no huge products
                numel = -1
                break
            numel *= d
            nonzero *= d or 1
    except (TypeError, KeyError, ValueError):
        return _parse_entry_carefully(name, entry, path)
    if (bits and numel >= 0 and nonzero <= _MAX_INDEX and nonzero * bits <= 8 * _MAX_INDEX and len(entry) == 3
            and type(start) is int and type(end) is int and 0 <= start <= end < _FAST_OFFSET_LIMIT
            and numel * bits == 8 * (end - start)):
        return TensorInfo(name, dtype, tuple(shape), start, end)
    return _parse_entry_carefully(name, entry, path)


_BIG_INT = 2**1023  # integers from here on may not fit a double; float() says which do not


def _extra_field_problem(value: Any, room: int) -> str | None:
    """What serde_json refuses in an ignored entry field: "deep" when ``value`` nests arrays/objects over
    ``room`` levels, "range" when it holds an integer no double can hold; None when neither.

    Walked a level at a time with comprehensions: a field can hold up to MAX_JSON_VALUES items."""
    level = [value]
    depth = 0
    while level:
        kinds = set(map(type, level))  # C speed; the common junk is one long list of numbers
        if int in kinds:
            if kinds <= {int, float, bool}:
                big = max(level) >= _BIG_INT or min(level) <= -_BIG_INT
            else:
                big = any(type(x) is int and (x >= _BIG_INT or x <= -_BIG_INT) for x in level)
            if big:
                for number in [x for x in level if type(x) is int and (x >= _BIG_INT or x <= -_BIG_INT)]:
                    try:
                        float(number)
                    except OverflowError:
                        return "range"
        if list not in kinds and dict not in kinds:
            return None
        containers = [x for x in level if type(x) is list or type(x) is dict]
        depth += 1
        if depth > room:
            return "deep"
        level = [inner for c in containers for inner in (c.values() if type(c) is dict else c)]
    return None


def _parse_entry_carefully(name: str, entry: Any, path: str | None) -> TensorInfo:
    where = f"tensor {_short(name)}"
    if not isinstance(entry, dict):
        _fail(f"{where}: entry is a JSON {type(entry).__name__}, expected an object", path)
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        _fail(f"{where}: entry lacks {', '.join(missing)}", path)
    for key, extra in entry.items():  # loaders ignore other fields, but still parse them
        if key in ("dtype", "shape", "data_offsets"):
            continue
        problem = _extra_field_problem(extra, _MAX_DEPTH - 2)  # the header and the entry are 2 levels
        if problem == "deep":
            _fail(f"{where}: field {_short(key)} nests arrays/objects over {_MAX_DEPTH} levels deep, past the "
                  "limit of the safetensors library's JSON parser", path, "the file is corrupt")
        if problem == "range":
            _fail(f"{where}: field {_short(key)} holds an integer beyond the range of a double", path,
                  "the file is corrupt", NumberOutOfRangeError)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        _fail(f"{where} has unknown dtype {_short(dtype)}", path, f"known dtypes: {', '.join(DTYPE_BITS)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        _fail(f"{where}: shape {_short(shape)} is not a list of non-negative integers", path)
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)):
        _fail(f"{where}: data_offsets {_short(offsets)} is not a pair of non-negative integers", path)
    if len(shape) > _MAX_DIMENSIONS:
        _fail(f"{where} has {len(shape)} dimensions; numpy and torch hold at most {_MAX_DIMENSIONS}", path,
              "the file is corrupt", NumberOutOfRangeError)
    big = next((v for v in (*shape, *offsets) if v > _MAX_INDEX), None)
    if big is not None:
        _fail(f"{where}: {_short(big)} in its shape or data_offsets is over 2^63-1, the largest size loaders "
              "can index", path, "the file is corrupt", NumberOutOfRangeError)
    nonzero = 1
    for d in shape:
        nonzero *= d or 1
        if nonzero * DTYPE_BITS[dtype] > 8 * _MAX_INDEX:  # safetensors overflows, numpy says "too big"
            _fail(f"{where}: shape {_short(shape)} x {dtype} overflows the largest byte size loaders can index",
                  path, "the file is corrupt", NumberOutOfRangeError)
    start, end = offsets
    if end < start:
        _fail(f"{where}: data_offsets end {end} is before start {start}", path)
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - start:
        _fail(f"{where}: shape {_short(shape)} x {dtype} = {bits / 8:g} bytes, but data_offsets "
              f"[{start}, {end}] span {end - start} bytes", path,
              "the header and the data disagree; re-export the file")
    return TensorInfo(name, dtype, tuple(shape), start, end)


def parse_header(header_bytes: bytes, *, path: str | None = None, cap: int = DEFAULT_HEADER_CAP,
                 file_size: int | None = None) -> SafetensorsHeader:
    """Parse and validate a header from the file's first ``8 + N`` bytes (or more).

    ``file_size`` (when known) must match the size the header describes exactly: a shorter file is
    truncated, a longer one carries bytes no tensor accounts for. Work and memory are linear in N, and
    a header of over ``MAX_TENSORS`` entries is refused before it is parsed.
    """
    n = header_length(header_bytes, path=path, file_size=file_size, cap=cap)
    if len(header_bytes) < 8 + n:
        _fail(f"header length {n} points past the end of the data ({len(header_bytes)} bytes)", path,
              "the file is truncated", TruncatedFileError)
    # Too many entries are refused before decoding, so a huge header costs one scan, not millions of Python
    # objects. ('"data_offsets"' occurs at most once per JSON string; escaped spellings of the key are
    # counted again after parsing.)
    # A header shorter than MAX_TENSORS + 1 keys cannot hold too many: the scan is skipped.
    if n >= len(_OFFSETS_KEY) * (MAX_TENSORS + 1):
        declared = header_bytes.count(_OFFSETS_KEY, 8, 8 + n)
        if declared > MAX_TENSORS:
            _too_many(declared, path)
    raw = memoryview(header_bytes)[8 : 8 + n]  # a view: no copy of a 100 MB header
    fast = _parse_well_formed(raw)
    if fast is not None:
        metadata, tensors = fast
    else:
        metadata, tensors = _parse_carefully(raw, path)
    header = SafetensorsHeader(header_size=n, metadata=metadata, tensors=tensors, path=path)
    # header.total_size without its max over every entry: the tensors tile the data in order, the last one ends it
    last = next(reversed(tensors.values()), None)
    if file_size is not None and file_size != (total := header.data_offset + (last.end if last else 0)):
        if file_size < total:
            _fail(f"file is {file_size} bytes but its header describes {total} "
                  f"(missing {total - file_size} bytes of tensor data)", path,
                  "the download or copy did not finish; fetch the file again", TruncatedFileError)
        _fail(f"file is {file_size} bytes but its header describes {total} "
              f"({file_size - total} trailing bytes no tensor accounts for)", path,
              "the file is corrupt or was appended to")
    return header


# --- the fast path: a well-formed header, checked in bulk ---------------------------------------------------
# Most headers are what the safetensors library writes: string metadata, entries of exactly dtype / shape /
# data_offsets with plain non-negative integers, non-empty tensors laid out back to back. Those are read by splitting
# the text once at '"' (``_parse_compact``); other layouts by Python's json without hooks (``_parse_bulk``); both
# check all entries at once (map over C functions, joins, list comparisons) instead of a Python call per entry.
# Anything else, or any doubt, goes to the careful path, which gives the verdict and the message: the fast path
# never rejects, it only accepts what the careful path accepts, and reads it the same.

_new_info = functools.partial(tuple.__new__, TensorInfo)  # a TensorInfo from a 5-tuple, built in C
_dtype, _shape, _offsets = operator.itemgetter("dtype"), operator.itemgetter("shape"), operator.itemgetter("data_offsets")
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


_NUMBER = "(?:0|[1-9][0-9]*+)"  # JSON's spelling of a non-negative integer: no sign, no leading zero
# One entry exactly as the safetensors library (and lorareg) writes it, entries joined by ",":
#   "NAME":{"dtype":"DTYPE","shape":[DIMS],"data_offsets":[START,END]}
# Split at '"', every entry gives ten parts: NAME, ':{', 'dtype', ':', DTYPE, ',', 'shape', ':[DIMS],',
# 'data_offsets', ':[START,END]},' (with the ',' before the next entry; the last entry's ends at '}').
_CONSTANT_PARTS = ((2, ":{"), (3, "dtype"), (4, ":"), (6, ","), (7, "shape"), (9, "data_offsets"))
_SPELLED_DIMS = lazy(rf":\[((?:{_NUMBER}(?:,{_NUMBER})*+)?)\],")
_SPELLED_OFFSETS = lazy(rf':\[{_NUMBER},{_NUMBER}\]\}}(?:,":\[{_NUMBER},{_NUMBER}\]\}})*+')  # '"'-joined parts
_DIGITS = lazy("[0-9]++")
_TO_DTYPE, _TO_SHAPE, _TO_OFFSETS, _ENTRY_END = '":{"dtype":"', '","shape"', '"data_offsets":[', ']},"'
_ITEMSIZE = {dtype: bits // 8 for dtype, bits in DTYPE_BITS.items() if bits % 8 == 0}  # whole-byte dtypes
_JSON_BLANKS = " \t\r\n"
_PADDING = 64  # safetensors pads a header with under 8 blanks: the end is found in its last characters
_METADATA_HEAD = '{"' + METADATA_KEY + '":'
_METADATA_LAST = ',"' + METADATA_KEY + '":{'
_SCANNER = json.JSONDecoder()  # no hooks: only finds where the metadata object ends; the careful reader judges it


def _parse_well_formed(raw: memoryview) -> tuple[dict[str, str], dict[str, TensorInfo]] | None:
    """The metadata and tensors of a header the careful path would accept unchanged, or None (ask it)."""
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        return None
    # (a text shorter than MAX_JSON_VALUES cannot hold that many commas: the count is skipped)
    if not text.startswith("{") or (len(text) >= MAX_JSON_VALUES and text.count(",") >= MAX_JSON_VALUES):
        return None
    compact = _parse_compact(text)
    return compact if compact is not None else _parse_bulk(text)


def _split_compact(text: str) -> tuple[str | None, str] | None:
    """(the metadata member as a JSON object of its own, or None; the entries) of a header whose metadata comes first,
    last or not at all; None for any other shape. The header is exactly "{" + entries + "," + metadata member + "}"
    (or the other way round, plus blanks), so the caller, checking both parts, checks all of it."""
    last = text[-_PADDING:]  # no copy of the whole header for a few blanks
    kept = last.rstrip(_JSON_BLANKS)
    body_end = len(text) - len(last) + len(kept) if kept else len(text.rstrip(_JSON_BLANKS))
    if text[body_end - 1 : body_end] != "}":
        return None
    if text.startswith(_METADATA_HEAD):
        try:  # where the metadata object ends, found by json's C scanner (strings may hold any character)
            end = _SCANNER.raw_decode(text, len(_METADATA_HEAD))[1]
        except (ValueError, RecursionError):
            return None
        if text[end : end + 2] != ',"':
            return None
        return text[:end] + "}", text[end + 1 : body_end - 1]
    if not text.startswith('{"'):
        return None
    at = text.rfind(_METADATA_LAST, 0, body_end)
    if at == -1:
        return None, text[1 : body_end - 1]
    return "{" + text[at + 1 : body_end], text[1:at]


def _parse_compact(text: str) -> tuple[dict[str, str], dict[str, TensorInfo]] | None:
    """A header in the compact layout (metadata first, last or absent), read by one split at '"': no regex over
    names, no dict per entry. None when any part of the text is not that layout."""
    split = _split_compact(text)
    if split is None:
        return None
    metadata_text, entries = split
    metadata: dict[str, str] = {}
    if metadata_text is not None:
        try:  # the careful reader: duplicate keys, escapes, surrogates, non-string values all refused there
            parsed = _decode_json_text(metadata_text, None)
            if list(parsed) != [METADATA_KEY]:
                return None
            metadata = _parse_metadata(parsed[METADATA_KEY], None)
        except LoraregError:
            return None
    tensors = _compact_entries(entries)
    return None if tensors is None else (metadata, tensors)


def _compact_entries(entries: str) -> dict[str, TensorInfo] | None:
    """The tensors of ``entries`` when it is exactly compact entries joined by ","; None otherwise.

    Split at '"', the parts are accepted only when every constant part is in its place and every other part is
    valid on its own (a name with no escape or control character, a known dtype, canonical numbers): the text is
    then that layout and nothing else, whatever its names hold. (For entries back to back, the check of the
    constant parts is the text rebuilt from the others.)"""
    if "\\" in entries:  # an escape in a name: the careful reader decodes it
        return None
    parts = entries.split('"')
    count = (len(parts) - 1) // 10
    if count < 1 or len(parts) != 10 * count + 1 or parts[0]:
        return None
    names, dtypes, spelled_shapes, spelled_offsets = parts[1::10], parts[5::10], parts[8::10], parts[10::10]
    try:
        scanstring("".join(names + ['"']), 0, True)  # json's own check: no control character in a name
    except ValueError:
        return None
    shapes_and_numels = _shapes_and_numels(spelled_shapes)
    if shapes_and_numels is None:
        return None
    shapes, numels = shapes_and_numels
    sizes = _byte_sizes(dtypes, numels)
    tensors = None if sizes is None else _back_to_back(entries, names, dtypes, spelled_shapes, shapes, sizes)
    if tensors is None:
        for at, constant in _CONSTANT_PARTS:  # joined at '"', which no part holds: equal texts mean equal parts
            if '"'.join(parts[at::10]) + '"' != (constant + '"') * count:
                return None
        tensors = _in_any_order(names, dtypes, shapes, numels, spelled_offsets)
    if tensors is None or len(tensors) != count or METADATA_KEY in tensors:
        return None  # a repeated name (the dict kept one) or an entry named like the metadata
    return tensors


# Spelled dims -> (shape, element count) for shapes the compact reader took: the files of one model family share
# them, and reading them is a regex and int() per shape. Only ever added to; past the cap a new pair replaces both.
_KNOWN_SHAPES: tuple[dict[str, tuple[int, ...]], dict[str, int]] = ({}, {})
_KNOWN_SHAPES_CAP = 4096


def _shapes_and_numels(spelled_shapes: list[str]) -> tuple[list[tuple[int, ...]], list[int]] | None:
    """Each entry's shape and element count; None when a shape is not for the fast path (not spelled canonically,
    empty: ties in the layout, over 64 dimensions, a number past Python's digit limit)."""
    global _KNOWN_SHAPES
    shape_of, numel_of = _KNOWN_SHAPES
    try:
        shapes = list(map(shape_of.__getitem__, spelled_shapes))  # a known shape's count was stored before it
    except KeyError:
        shape_of, numel_of = {}, {}
        try:
            for spelled in set(spelled_shapes):
                dims = _SPELLED_DIMS.fullmatch(spelled)
                if dims is None:
                    return None
                shape = tuple(map(int, dims[1].split(","))) if dims[1] else ()
                numel = math.prod(shape)
                if numel == 0 or len(shape) > _MAX_DIMENSIONS:
                    return None
                shape_of[spelled], numel_of[spelled] = shape, numel
        except ValueError:
            return None
        known_shapes, known_numels = _KNOWN_SHAPES
        if len(known_shapes) + len(shape_of) > _KNOWN_SHAPES_CAP:
            _KNOWN_SHAPES = ({}, {}) if len(shape_of) > _KNOWN_SHAPES_CAP else (dict(shape_of), dict(numel_of))
        else:
            known_numels.update(numel_of)
            known_shapes.update(shape_of)
        shapes = list(map(shape_of.__getitem__, spelled_shapes))
    return shapes, list(map(numel_of.__getitem__, spelled_shapes))


def _byte_sizes(dtypes: list[str], numels: list[int]) -> list[int] | None:
    """Each entry's size in bytes; None when a dtype is unknown or smaller than a byte."""
    itemsize = _ITEMSIZE.get(dtypes[0])
    if itemsize is not None and dtypes.count(dtypes[0]) == len(dtypes):  # one dtype, the usual case
        return list(map(operator.mul, numels, itertools.repeat(itemsize)))
    try:
        return list(map(operator.mul, numels, map(_ITEMSIZE.__getitem__, dtypes)))
    except KeyError:
        return None


def _back_to_back(entries: str, names: list[str], dtypes: list[str], spelled_shapes: list[str],
                  shapes: list[tuple[int, ...]], sizes: list[int]) -> dict[str, TensorInfo] | None:
    """The tensors when they are written in data order from byte 0, each starting where the one before ends (what
    the safetensors library writes): the offsets follow from the sizes, and the entries are rebuilt from names,
    dtypes, shapes and those offsets, exactly as the library writes them, then compared with the text: nothing
    parsed, every constant part checked. None otherwise (or when an offset is too big for the fast path)."""
    ends = list(itertools.accumulate(sizes))
    if ends[-1] >= _FAST_OFFSET_LIMIT:
        return None
    spelled_ends = list(map(repr, ends))  # a positive int's repr is its canonical JSON spelling
    count = len(ends)
    rebuilt = [_ENTRY_END] * (10 * count + 1)  # '"' NAME '":{"dtype":"' DTYPE '","shape"' ':[DIMS],'
    rebuilt[0] = '"'  #                         '"data_offsets":[' START ',' END ']},"' (the last: ']}')
    rebuilt[1::10], rebuilt[3::10], rebuilt[5::10] = names, dtypes, spelled_shapes
    rebuilt[2::10], rebuilt[4::10], rebuilt[6::10] = [_TO_DTYPE] * count, [_TO_SHAPE] * count, [_TO_OFFSETS] * count
    rebuilt[7::10], rebuilt[8::10], rebuilt[9::10] = ["0", *spelled_ends[:-1]], [","] * count, spelled_ends
    rebuilt[-1] = "]}"
    if "".join(rebuilt) != entries:
        return None
    starts = itertools.chain((0,), ends)  # one longer than the others: zip stops with them
    return dict(zip(names, map(tuple.__new__, itertools.repeat(TensorInfo), zip(names, dtypes, shapes, starts, ends))))


def _in_any_order(names: list[str], dtypes: list[str], shapes: list[tuple[int, ...]], numels: list[int],
                  spelled_offsets: list[str]) -> dict[str, TensorInfo] | None:
    """The tensors in data order, for entries written in another order (or with sub-byte dtypes): the offsets
    parsed from their canonical spelling, sizes and layout checked over all entries at once."""
    joined = '"'.join(spelled_offsets)
    try:
        bits = list(map(DTYPE_BITS.__getitem__, dtypes))
        if _SPELLED_OFFSETS.fullmatch(joined) is None:
            return None
        numbers = list(map(int, _DIGITS.findall(joined)))
    except (KeyError, ValueError):  # an unknown dtype; a number past Python's digit limit
        return None
    starts, ends = numbers[0::2], numbers[1::2]
    if max(ends) >= _FAST_OFFSET_LIMIT:
        return None
    if list(map(operator.mul, numels, bits)) != \
            list(map(operator.mul, map(operator.sub, ends, starts), itertools.repeat(8))):
        return None
    laid_out = _laid_out(names, dtypes, shapes, starts, ends, {})
    return None if laid_out is None else laid_out[1]


def _laid_out(names: list[str], dtypes: list[str], shapes: list[tuple[int, ...]], starts: list[int],
              ends: list[int], metadata: dict[str, str]) -> tuple[dict[str, str], dict[str, TensorInfo]] | None:
    """Tensors in data order when they tile the data section from byte 0 without a gap or an overlap (sizes
    checked, none empty: starts are distinct); None otherwise."""
    infos = map(_new_info, zip(names, dtypes, shapes, starts, ends))
    if starts[0] == 0 and starts[1:] == ends[:-1]:  # written in data order, as the safetensors library does
        return metadata, dict(zip(names, infos))
    order = sorted(range(len(names)), key=starts.__getitem__)
    in_order = list(map(starts.__getitem__, order))
    if in_order[0] != 0 or in_order[1:] != list(map(ends.__getitem__, order[:-1])):
        return None  # a gap or an overlap: the careful path names it
    infos = list(infos)
    return metadata, dict(zip(map(names.__getitem__, order), map(infos.__getitem__, order)))


def _parse_bulk(text: str) -> tuple[dict[str, str], dict[str, TensorInfo]] | None:
    """Any other layout the careful path would accept unchanged: Python's json without hooks, then checks over all
    entries at once. None when in doubt."""
    if (("-0" in text and _NEGATIVE_ZERO.search(text))  # "-0" reads as 0 without the careful hook
            or (("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text))
            or "\\u003a" in text or "\\u003A" in text):  # an escaped colon would upset the pair count below
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    has_metadata = METADATA_KEY in obj
    metadata = obj.pop(METADATA_KEY, {})
    if type(metadata) is not dict or len(obj) > MAX_TENSORS or not obj:
        return None
    if set(map(type, metadata.values())) - {str}:
        return None
    names = list(obj)
    entries = list(obj.values())
    if set(map(type, entries)) != {dict} or set(map(len, entries)) != {3}:
        return None
    # Repeated keys: Python's json keeps the last, safetensors refuses the file. Every ':' outside a string
    # separates one pair, so the text holds exactly as many of them as the parsed objects hold pairs.
    pairs = len(names) + has_metadata + len(metadata) + 3 * len(entries)
    in_strings = "".join(names).count(":") + "".join(metadata).count(":") + "".join(metadata.values()).count(":")
    if text.count(":") - in_strings != pairs:
        return None
    try:
        dtypes = list(map(_dtype, entries))
        shapes = list(map(_shape, entries))
        offsets = list(map(_offsets, entries))
        bits = list(map(DTYPE_BITS.__getitem__, dtypes))
    except (KeyError, TypeError):
        return None
    if (set(map(type, dtypes)) != {str} or set(map(type, shapes)) != {list} or set(map(type, offsets)) != {list}
            or set(map(len, offsets)) != {2} or max(map(len, shapes)) > _MAX_DIMENSIONS):
        return None
    dims = list(itertools.chain.from_iterable(shapes))
    if (dims and (set(map(type, dims)) != {int} or min(dims) < 0)) \
            or set(map(type, itertools.chain.from_iterable(offsets))) != {int}:
        return None
    numels = list(map(math.prod, shapes))
    starts, ends = list(map(_first, offsets)), list(map(_second, offsets))
    if min(numels) == 0 or min(starts) < 0 or max(ends) >= _FAST_OFFSET_LIMIT:
        return None  # empty tensors (ties in the layout) and huge numbers: the careful path
    if list(map(operator.mul, numels, bits)) != \
            list(map(operator.mul, map(operator.sub, ends, starts), itertools.repeat(8))):
        return None
    return _laid_out(names, dtypes, list(map(tuple, shapes)), starts, ends, metadata)


def _parse_carefully(raw: memoryview, path: str | None) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Every rule, one entry at a time, with a message naming what is wrong."""
    obj = _decode_json(raw, path)
    metadata = _parse_metadata(obj.pop(METADATA_KEY, None), path)
    if len(obj) > MAX_TENSORS:
        _too_many(len(obj), path)
    entries = sorted((_parse_entry(name, e, path) for name, e in obj.items()), key=lambda t: (t.start, t.end))
    expected = 0
    previous: TensorInfo | None = None
    for info in entries:
        if info.start < expected:
            _fail(f"tensor {info.name!r} starts at byte {info.start} of the data, inside "
                  f"{previous.name!r} which ends at {expected} (overlapping offsets)", path,  # type: ignore[union-attr]
                  "the file is corrupt")
        if info.start > expected:
            after = f"after {previous.name!r} " if previous else ""
            _fail(f"tensor {info.name!r} starts at byte {info.start} of the data but the previous data {after}"
                  f"ends at {expected} (a gap of {info.start - expected} bytes)", path, "the file is corrupt")
        expected = info.end
        previous = info
    return metadata, {t.name: t for t in entries}


def _check_regular_file(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileAccessError("no such file", path=path, hint="check the path") from None
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise FileAccessError("is a folder, expected a .safetensors file", path=path,
                              hint="name a file, or use a command that takes folders")
    if not stat.S_ISREG(st.st_mode):
        raise FileAccessError("is not a regular file", path=path)
    return st


def _read_up_to(fd: int, size: int) -> bytes:
    """``size`` bytes from the file position, fewer only at the end of the file (``os.read`` may stop short)."""
    data = os.read(fd, size)
    if len(data) == size or not data:
        return data
    chunks = [data]
    missing = size - len(data)
    while missing and (chunk := os.read(fd, missing)):
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def read_header(path: str | os.PathLike[str], *, cap: int = DEFAULT_HEADER_CAP) -> SafetensorsHeader:
    """Read and validate only the header of a file: 8 + N bytes are read, never the data."""
    p = path if isinstance(path, Path) else Path(path)
    st = _check_regular_file(p)  # before opening: a FIFO or a device is named, never opened
    try:  # os-level reads on one descriptor: a buffered file object costs more than the reads themselves
        fd = os.open(p, os.O_RDONLY)
        try:
            prefix = _read_up_to(fd, SNIFF_BYTES)  # enough to say what a non-safetensors file is
            n = header_length(prefix, path=str(p), file_size=st.st_size, cap=cap)
            if len(prefix) >= 8 + n:
                raw = prefix[: 8 + n]
            else:  # one read of the whole header: no second copy of up to 100 MB
                os.lseek(fd, 0, os.SEEK_SET)
                raw = _read_up_to(fd, 8 + n)
        finally:
            os.close(fd)
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=p) from None
    return parse_header(raw, path=str(p), cap=cap, file_size=st.st_size)


# --- tensor data ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def numpy_dtype(dtype: str):
    """The numpy dtype for a safetensors dtype name (bf16 and fp8 through ml_dtypes)."""
    import numpy as np

    simple = {
        "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
        "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
        "I64": np.int64, "U64": np.uint64, "F64": np.float64, "C64": np.complex64,
    }
    if dtype in simple:
        return np.dtype(simple[dtype]).newbyteorder("<")
    import ml_dtypes

    extra = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
             "F8_E8M0": getattr(ml_dtypes, "float8_e8m0fnu", None)}
    if extra.get(dtype) is None:
        raise InvalidSafetensorsError(f"dtype {dtype} cannot be read as a numpy array",
                                      hint="convert the file to F16/BF16/F32")
    return np.dtype(extra[dtype])


def safetensors_dtype(array_dtype) -> str:
    """The safetensors dtype name of a numpy dtype."""
    import numpy as np

    dt = np.dtype(array_dtype)
    for name in ("BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "I64", "U64", "F64", "C64",
                 "BF16", "F8_E4M3", "F8_E5M2"):
        if numpy_dtype(name) == dt:
            return name
    raise InvalidSafetensorsError(f"numpy dtype {dt} has no safetensors equivalent")


def memmap_tensors(path: str | os.PathLike[str], header: SafetensorsHeader) -> Iterator[tuple[TensorInfo, Any]]:
    """Yield (info, read-only array) for every tensor, backed by one memory map of the file."""
    import numpy as np

    if header.data_size == 0:
        for info in header.tensors.values():
            yield info, np.zeros(info.shape, dtype=numpy_dtype(info.dtype))
        return
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=header.data_offset, shape=(header.data_size,))
    for info in header.tensors.values():
        raw = data[info.start : info.end]
        yield info, raw.view(numpy_dtype(info.dtype)).reshape(info.shape)


def load_tensors(path: str | os.PathLike[str], header: SafetensorsHeader | None = None,
                 names: list[str] | None = None) -> dict[str, Any]:
    """Read tensors into memory (copies) as numpy arrays."""
    header = header or read_header(path)
    wanted = set(names) if names is not None else None
    return {info.name: arr.copy() for info, arr in memmap_tensors(path, header)
            if wanted is None or info.name in wanted}


# --- writing ---------------------------------------------------------------------------------


def encode_header(entries: dict[str, Any], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and padded JSON header for tensor ``entries`` (name -> dtype/shape/data_offsets)."""
    obj: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise InvalidSafetensorsError(f"metadata keys and values must be strings: {bad[:3]}")
        obj[METADATA_KEY] = dict(sorted(metadata.items()))
    obj.update(entries)
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad like safetensors so the data section is 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays as a new safetensors file, atomically.

    Tensors are laid out like the safetensors library does: larger dtypes first, then by name.
    """
    import numpy as np

    arrays = {name: np.asarray(a, order="C") for name, a in tensors.items()}  # keeps 0-d shapes
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        a = arrays[name]
        entries[name] = {"dtype": safetensors_dtype(a.dtype), "shape": list(a.shape),
                         "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    with atomic_write(path) as f:
        f.write(encode_header(entries, metadata))
        for name in order:
            a = arrays[name]
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            f.write(a.reshape(-1).view(np.uint8).data if a.nbytes else b"")


def rewrite_metadata(path: str | os.PathLike[str], metadata: Mapping[str, str], *,
                     out: str | os.PathLike[str] | None = None, expect: FileSnapshot | None = None,
                     tensor_sha256: str | None = None, break_hardlinks: bool = False) -> SafetensorsHeader:
    """Replace a file's ``__metadata__``, keeping every tensor byte identical.

    The header and the data come from one open of the source; the data section is streamed, never
    loaded. Writes ``out`` (default: in place, through a symlink to the real file) atomically and returns
    the new header. Before the rename: ``expect`` (the source's snapshot taken under ``edit_lock``) must
    still describe the source (compare-and-swap), and the copied data must hash to ``tensor_sha256`` when
    given; otherwise ConcurrentEditError and nothing is written.
    """
    src = Path(path)
    target = Path(out) if out is not None else src
    _check_regular_file(src)
    try:
        f_in = src.open("rb")
    except OSError as exc:
        raise FileAccessError(f"cannot read: {exc.strerror}", path=src) from None
    with f_in:
        size = os.fstat(f_in.fileno()).st_size
        prefix = f_in.read(9)
        n = header_length(prefix, path=str(src), file_size=size)
        header = parse_header(prefix + f_in.read(n - 1), path=str(src), file_size=size)
        entries = {
            name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.start, t.end]}
            for name, t in header.tensors.items()
        }
        encoded = encode_header(entries, metadata)
        import hashlib  # only rewrites hash; header reads never load it

        digest = hashlib.sha256()

        def unchanged() -> None:
            if expect is not None:
                check_unchanged(src, expect)
            if tensor_sha256 is not None and digest.hexdigest() != tensor_sha256:
                raise ConcurrentEditError("the tensor data changed while it was copied (another program writes "
                                          "to the file); nothing was written", path=src, hint="run the command again")

        with atomic_write(target, precondition=unchanged, break_hardlinks=break_hardlinks) as f_out:
            f_out.write(encoded)
            f_in.seek(header.data_offset)
            remaining = header.data_size
            while remaining:
                chunk = f_in.read(min(_CHUNK, remaining))
                if not chunk:
                    raise TruncatedFileError("file shrank while it was being rewritten", path=src)
                digest.update(chunk)
                f_out.write(chunk)
                remaining -= len(chunk)
    return parse_header(encoded, path=str(target), file_size=len(encoded) + header.data_size)
