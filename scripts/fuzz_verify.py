#!/usr/bin/env python
"""Fuzz ``verify``: structured header mutations and byte flips/truncations of real adapters.

    python scripts/fuzz_verify.py --cases 100000 [--seed S] [--jobs 2] [--out DIR] [--timeout 20]

Seeds: every ``tests/golden/*.safetensors`` (files written by diffusers, peft, lycoris-lora, kohya layouts) and the
demo adapters (``loraregistry.demo.build_adapter``: every key format and network type at real SD1.5/SDXL shapes).
Case ``i`` of seed ``S`` is reproducible on its own: it draws from ``random.Random(f"{S}:{i}")``. Each case applies
one to three mutations to one seed file, then runs ``AdapterFile.open``, ``verify`` (tensor scan included),
``verify(..., tensors=False, base="sdxl-base")`` and, when the header parses, ``verify_header``; reports must
serialize to JSON and the file must be left unchanged. Outcomes:

* ``clean`` / ``findings``: a report (its error codes are counted) - fine;
* ``lorareg-error``: a ``LoraregError`` (a usage or I/O problem, never expected from a bad file) - counted apart;
* ``crash``: any other exception; ``hang``: a case over ``--timeout`` seconds. Each is written to
  ``OUT/<kind>-<seed>-<case>.safetensors`` with a ``.txt`` (mutations, traceback) to reproduce it.

Prints counts by outcome, mutation and code, the cases/s and the peak RSS; exits 1 when anything crashed or hung.
``tests/test_verify_fuzz.py`` runs a few thousand cases of the same engine in the normal suite.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzz_common, beside this file however it is loaded
from fuzz_common import CaseTimeout, parse_args, time_limit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

# --- seeds -----------------------------------------------------------------------------------------

Pairs = list[tuple[str, object]]  # a header as ordered (key, value) pairs: duplicates and any order allowed


@dataclass(frozen=True)
class Seed:
    name: str
    raw: bytes
    pairs: tuple  # the header's (key, value) pairs, values as parsed JSON
    data: bytes  # everything after the header

    @classmethod
    def from_bytes(cls, name: str, raw: bytes) -> Seed:
        (n,) = struct.unpack("<Q", raw[:8])
        pairs = json.loads(raw[8 : 8 + n], object_pairs_hook=lambda p: p)  # nested objects stay pair lists
        return cls(name, raw, tuple((k, _objects(v)) for k, v in pairs), raw[8 + n :])


def _objects(value):
    """Nested pair lists back to dicts (only the top level keeps pairs)."""
    if isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value) and value:
        return {k: _objects(v) for k, v in value}
    if isinstance(value, list):
        return [_objects(v) for v in value]
    return value


def golden_seeds() -> list[Seed]:
    return [Seed.from_bytes(p.stem, p.read_bytes()) for p in sorted((ROOT / "tests" / "golden").glob("*.safetensors"))]


def demo_seeds(folder: Path) -> list[Seed]:
    from loraregistry.demo import DEMO_ADAPTERS, build_adapter

    return [Seed.from_bytes(spec.file.removesuffix(".safetensors"), build_adapter(spec, folder).read_bytes())
            for spec in DEMO_ADAPTERS]


def all_seeds(folder: Path) -> list[Seed]:
    return golden_seeds() + demo_seeds(folder)


# --- encoding ----------------------------------------------------------------------------------------


def encode(pairs: Pairs, data: bytes, *, pad: bool = True) -> bytes:
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    raw = text.encode("utf-8", "surrogatepass")
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _tensors(pairs: Pairs) -> list[int]:
    """Indices of the pairs that look like tensor entries."""
    return [i for i, (k, v) in enumerate(pairs) if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]


def _span(entry: dict) -> tuple[int, int] | None:
    offsets = entry.get("data_offsets")
    if (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return offsets[0], offsets[1]
    return None


def relayout(pairs: Pairs, data: bytes, blobs: dict[int, bytes] | None = None) -> tuple[Pairs, bytes]:
    """Lay tensors out again back to back (so that the container stays valid after an entry changed size),
    taking each tensor's bytes from ``blobs`` or from its old span."""
    blobs = blobs or {}
    out, chunks, offset = [], [], 0
    for i, (k, v) in enumerate(pairs):
        if i in set(_tensors(pairs)):
            span = _span(v)
            blob = blobs.get(i, data[span[0] : span[1]] if span else b"")
            v = {**v, "data_offsets": [offset, offset + len(blob)]}
            chunks.append(blob)
            offset += len(blob)
        out.append((k, v))
    return out, b"".join(chunks)


