"""What the readers of foreign metadata (kohya, ModelSpec, diffusers) share, without pydantic: the value parsers
(foreign spellings -> canonical Python values) and ``Found`` / ``Findings``.

The tolerant pydantic models built on these parsers live in ``foreign_models`` and load only when the light
reader (``light``) cannot vouch for a value: a header-level ``verify`` of a clean file never builds them.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from typing import Any

from ..record import FrozenRecord, Record

# Values that mean "not set" in the wild: str(None) from kohya, "Dynamic" from resize_lora (rank varies).
NULL_STRINGS = frozenset({"", "none", "null", "nan", "dynamic", "undefined"})


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- value parsers (BeforeValidators): foreign spellings -> the canonical Python value ----------


def parse_list(value: Any) -> Any:
    """'a, b,,c' -> ['a', 'b', 'c'] (ModelSpec comma lists); first occurrence wins on repeats."""
    if not isinstance(value, str):
        return value
    items = [part.strip() for part in value.split(",")]
    return list(dict.fromkeys(item for item in items if item))


def parse_resolution(value: Any) -> Any:
    """'512', '512,768', '(512, 768)', '[512, 768]', '1024x1024' -> (width, height)."""
    if isinstance(value, int):
        return (value, value)
    if not isinstance(value, str):
        return value
    numbers = re.fullmatch(r"\s*[\(\[]?\s*(\d+)\s*(?:[,xX*]\s*(\d+))?\s*[\)\]]?\s*", value)
    if not numbers:
        raise ValueError("expected a resolution such as '512', '512,768' or '1024x1024'")
    width = int(numbers.group(1))
    return (width, int(numbers.group(2) or width))


def parse_timestamp(value: Any) -> Any:
    """Unix seconds (kohya) or ISO 8601 (ModelSpec; a date alone is midnight) -> aware datetime, naive = UTC."""
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("expected unix seconds or an ISO 8601 date/time") from None
        else:
            if not -62135596800 < seconds < 253402300799:  # years 1..9999
                raise ValueError("timestamp out of range")
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return value


def parse_sha256(value: Any) -> Any:
    """'0xABC…' (ModelSpec), upper-case hex (Civitai) -> 64 lowercase hex digits."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError("expected a sha256: 64 hex digits, optionally prefixed with 0x")
    return text


def parse_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError("not valid JSON") from None


def single_learning_rate(value: Any) -> Any:
    """sd-scripts writes a list for SDXL's two text encoders: '[0.0001, 5e-05]'. One value if they agree."""
    if isinstance(value, str) and value.strip().startswith("["):
        rates = parse_json(value)
        if isinstance(rates, list) and rates and all(rate == rates[0] for rate in rates):
            return rates[0]
        raise ValueError("differs per text encoder; lorareg records one rate")
    return value


# --- what one source says about the canonical record --------------------------------------------


class Found(FrozenRecord):
    """A value for one field of AdapterMetadata and the header key(s) it came from."""

    value: Any
    key: str

    def __init__(self, value: Any, key: str) -> None:
        self._set(value=value, key=key)


class Findings(Record):
    """The fields one source declares (dotted AdapterMetadata paths) plus the warnings reading it gave."""

    source: str
    values: dict[str, Found]
    warnings: list[str]

    def __init__(self, source: str, values: dict[str, Found] | None = None, warnings: list[str] | None = None) -> None:
        self.source = source
        self.values = {} if values is None else values
        self.warnings = [] if warnings is None else warnings

    def put(self, path: str, value: Any, key: str) -> None:
        if value is None or value == [] or value == {}:
            return
        self.values[path] = Found(value, key)
