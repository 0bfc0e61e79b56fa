"""Metadata validation without pydantic, for the values that need none.

Building the pydantic models of ``schema`` costs more than a header-level ``verify`` of a file does in all; a clean
file has nothing for them to judge. So the readers of foreign metadata and ``import_light`` first ask this module,
which vouches only for values it knows the pydantic models accept unchanged, and answers "unsure" (None / False)
for everything else: a value that does not parse, an unusual spelling, a type it does not expect. Unsure means the
caller runs the pydantic model, so every warning and every refusal still comes from one place, word for word.

The rule for everything here: when in doubt, say unsure. A wrong "valid" would change a verdict; a wrong "unsure"
only costs time. tests/test_speed_light_schema.py checks each kind against the pydantic models, value by value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from ..architectures.ids import ARCHITECTURES
from ..canonical import COMPONENTS, NETWORK_TYPES
from ._foreign import NULL_STRINGS, parse_json, parse_resolution, parse_sha256, parse_timestamp, single_learning_rate


class _Unsure(Exception):
    """This value is for the pydantic model to judge."""


_INT = re.compile(r"0|[1-9][0-9]{0,17}")  # what every int parser reads alike; no sign, no spaces, no "1_000"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?(?:[eE][-+]?[0-9]{1,3})?")  # a JSON number
_BLANKS = " \t\r\n"  # the whitespace Python's strip and pydantic's trim both remove


def _text(value: Any) -> str:
    """A str as pydantic's ``str_strip_whitespace`` leaves it: only plain blanks around it (Python's strip removes
    more characters than Rust's trim), and encodable (no lone surrogates, which pydantic refuses)."""
    if type(value) is not str:
        raise _Unsure
    text = value.strip(_BLANKS)
    if text != value.strip():
        raise _Unsure
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Unsure from None
    return text


def _int(value: Any, minimum: int) -> int:
    if type(value) is int:
        number = value
    elif type(value) is str and _INT.fullmatch(value):
        number = int(value)
    else:
        raise _Unsure
    if number < minimum:
        raise _Unsure
    return number


def _float(value: Any, *, positive: bool) -> float:
    if type(value) in (int, float):
        number = float(value)
    elif type(value) is str and _NUMBER.fullmatch(value):
        number = float(value)
    else:
        raise _Unsure
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise _Unsure
    return number


def _str(value: Any) -> str:
    text = _text(value)
    if not 1 <= len(text) <= 20_000:
        raise _Unsure
    return text


def _bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    raise _Unsure


def _parsed(parse: Callable[[Any], Any], value: Any, expected: type) -> Any:
    """A value through the pydantic model's own BeforeValidator (Python, so it gives the same result here)."""
    try:
        result = parse(value)
    except ValueError:
        raise _Unsure from None
    if not isinstance(result, expected):
        raise _Unsure
    return result


def _list(value: Any) -> list[str]:
    if type(value) is not str:
        raise _Unsure
    items = [_text(part) for part in value.split(",")]
    return list(dict.fromkeys(item for item in items if item))


def _resolution(value: Any) -> tuple[int, int]:
    if type(value) is not str:
        raise _Unsure
    return _parsed(parse_resolution, value, tuple)


def _timestamp(value: Any) -> datetime:
    if type(value) is not str:
        raise _Unsure
    return _parsed(parse_timestamp, value, datetime)


def _sha256(value: Any) -> str:
    if type(value) is not str:
        raise _Unsure
    return _parsed(parse_sha256, value, str)


def _learning_rate(value: Any) -> float:
    if type(value) is not str:
        raise _Unsure
    rate = _parsed(single_learning_rate, value, (str, int, float))
    return _float(rate, positive=False)


def _json_object(value: Any) -> dict[str, Any]:
    if type(value) is not str:
        raise _Unsure
    return _parsed(parse_json, value, dict)


def _dataset_dirs(value: Any) -> dict[str, SimpleNamespace]:
    dirs = _json_object(value)
    out = {}
    for name, entry in dirs.items():
        if type(entry) is not dict or type(entry.get("img_count")) is not int or entry["img_count"] < 0:
            raise _Unsure
        out[name] = SimpleNamespace(img_count=entry["img_count"])
    return out


def _prediction_type(value: Any) -> str:
    if value not in ("epsilon", "v", "flow"):
        raise _Unsure
    return value


# Light kind -> parser. kohya.FIELDS and modelspec.FIELDS name one per field of their pydantic model.
KINDS: dict[str, Callable[[Any], Any]] = {
    "str": _str,
    "bool": _bool,
    "positive_int": lambda value: _int(value, 1),
    "seed": lambda value: _int(value, 0),
    "positive_float": lambda value: _float(value, positive=True),
    "non_negative_float": lambda value: _float(value, positive=False),
    "learning_rate": _learning_rate,
    "list": _list,
    "resolution": _resolution,
    "timestamp": _timestamp,
    "sha256": _sha256,
    "json_object": _json_object,
    "dataset_dirs": _dataset_dirs,
    "prediction_type": _prediction_type,
}