# --- mutations -----------------------------------------------------------------------------------------

DTYPES = ["F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I8", "U8", "I16", "U16", "I32", "U32",
          "I64", "U64", "BOOL", "C64", "F4", "F6_E2M3", "E8M0"]
ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1,
            "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "C64": 8}
SAME_SIZE = {2: ["F16", "BF16", "I16", "U16"], 4: ["F32", "I32", "U32"], 8: ["F64", "I64", "U64", "C64"],
             1: ["F8_E4M3", "F8_E5M2", "F8_E8M0", "I8", "U8", "BOOL"]}
JUNK_VALUES = [None, True, 0, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, 2**64, -(2**63), "\u0000", "\ud800", "é" * 3]
PREFIXES = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_", "unet.", "text_encoder.",
            "text_encoder_2.", "transformer.", "base_model.model.", "", "lycoris_", "model.diffusion_model."]
SUFFIXES = [".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight", ".lora_mid.weight",
            ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".lokr_w1", ".lokr_w2", ".lokr_w2_a",
            ".lokr_w2_b", ".lokr_t2", ".dora_scale", ".diff", ".diff_b", ".lora.down.weight", ".lora.up.weight",
            ".lora_linear_layer.up.weight", ".lora_magnitude_vector", ".weight", ".bias", ""]
METADATA_KEYS = ["lorareg", "modelspec.architecture", "modelspec.prediction_type", "modelspec.resolution",
                 "modelspec.hash_sha256", "modelspec.trigger_phrase", "modelspec.license", "ss_network_dim",
                 "ss_network_alpha", "ss_network_module", "ss_network_args", "ss_base_model_version", "ss_v2",
                 "ss_tag_frequency", "ss_resolution", "sshs_model_hash", "lora_adapter_metadata", "format"]
METADATA_VALUES = ["", "nan", "NaN", "inf", "-inf", "-1", "0", "1e309", "4", "2.5", "abc", "None", "True", "{", "[]",
                   "{}", "null", "sd1", "sdxl-base", "stable-diffusion-xl-v1-base/lora", "stable-diffusion-v2-768-v/lora",
                   "sd_v1", "sdxl_base_v1-0", "v_prediction", "768x768", "0x" + "ab" * 32, "ab" * 32,
                   '{"schema_version": "1"}', '{"schema_version": "1", "network": {"alpha": "NaN", "rank": -3}}',
                   '{"schema_version": "9", "bogus": 1}', '{"unet.lora_alpha": "x", "unet.r": 4}',
                   '{"a": {"b": 1}}', "[" * 5000 + "]" * 5000, "x" * 70_000, '{"networks.lora": "\\ud800"}']


def _pick_tensor(rng: random.Random, pairs: Pairs) -> int | None:
    tensors = _tensors(pairs)
    return rng.choice(tensors) if tensors else None


def _entry(pairs: Pairs, i: int) -> dict:
    return copy.deepcopy(pairs[i][1])


def m_dtype(rng, pairs, data):
    i = _pick_tensor(rng, pairs)
    if i is not None:
        pairs[i] = (pairs[i][0], {**_entry(pairs, i), "dtype": rng.choice(DTYPES + JUNK_VALUES[:8])})
    return pairs, data


