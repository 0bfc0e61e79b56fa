"""AdapterMetadata: validation rules, header-value storage, tolerant reads of newer records, JSON Schema."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loraregistry.architectures.ids import ARCHITECTURES
from loraregistry.canonical import COMPONENTS, NETWORK_TYPES
from loraregistry.errors import MetadataError
from loraregistry.schema import (
    AdapterMetadata,
    from_header_value,
    read_header_value,
    to_header_value,
)
from loraregistry.schema_files import export_json_schemas, json_schemas, render

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef" * 4

# --- strategies: random *valid* records -----------------------------------------------------------

_chars = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
text = st.text(_chars, min_size=1, max_size=24)
stripped = text.map(str.strip).filter(bool)
tag = stripped.filter(lambda t: "," not in t)
sha256 = st.text("0123456789abcdef", min_size=64, max_size=64)
rank = st.integers(1, 1024)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
non_negative = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
resolution = st.tuples(st.integers(64, 4096), st.integers(64, 4096))
zone = st.integers(-12 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
moment = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=zone)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | non_negative | text


def unique(strategy, max_size=4):
    return st.lists(strategy, max_size=max_size, unique=True)


@st.composite
def network(draw):
    data = {"type": draw(st.none() | st.sampled_from(NETWORK_TYPES))}
    if draw(st.booleans()):
        data["rank"] = draw(rank)
        data["alpha"] = draw(st.none() | positive)
    if draw(st.booleans()):
        data["conv_rank"] = draw(rank)
        data["conv_alpha"] = draw(st.none() | positive)
    data["rank_pattern"] = draw(st.dictionaries(text, rank, max_size=3))
    data["alpha_pattern"] = draw(st.dictionaries(text, positive, max_size=3))
    data["components"] = draw(unique(st.sampled_from(COMPONENTS)))
    data["target_modules"] = draw(unique(text))
    return data


@st.composite
def training(draw):
    times = sorted(draw(st.lists(moment, min_size=2, max_size=2)))
    optional = {
        "steps": st.integers(1, 10**6), "epochs": st.integers(1, 1000), "learning_rate": non_negative,
        "unet_lr": non_negative, "text_encoder_lr": non_negative, "optimizer": text, "scheduler": text,
        "batch_size": st.integers(1, 64), "seed": st.integers(0, 2**32), "resolution": resolution,
        "dataset_size": st.integers(1, 10**5), "dataset_hash": sha256, "tool": text, "tool_version": text,
        "mixed_precision": st.sampled_from(["no", "fp16", "bf16"]), "noise_offset": non_negative,
        "min_snr_gamma": positive, "clip_skip": st.integers(1, 12), "comment": text,
        "started_at": st.just(times[0]), "finished_at": st.just(times[1]),
    }
    return {key: draw(value) for key, value in optional.items() if draw(st.booleans())}


parent = st.fixed_dictionaries({"name": text}, optional={
    "sha256": sha256, "tensor_sha256": sha256, "weight": st.floats(-2, 2, allow_nan=False)})

provenance = st.fixed_dictionaries({}, optional={
    "created_at": moment, "tool": text, "tool_version": text,
    "operation": st.sampled_from(["train", "convert", "merge", "resize", "extract", "fix", "import"]),
    "params": st.dictionaries(text, json_scalar | st.lists(json_scalar, max_size=3), max_size=3),
    "parents": st.lists(parent, max_size=3),
})

base = st.fixed_dictionaries({}, optional={
    "architecture": st.sampled_from(sorted(ARCHITECTURES)), "model_id": st.sampled_from(
        ["stabilityai/stable-diffusion-xl-base-1.0", "gpt2", "a/b.c-d_e"]),
    "model_name": text, "revision": text, "sha256": sha256,
    "prediction_type": st.sampled_from(["epsilon", "v", "flow"]), "resolution": resolution,
})

adapter_metadata = st.builds(
    lambda top, b, n, t, p: AdapterMetadata.model_validate({**top, "base": b, "network": n, "training": t,
                                                            "provenance": p}),
    st.fixed_dictionaries({}, optional={
        "name": text, "description": text, "author": text, "license": text, "usage_hint": text,
        "tags": unique(tag), "trigger_words": unique(stripped),
        "content_rating": st.sampled_from(["general", "mature", "adult"]),
        "recommended_weight": st.floats(-5, 5, allow_nan=False), "tensor_sha256": sha256,
    }),
    base, network(), training(), provenance,
)


# --- header value ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adapter_metadata)
def test_header_value_round_trip(meta):
    value = to_header_value(meta)
    assert from_header_value(value) == meta
    assert to_header_value(from_header_value(value)) == value  # stable bytes


def test_header_value_is_compact_sorted_json_and_always_versioned():
    value = to_header_value(AdapterMetadata(name="x", base={"architecture": "sd1"}))
    assert value == '{"base":{"architecture":"sd1"},"name":"x","schema_version":"1"}'
    assert to_header_value(AdapterMetadata()) == '{"schema_version":"1"}'


def test_architecture_alias_is_normalized_to_the_id():
    for alias in ("sdxl", "SDXL 1.0", "stable-diffusion-xl-v1-base/lora", "stabilityai/stable-diffusion-xl-base-1.0",
                  "sdxl_base_v1-0"):
        assert AdapterMetadata(base={"architecture": alias}).base.architecture == "sdxl-base"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"base": {"architecture": "sd9"}}', "base.architecture: unknown architecture 'sd9'; known ids: sd1,"),
        ('{"nmae": "x"}', "nmae: unknown field (not in schema_version 1; check the spelling)"),
        ('{"content_rating": "x"}', "content_rating: Input should be 'general', 'mature' or 'adult' (got 'x')"),
        ('{"network": {"rank": 0}}', "network.rank: Input should be greater than or equal to 1 (got 0)"),
        ('{"network": {"conv_alpha": 4}}', "network.conv_alpha is set but network.conv_rank is not;"),
        ('{"network": {"alpha": 4}}', "network.alpha is set but network.rank is not;"),
        ('{"training": {"started_at": "2024-01-02T00:00:00Z", "finished_at": "2024-01-01T00:00:00Z"}}',
         "training.finished_at (2024-01-01T00:00:00+00:00) is before training.started_at"),
        ('{"training": {"started_at": "2024-01-02T00:00:00"}}', "training.started_at: Input should have timezone info"),
        ('{"tensor_sha256": "ABC"}', "tensor_sha256: String should match pattern"),
        ('{"tags": ["a, b"]}', "tags.0: String should match pattern"),
        ('{"tags": ["a", "a"]}', "tags: duplicate entries ['a']; list each once"),
        ('{"trigger_words": [" x"]}', "trigger_words.0: ' x' has leading or trailing whitespace; strip it"),
        ('{"recommended_weight": 9}', "recommended_weight: Input should be less than or equal to 5 (got 9)"),
        ('{"provenance": {"parents": [{"weight": 1}]}}', "provenance.parents need each at least one of sha256,"),
        ('{"schema_version": "0"}', "schema_version: Input should be '1' (got '0')"),
        ('{"name": "x", "network": {"rank": 0}, "tags": [1]}', "(and 1 more errors)"),
        ("{not json", "lorareg: not valid JSON"),
        ("[]", "lorareg: expected a JSON object, got list"),
        ('{"recommended_weight": NaN}', "recommended_weight: Input should be a finite number"),
    ],
)
def test_invalid_records_raise_one_line_metadata_errors(record, message):
    with pytest.raises(MetadataError) as info:
        from_header_value(record)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_newer_record_drops_unknown_fields_with_a_warning():
    record = {"schema_version": "2", "name": "x", "colour": "red", "base": {"architecture": "sd1", "vae": "y"},
              "provenance": {"parents": [{"name": "p", "license": "z"}]}}
    meta, warnings = read_header_value(json.dumps(record))
    assert meta == AdapterMetadata(name="x", base={"architecture": "sd1"}, provenance={"parents": [{"name": "p"}]})
    assert warnings == ["lorareg: schema_version 2 is newer than 1; ignored unknown fields colour, base.vae, "
                        "provenance.parents[0].license (upgrade lorareg to read them)"]


def test_newer_record_still_refuses_invalid_known_fields():
    with pytest.raises(MetadataError, match="network.rank"):
        from_header_value('{"schema_version": "3", "network": {"rank": -1}}')


def test_literals_match_the_canonical_lists():
    from typing import get_args

    from loraregistry.schema.metadata import ComponentName, NetworkType

    assert get_args(NetworkType) == NETWORK_TYPES
    assert get_args(ComponentName) == COMPONENTS


def test_models_forbid_unknown_fields_on_construction():
    with pytest.raises(ValidationError):
        AdapterMetadata(nmae="x")


def test_schema_package_imports_no_tensor_library():
    import subprocess

    code = "import sys, loraregistry.schema; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- JSON Schema ----------------------------------------------------------------------------------


def test_committed_schemas_are_fresh():
    committed = REPO / "schemas"
    for name, schema in json_schemas().items():
        path = committed / name
        assert path.exists() and path.read_text(encoding="utf-8") == render(schema), (
            f"schemas/{name} is stale: run `lorareg schema export` and commit the result"
        )


def test_export_is_deterministic(tmp_path):
    first = [p.read_bytes() for p in export_json_schemas(tmp_path / "a")]
    second = [p.read_bytes() for p in export_json_schemas(tmp_path / "b")]
    assert first == second
    assert all(data.endswith(b"}\n") and b"\r" not in data for data in first)


def test_json_schema_documents_fields():
    schema = json_schemas()["adapter-metadata.v1.schema.json"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == "1"
    network = schema["$defs"]["NetworkInfo"]["properties"]
    assert all(prop.get("description") for prop in network.values())