def light_record(fields: Mapping[str, str], raw: Mapping[str, Any]) -> SimpleNamespace | None:
    """``raw`` read as the tolerant pydantic model with these ``fields`` (name -> light kind) would read it, when
    that model would accept every value unchanged and warn about none; None when unsure. Keys that are no field
    are ignored, as the models ignore them; "not set" spellings (``NULL_STRINGS``) read as None, as there."""
    values: dict[str, Any] = dict.fromkeys(fields)
    for name, value in raw.items():
        kind = fields.get(name)
        if kind is None or value is None or (isinstance(value, str) and value.strip().lower() in NULL_STRINGS):
            continue
        try:
            values[name] = KINDS[kind](value)
        except _Unsure:
            return None
    return SimpleNamespace(**values)


# --- the merged record (AdapterMetadata) ------------------------------------------------------------------


def _short_text(value: Any, limit: int = 500) -> bool:
    if type(value) is not str or not 1 <= len(value) <= limit:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _listed(item_ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A list of distinct items, each accepted by ``item_ok``."""
    return lambda value: (type(value) is list and all(map(item_ok, value))
                          and len(set(value)) == len(value))


def _whole(limit: int, *, no_comma: bool = False) -> Callable[[Any], bool]:
    """Text already stripped (``_strip_checked``), optionally without commas or line breaks (the Tag pattern)."""
    def ok(value: Any) -> bool:
        return (_short_text(value, limit) and value == value.strip()
                and not (no_comma and ("," in value or "\n" in value)))
    return ok


def _integer(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and value >= low and (high is None or value <= high)


def _real(*, low: float = 0.0, high: float | None = None, open_low: bool = False) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        if type(value) not in (int, float) or not math.isfinite(value):
            return False
        return (value > low if open_low else value >= low) and (high is None or value <= high)
    return ok


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda value: type(value) is str and value in allowed


def _sha(value: Any) -> bool:
    return type(value) is str and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _size_pair(value: Any) -> bool:
    return type(value) in (tuple, list) and len(value) == 2 and all(map(_integer(1, 65_536), value))


def _aware(value: Any) -> bool:
    return type(value) is datetime and value.utcoffset() is not None


def _model_id(value: Any) -> bool:  # an ASCII subset of the schema's pattern (its \w is Unicode)
    return (type(value) is str and len(value) <= 200
            and re.fullmatch(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*", value) is not None)


def _pattern_of(value_ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: (type(value) is dict and all(type(k) is str and _short_text(k, 20_000) for k in value)
                          and all(map(value_ok, value.values())))


def _parents(value: Any) -> bool:  # what ModelSpec's merged_from gives: [{"name": ...}, ...]
    return type(value) is list and all(type(p) is dict and p.keys() == {"name"} and _short_text(p["name"])
                                       for p in value)


_RANK = _integer(1, 65_536)
_POSITIVE = _real(open_low=True)
_SHORT = _short_text
# Field path -> check, for every field the readers and the weights fill in. A path missing here is unsure.
_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "name": _SHORT, "description": lambda v: _short_text(v, 20_000), "author": _SHORT, "license": _SHORT,
    "tags": _listed(_whole(100, no_comma=True)), "trigger_words": _listed(_whole(500)), "usage_hint": _SHORT,
    "content_rating": _one_of("general", "mature", "adult"), "recommended_weight": _real(low=-5, high=5),
    "tensor_sha256": _sha,
    "base.architecture": lambda v: type(v) is str and v in ARCHITECTURES, "base.model_id": _model_id,
    "base.model_name": _SHORT, "base.revision": _SHORT, "base.sha256": _sha,
    "base.prediction_type": _one_of("epsilon", "v", "flow"), "base.resolution": _size_pair,
    "network.type": _one_of(*NETWORK_TYPES), "network.rank": _RANK, "network.alpha": _POSITIVE,
    "network.conv_rank": _RANK, "network.conv_alpha": _POSITIVE, "network.rank_pattern": _pattern_of(_RANK),
    "network.alpha_pattern": _pattern_of(_POSITIVE), "network.components": _listed(_one_of(*COMPONENTS)),
    "network.target_modules": _listed(_SHORT),
    "training.steps": _integer(1), "training.epochs": _integer(1), "training.learning_rate": _real(),
    "training.unet_lr": _real(), "training.text_encoder_lr": _real(), "training.optimizer": _SHORT,
    "training.scheduler": _SHORT, "training.batch_size": _integer(1), "training.seed": _integer(0),
    "training.resolution": _size_pair, "training.dataset_size": _integer(1), "training.dataset_hash": _sha,
    "training.tool": _SHORT, "training.tool_version": _SHORT, "training.started_at": _aware,
    "training.finished_at": _aware, "training.mixed_precision": _SHORT, "training.noise_offset": _real(),
    "training.min_snr_gamma": _POSITIVE, "training.clip_skip": _integer(1, 12),
    "training.comment": lambda v: _short_text(v, 20_000),
    "provenance.created_at": _aware, "provenance.tool": _SHORT, "provenance.tool_version": _SHORT,
    "provenance.operation": _one_of("train", "convert", "merge", "resize", "extract", "fix", "import"),
    "provenance.parents": _parents,
}


def certainly_valid(values: Mapping[str, Any]) -> bool:
    """Whether ``AdapterMetadata`` certainly accepts these fields (dotted path -> value) as they are, cross-field
    rules included; False means unsure, not invalid."""
    for path, value in values.items():
        check = _FIELD_CHECKS.get(path)
        if check is None or not check(value):
            return False
    if "network.conv_alpha" in values and "network.conv_rank" not in values:
        return False
    if "network.alpha" in values and "network.rank" not in values:
        return False
    started, finished = values.get("training.started_at"), values.get("training.finished_at")
    return not (started and finished and finished < started)