def m_retype_same_size(rng, pairs, data):
    """A dtype of the same item size: the container stays valid, the values are read differently."""
    i = _pick_tensor(rng, pairs)
    if i is not None:
        entry = _entry(pairs, i)
        size = ITEMSIZE.get(entry.get("dtype"), 2)
        pairs[i] = (pairs[i][0], {**entry, "dtype": rng.choice(SAME_SIZE[size])})
    return pairs, data


def m_shape(rng, pairs, data):
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    entry = _entry(pairs, i)
    shape = entry.get("shape") if isinstance(entry.get("shape"), list) else [1]
    numel = math.prod(s for s in shape if isinstance(s, int)) or 1
    choices = [[], [0], [-1, 2], [2**63], [2**64 + 1], [1.5], ["2"], shape + [1], shape[::-1], shape[:-1], [numel],
               [2**31, 2**31], [s * 2 for s in shape if isinstance(s, int)], None, {}, [1] * 40, [numel, 0],
               [0, 2**62], [rng.randrange(1 << 20)]]
    entry["shape"] = rng.choice(choices)
    pairs[i] = (pairs[i][0], entry)
    return pairs, data


def m_reshape_consistent(rng, pairs, data):
    """Another factorization of the same element count: integrity holds, the compatibility checks are hit."""
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    entry = _entry(pairs, i)
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        return pairs, data
    numel = math.prod(shape)
    divisors = [d for d in range(1, min(numel, 4096) + 1) if numel % d == 0] or [1]
    d = rng.choice(divisors)
    options = [shape[::-1], [numel], [d, numel // d], [numel // d, d, 1, 1], [1, *shape], [*shape, 1, 1], []]
    new = rng.choice(options)
    entry["shape"] = new if math.prod(new) == numel else shape
    pairs[i] = (pairs[i][0], entry)
    return pairs, data


def m_offsets(rng, pairs, data):
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    entry = _entry(pairs, i)
    s, e = _span(entry) or (0, 0)
    other = _entry(pairs, rng.choice(_tensors(pairs)))
    entry["data_offsets"] = rng.choice([[s, e + 1], [s - 1, e], [e, s], [s, s], [0, e], [s, 2**62], [-1, e], [s],
                                        [s, e, 0], "x", [float(s), float(e)], other.get("data_offsets"),
                                        [s + 1, e + 1], [s, e + len(data)], [2**64, 2**64 + 2], None])
    pairs[i] = (pairs[i][0], entry)
    return pairs, data


def m_entry_structure(rng, pairs, data):
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    entry = _entry(pairs, i)
    action = rng.randrange(4)
    if action == 0 and entry:
        entry.pop(rng.choice(list(entry)))
    elif action == 1:
        entry[rng.choice(["extra", "dtype ", "Shape", "__metadata__"])] = rng.choice(JUNK_VALUES)
    pairs[i] = (pairs[i][0], entry if action < 2 else rng.choice(JUNK_VALUES))
    return pairs, data


def m_metadata(rng, pairs, data):
    index = next((i for i, (k, _) in enumerate(pairs) if k == "__metadata__"), None)
    meta = copy.deepcopy(pairs[index][1]) if index is not None else {}
    action = rng.randrange(10)
    if action == 0:
        new: object = rng.choice(JUNK_VALUES)  # __metadata__ itself not an object of strings
    else:
        new = meta if isinstance(meta, dict) else {}
        key = rng.choice(METADATA_KEYS + (list(new) if new else []))
        if action == 1:
            new[key] = rng.choice(JUNK_VALUES)
        elif action == 2:
            new.pop(key, None)
        elif action == 3 and key in new and isinstance(new[key], str) and new[key]:
            text = new[key]  # corrupt one character of an existing value (often JSON)
            at = rng.randrange(len(text))
            new[key] = text[:at] + rng.choice('{}[]",:\\x\u0000é') + text[at + 1 :]
        else:
            new[key] = rng.choice(METADATA_VALUES)
    if index is None:
        pairs.insert(0, ("__metadata__", new))
    else:
        pairs[index] = ("__metadata__", new)
    return pairs, data


def m_key_name(rng, pairs, data):
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    key, entry = pairs[i]
    action = rng.randrange(7)
    if action == 0:  # another prefix
        rest = key.split(".", 1)[-1] if "." in key and not key.startswith("lora_") else key.split("_", 2)[-1]
        key = rng.choice(PREFIXES) + rest
    elif action == 1:  # another role suffix
        stem = key.split(".", 1)[0] if key.startswith(("lora_", "lycoris_")) else key.rsplit(".", 2)[0]
        key = stem + rng.choice(SUFFIXES)
    elif action == 2:  # a duplicate of another key
        key = pairs[rng.choice(_tensors(pairs))][0]
    elif action == 3:
        key = rng.choice(["", ".", "..", "__metadata__", "\u0000", "é" * 10, "a" * 5000, "lora_unet_", ".alpha"])
    elif action == 4 and key:
        at = rng.randrange(len(key))
        key = key[:at] + rng.choice("._0123456789xé\u0000") + key[at + 1 :]
    elif action == 5:
        key = key.replace("down_blocks_0", "down_blocks_9").replace("down_blocks.0", "down_blocks.9")
        key = key.replace("attn1", "attn3").replace("layers_0", "layers_99").replace("layers.0", "layers.99")
    else:
        key = key.upper()
    pairs[i] = (key, entry)
    return pairs, data


def _blob(pairs, data, i) -> bytes:
    span = _span(pairs[i][1])
    return data[span[0] : span[1]] if span and span[1] <= len(data) else b""


SPECIAL_BITS = {2: [0x7E00, 0xFC00, 0x7C00, 0x7BFF, 0x0001, 0x8000, 0x0000, 0x7F80, 0xFF80],
                4: [0x7FC00000, 0xFF800000, 0x7F800000, 0x7F7FFFFF, 0x00000001, 0x80000000, 0x0],
                8: [0x7FF8000000000000, 0xFFF0000000000000, 0x7FEFFFFFFFFFFFFF, 0x1, 0x0], 1: [0x7F, 0xFF, 0x80, 0x0]}


def m_values(rng, pairs, data):
    """NaN / Inf / max / subnormal / zero values in one tensor (the layout stays valid)."""
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    span = _span(pairs[i][1])
    if not span or span[1] > len(data) or span[0] == span[1]:
        return pairs, data
    size = ITEMSIZE.get(pairs[i][1].get("dtype"), 2)
    blob = bytearray(data[span[0] : span[1]])
    count = len(blob) // size
    if count == 0:
        return pairs, data
    pattern = rng.choice(SPECIAL_BITS[size])
    if rng.random() < 0.3:  # the whole tensor
        blob[: count * size] = pattern.to_bytes(size, "little") * count
    else:
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(count) * size
            blob[at : at + size] = pattern.to_bytes(size, "little")
    return pairs, data[: span[0]] + bytes(blob) + data[span[1] :]


def m_alpha(rng, pairs, data):
    """An alpha scalar: NaN, Inf, zero, negative, huge; or re-typed (I64/U8/BOOL) or no longer a scalar."""
    alphas = [i for i in _tensors(pairs) if pairs[i][0].endswith(".alpha")]
    if not alphas:
        return m_values(rng, pairs, data)
    i = rng.choice(alphas)
    entry = _entry(pairs, i)
    value = rng.choice([math.nan, math.inf, -math.inf, 0.0, -4.0, 1e30, 65504.0, 1e-8, 3.0])
    dtype = rng.choice(["F16", "F32", "F64", "BF16", "I64", "U8", "BOOL", "F8_E4M3"])
    packed = {"F16": lambda v: struct.pack("<e", v) if abs(v) < 65520 or not math.isfinite(v) else b"\x00\x7c",
              "F32": lambda v: struct.pack("<f", v) if abs(v) < 3e38 or not math.isfinite(v) else b"\x00\x00\x80\x7f",
              "F64": lambda v: struct.pack("<d", v), "BF16": lambda v: struct.pack("<f", v)[2:],
              "I64": lambda v: struct.pack("<q", int(max(-(2**62), min(v, 2**62))) if math.isfinite(v) else -1),
              "U8": lambda v: bytes([int(abs(v)) % 256 if math.isfinite(v) else 255]),
              "BOOL": lambda v: bytes([2 if v else 0]), "F8_E4M3": lambda v: bytes([0x7F if v != v else 0x38])}[dtype]
    blob = packed(value)
    shape = rng.choice([[], [], [1], [2], [1, 1]])
    if shape == [2]:
        blob *= 2
    entry.update(dtype=dtype, shape=shape)
    pairs[i] = (pairs[i][0], entry)
    return relayout(pairs, data, {i: blob})


def m_drop_tensor(rng, pairs, data):
    i = _pick_tensor(rng, pairs)
    if i is None:
        return pairs, data
    blobs = {j: _blob(pairs, data, j) for j in _tensors(pairs) if j != i}
    pairs = [p for j, p in enumerate(pairs) if j != i]
    new_index = {j: (j if j < i else j - 1) for j in blobs}
    return relayout(pairs, data, {new_index[j]: b for j, b in blobs.items()})


def m_add_tensor(rng, pairs, data):
    """A new, valid entry: a random real-looking key with a random shape (or a copy of an existing one)."""
    template = pairs[_pick_tensor(rng, pairs)][0] if _tensors(pairs) else "lora_unet_x.lora_down.weight"
    stem = template.split(".", 1)[0] if template.startswith("lora_") else template.rsplit(".", 2)[0]
    key = rng.choice([stem, stem.replace("to_q", "to_k"), "bundle_emb.sks.string_to_param.*",
                      rng.choice(PREFIXES) + "mid_block_attentions_0_proj_out"]) + rng.choice(SUFFIXES)
    shape = rng.choice([[4, 320], [320, 4], [4, 320, 3, 3], [768, 4], [], [1], [4, 768], [2, 2048], [2048, 2]])
    dtype = rng.choice(["F16", "F32", "BF16", "I8"])
    blob = bytes(rng.getrandbits(8) for _ in range(min(64, math.prod(shape) * ITEMSIZE[dtype])))
    blob = (blob * (math.prod(shape) * ITEMSIZE[dtype] // max(len(blob), 1) + 1))[: math.prod(shape) * ITEMSIZE[dtype]]
    blobs = {j: _blob(pairs, data, j) for j in _tensors(pairs)}
    pairs.append((key, {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]}))
    blobs[len(pairs) - 1] = blob
    return relayout(pairs, data, blobs)


STRUCTURED: dict[str, Callable] = {
    "dtype": m_dtype, "retype": m_retype_same_size, "shape": m_shape, "reshape": m_reshape_consistent,
    "offsets": m_offsets, "entry": m_entry_structure, "metadata": m_metadata, "key": m_key_name,
    "values": m_values, "alpha": m_alpha, "drop": m_drop_tensor, "add": m_add_tensor,
}


def b_flip(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(8, min(len(out), 8 + n)) if rng.random() < 0.7 and n and len(out) > 8 else rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def b_truncate(rng: random.Random, raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[: rng.choice([0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(raw) - 1,
                             rng.randrange(len(raw))])]


def b_extend(rng: random.Random, raw: bytes) -> bytes:
    return raw + rng.choice([b"\x00", b"\x00" * 8, b"junk", bytes(rng.getrandbits(8) for _ in range(64))])


def b_length(rng: random.Random, raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    value = rng.choice([0, 1, 2, n - 1, n + 1, n + 8, len(raw), len(raw) - 8, 2**63, 2**64 - 1, 100_000_001,
                        rng.getrandbits(32)])
    return struct.pack("<Q", value) + raw[8:]


def b_splice(rng: random.Random, raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    if n < 4 or len(raw) < 8 + n:
        return raw
    at = rng.randrange(8, 8 + n)
    width = rng.randint(1, 16)
    if rng.random() < 0.5:
        return raw[:at] + raw[at + width :]
    return raw[:at] + bytes(rng.choice(b' {}[]":,\\0aZ\x00\xff') for _ in range(width)) + raw[at:]


def b_header_char(rng: random.Random, raw: bytes) -> bytes:
    """One JSON-significant character replaced inside the header text (the length stays right)."""
    (n,) = struct.unpack("<Q", raw[:8])
    if n < 2 or len(raw) < 8 + n:
        return raw
    at = rng.randrange(8, 8 + n)
    return raw[:at] + bytes([rng.choice(b'{}[]",:\\ 0e-\x00\x80')]) + raw[at + 1 :]


BYTES: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": b_flip, "truncate": b_truncate, "extend": b_extend, "length": b_length, "splice": b_splice,
    "char": b_header_char,
}


def mutate(rng: random.Random, seed: Seed) -> tuple[bytes, list[str]]:
    """One to three mutations of one seed: structured (re-encoded header) and/or bytes."""
    applied: list[str] = []
    pairs, data = [(k, copy.deepcopy(v)) for k, v in seed.pairs], seed.data
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name = rng.choice(list(STRUCTURED))
        pairs, data = STRUCTURED[name](rng, pairs, data)
        applied.append(name)
    raw = encode(pairs, data, pad=rng.random() < 0.9)
    if rng.random() < 0.35:
        name = rng.choice(list(BYTES))
        raw = BYTES[name](rng, raw)
        applied.append("bytes:" + name)
    return raw, applied


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


# --- running a case ------------------------------------------------------------------------------------




@dataclass
class Outcome:
    kind: str  # clean / findings / lorareg-error / crash / hang
    codes: tuple[str, ...] = ()
    detail: str = ""
    seconds: float = 0.0


def run_case(raw: bytes, path: Path, timeout: float = 20.0) -> Outcome:
    """Write ``raw`` to ``path`` and put it through every verify entry point."""
    from loraregistry.adapter import AdapterFile
    from loraregistry.errors import LoraregError
    from loraregistry.safetensors_io import read_header
    from loraregistry.verify import verify, verify_header

    path.write_bytes(raw)
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            with contextlib.suppress(LoraregError):
                AdapterFile.open(path)
            report = verify(path)
            header_only = verify(path, tensors=False, base="sdxl-base")
            try:
                header = read_header(path)
            except LoraregError:
                header = None
            remote = verify_header(header, source="fuzz", file_size=len(raw)) if header is not None else None
            for r in (report, header_only, remote):
                if r is not None:
                    json.dumps(r.to_dict())
                    r.exit_code(strict=True)
    except LoraregError as exc:
        return Outcome("lorareg-error", (type(exc).__name__,), exc.one_line()[:300], time.perf_counter() - start)
    except CaseTimeout as exc:
        return Outcome("hang", (), str(exc), time.perf_counter() - start)
    except Exception:  # noqa: BLE001 - the point: any other exception is a crash
        return Outcome("crash", (), traceback.format_exc(), time.perf_counter() - start)
    if path.read_bytes() != raw:
        return Outcome("crash", (), "verify modified the file", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    errors = tuple(sorted({f.code for f in report.findings if f.severity == "error"}))
    return Outcome("findings" if errors else "clean", errors or tuple(report.codes()), "", seconds)


@dataclass
class Tally:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    mutations: Counter = field(default_factory=Counter)
    failures: list[tuple[str, int, str, list[str], str]] = field(default_factory=list)  # kind, case, seed, muts, detail
    slowest: float = 0.0

    def add(self, index: int, seed: Seed, applied: list[str], outcome: Outcome, raw: bytes, out: Path | None) -> None:
        self.cases += 1
        self.outcomes[outcome.kind] += 1
        self.codes.update(outcome.codes)
        self.mutations.update(applied)
        self.slowest = max(self.slowest, outcome.seconds)
        if outcome.kind in ("crash", "hang", "mutator-bug"):
            self.failures.append((outcome.kind, index, seed.name, applied, outcome.detail))
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                stem = out / f"{outcome.kind}-{seed.name}-{index}"
                stem.with_suffix(".safetensors").write_bytes(raw)
                stem.with_suffix(".txt").write_text(f"seed file: {seed.name}\ncase: {index}\nmutations: {applied}\n\n"
                                                    f"{outcome.detail}\n")

    def merge(self, other: Tally) -> None:
        self.cases += other.cases
        self.outcomes += other.outcomes
        self.codes += other.codes
        self.mutations += other.mutations
        self.failures += other.failures
        self.slowest = max(self.slowest, other.slowest)


def fuzz(seeds: list[Seed], indices: Iterator[int] | range, *, seed: int, scratch: Path, out: Path | None = None,
         timeout: float = 20.0, progress: int = 0) -> Tally:
    """Run the cases ``indices`` (case i mutates seed file i % len(seeds)); every ``progress`` cases, a line on
    stderr."""
    tally = Tally()
    path = scratch / f"case-{os.getpid()}.safetensors"
    for index in indices:
        if progress and tally.cases and tally.cases % progress == 0:
            print(f"[{os.getpid()}] {tally.cases} cases: {dict(tally.outcomes)}", file=sys.stderr, flush=True)
        rng = case_rng(seed, index)
        base = seeds[index % len(seeds)]
        try:
            raw, applied = mutate(rng, base)
        except Exception:  # noqa: BLE001 - a bug of this script, not of verify: report it and go on
            tally.add(index, base, [], Outcome("mutator-bug", (), traceback.format_exc()), base.raw, None)
            continue
        tally.add(index, base, applied, run_case(raw, path, timeout), raw, out)
    return tally


def _worker(args) -> Tally:
    seeds, indices, seed, scratch, out, timeout = args
    return fuzz(seeds, indices, seed=seed, scratch=Path(scratch), out=Path(out), timeout=timeout, progress=5000)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], "fuzz-failures")
    import resource

    os.environ.setdefault("NO_COLOR", "1")
    with tempfile.TemporaryDirectory(prefix="lorareg-fuzz-") as scratch:
        seeds = all_seeds(Path(scratch))
        start = time.perf_counter()
        if args.jobs > 1:
            import multiprocessing

            parts = [(seeds, range(j, args.cases, args.jobs), args.seed, scratch, str(args.out), args.timeout)
                     for j in range(args.jobs)]
            with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
                tallies = pool.map(_worker, parts)
            tally = Tally()
            for t in tallies:
                tally.merge(t)
        else:
            tally = fuzz(seeds, range(args.cases), seed=args.seed, scratch=Path(scratch), out=args.out,
                         timeout=args.timeout, progress=5000)
        elapsed = time.perf_counter() - start
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(f"{tally.cases} cases over {len(seeds)} seed files (seed {args.seed}) in {elapsed:.0f} s "
          f"({tally.cases / elapsed:.0f} cases/s, {args.jobs} job(s)); slowest case {tally.slowest:.2f} s; "
          f"peak RSS {peak_mb:.0f} MB")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in tally.outcomes.most_common()))
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.mutations.items())))
    print("codes (error codes of failing reports; all codes of clean ones):")
    for code, count in sorted(tally.codes.items()):
        print(f"  {code:24s} {count}")
    for kind, index, name, applied, detail in tally.failures[:20]:
        print(f"\n{kind.upper()} case {index} (seed file {name}, mutations {applied}); reproducer in {args.out}/\n"
              f"{detail}")
    return 1 if tally.outcomes["crash"] or tally.outcomes["hang"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
