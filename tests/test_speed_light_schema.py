"""The light metadata reader (``schema.light``) gives the pydantic models' verdicts, or says it is unsure.

Header-level verify reads foreign metadata and judges the merged record without building the pydantic models;
these tests hold the two readings together: every value the light reader accepts, the models accept unchanged and
without a warning; clean values (what tools write) are accepted, so verify takes the light path for them; and over
the goldens, the known-bad library and the schema tests' real headers, verify's findings are the same both ways.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from loraregistry.schema import kohya, modelspec
from loraregistry.schema.foreign_models import KohyaMetadata, KohyaNetworkArgs, ModelSpecMetadata
from loraregistry.schema.light import KINDS, certainly_valid, light_record
from loraregistry.schema.metadata import AdapterMetadata
from loraregistry.schema.resolve import flatten, import_light, import_metadata, unflatten
from loraregistry.verify import verify
from tests import test_schema_import
from tests.adapters import KNOWN_BAD_ADAPTERS

SHA = "ab" * 32
# Per light kind: (value, whether the light reader must accept it). Values it need not accept may still be
# accepted; whatever it accepts must equal the pydantic reading.
SAMPLES: dict[str, list[tuple[object, bool]]] = {
    "str": [("abc", True), ("lowpoly Style", True), ("é ü 漢字", True), (" padded ", True), ("tab\t", True),
            ("", False), ("None", True), ("null", True), ("x" * 20_000, True), ("x" * 20_001, False),
            ("\u00a0nbsp", False), ("a\x1c", False), ("\u2003em", False), (5, False)],
    "bool": [("True", True), ("False", True), ("true", True), ("false", True), (True, True), ("1", False),
             ("yes", False), ("maybe", False), ("None", True), (" True", False)],
    "positive_int": [("16", True), ("1", True), (16, True), ("0", False), ("-1", False), ("16.0", False),
                     ("abc", False), ("016", False), (" 16", False), ("1_000", False), ("9" * 30, False),
                     (True, False), (16.0, False), ("Dynamic", True)],
    "seed": [("0", True), ("1234", True), ("-1", False), ("4294967295", True)],
    "positive_float": [("8.0", True), ("8", True), ("1e-4", True), ("5e-05", True), (4, True), (0.5, True),
                       ("0", False), ("0.0", False), ("-1", False), ("nan", True), ("inf", False), ("1e999", False),
                       ("abc", False), (".5", False), ("1.", False), (True, False)],
    "non_negative_float": [("0", True), ("0.03", True), ("-0.0", False), ("-1", False), ("None", True)],
    "learning_rate": [("0.0001", True), ("5e-05", True), ("[0.0001, 0.0001]", True), ("[0.0001, 5e-05]", False),
                      ("[]", False), ("[true, true]", False), ("-1", False), ("[1, 1]", True)],
    "list": [("a, b,,c", True), ("a,a", True), ("sks", True), (" , ", True), ("a,\u2003b", False)],
    "resolution": [("512", True), ("512,768", True), ("(512, 768)", True), ("[1024, 1024]", True),
                   ("1024x1024", True), ("abc", False), ("0", True)],
    "timestamp": [("1684342410.5", True), ("1684342410", True), ("2024-01-02T03:04:05Z", True),
                  ("2024-01-02", True), ("2024-01-02T03:04:05+02:00", True), ("abc", False), ("1e20", False)],
    "sha256": [("0x" + "A" * 64, True), (SHA, True), ("abc", False), (SHA.upper(), True)],
    "json_object": [('{"conv_dim": "4", "conv_alpha": "1"}', True), ("{}", True), ("[1]", False),
                    ("not json", False), ('{"a": [1, {"b": null}]}', True)],
    "dataset_dirs": [('{"10_x": {"n_repeats": 10, "img_count": 40}}', True), ('{"a": {"img_count": -1}}', False),
                     ('{"a": {"img_count": 1.5}}', False), ('{"a": 1}', False), ("{}", True)],
    "prediction_type": [("epsilon", True), ("v", True), ("flow", True), ("x", False), (" v", False)],
}
MODELS = [(KohyaMetadata, kohya.FIELDS), (KohyaNetworkArgs, kohya.NETWORK_ARG_FIELDS),
          (ModelSpecMetadata, modelspec.FIELDS)]


@pytest.mark.parametrize(("model", "fields"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_light_fields_are_the_models_fields(model, fields):
    assert set(fields) == set(model.model_fields)
    assert set(fields.values()) <= set(KINDS)


def _cases():
    for model, fields in MODELS:
        for name, kind in fields.items():
            for value, clean in SAMPLES[kind]:
                yield pytest.param(model, fields, name, value, clean, id=f"{model.__name__}.{name}={value!r:.30}")


@pytest.mark.parametrize(("model", "fields", "name", "value", "clean"), list(_cases()))
def test_light_record_reads_a_value_as_the_model_does(model, fields, name, value, clean):
    warnings: list[str] = []
    reference = model.read({name: value}, where="", warnings=warnings)
    light = light_record(fields, {name: value})
    if light is None:
        assert not clean, f"{name} = {value!r}: the light reader should vouch for this value"
        return
    assert warnings == [], f"light accepted {value!r}, the model warned {warnings}"
    got, expected = getattr(light, name), getattr(reference, name)
    if name == "ss_dataset_dirs" and expected is not None:  # nested models: compare what read_kohya reads
        got = {k: v.img_count for k, v in got.items()}
        expected = {k: v.img_count for k, v in expected.items()}
    assert (got, type(got)) == (expected, type(expected))


# --- the merged record ----------------------------------------------------------------------------------

WHEN = datetime(2024, 1, 2, tzinfo=timezone.utc)
RECORD_SAMPLES: list[tuple[dict, bool]] = [  # (fields, the light check must vouch for them)
    ({"name": "x", "license": "mit", "trigger_words": ["sks", "a b"], "tags": ["style"]}, True),
    ({"trigger_words": ["sks", "sks"]}, False), ({"trigger_words": [" sks"]}, False), ({"tags": ["a,b"]}, False),
    ({"tags": ["x" * 101]}, False), ({"name": ""}, False), ({"name": "x" * 501}, False),
    ({"description": "x" * 20_000}, True),
    ({"network.rank": 16, "network.alpha": 8.0, "network.type": "lora", "network.components": ["unet"]}, True),
    ({"network.rank": 16, "network.alpha": 8}, True), ({"network.alpha": 8.0}, False),
    ({"network.rank": 0}, False), ({"network.rank": 65_537}, False), ({"network.rank": True}, False),
    ({"network.rank": 4, "network.alpha": 0.0}, False), ({"network.rank": 4, "network.alpha": float("nan")}, False),
    ({"network.conv_rank": 4, "network.conv_alpha": 1.0}, True), ({"network.conv_alpha": 1.0}, False),
    ({"network.rank": 4, "network.rank_pattern": {"unet:a.b": 8}}, True),
    ({"network.rank": 4, "network.rank_pattern": {"unet:a.b": 0}}, False),
    ({"network.components": ["unet", "unet"]}, False), ({"network.components": ["vae"]}, False),
    ({"network.target_modules": ["to_q", "to_k"]}, True), ({"network.type": "oft"}, False),
    ({"base.architecture": "sd1", "base.resolution": (512, 512), "base.prediction_type": "v"}, True),
    ({"base.architecture": "SDXL 1.0"}, False), ({"base.resolution": (0, 512)}, False),
    ({"base.model_id": "owner/name-1.0", "base.revision": "main", "base.sha256": SHA}, True),
    ({"base.model_id": "a/b/c"}, False), ({"base.sha256": SHA.upper()}, False),
    ({"training.started_at": WHEN, "training.finished_at": WHEN.replace(hour=1), "training.steps": 10,
      "training.seed": 0, "training.learning_rate": 1e-4, "training.clip_skip": 2, "training.tool": "sd-scripts"},
     True),
    ({"training.started_at": WHEN.replace(hour=1), "training.finished_at": WHEN}, False),
    ({"training.started_at": datetime(2024, 1, 2)}, False), ({"training.clip_skip": 13}, False),
    ({"training.learning_rate": -1.0}, False), ({"training.min_snr_gamma": 0.0}, False),
    ({"provenance.operation": "merge", "provenance.parents": [{"name": "a"}, {"name": "b"}]}, True),
    ({"provenance.parents": [{"name": ""}]}, False), ({"provenance.params": {"x": 1}}, False),
    ({"tensor_sha256": SHA, "content_rating": "adult", "recommended_weight": -5}, True),
    ({"recommended_weight": 5.5}, False), ({"no.such": 1}, False),
]


@pytest.mark.parametrize(("fields", "clean"), RECORD_SAMPLES, ids=lambda v: repr(v)[:60])
def test_certainly_valid_means_the_record_accepts_it(fields, clean):
    if certainly_valid(fields):
        AdapterMetadata.model_validate(unflatten(fields))  # raises if the light check was wrong
    else:
        assert not clean, f"{fields}: the light check should vouch for these"


HEADERS = {name: value for name, value in vars(test_schema_import).items()
           if name.isupper() and isinstance(value, dict) and value and all(isinstance(k, str) for k in value)
           and all(isinstance(v, str) for v in value.values())}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_import_light_agrees_with_import_metadata(name):
    header = HEADERS[name]
    light = import_light(header)
    full = import_metadata(header)
    if light is None:
        return
    assert light.warnings == full.warnings
    assert light.values == flatten(full.metadata)


def test_the_schema_tests_headers_take_the_light_path():
    """The real kohya and ModelSpec headers are clean: the light path is the one verify takes for them."""
    assert import_light(test_schema_import.KOHYA_SD1) is not None
    assert sum(import_light(h) is not None for h in HEADERS.values()) >= len(HEADERS) // 2


# --- verify's findings, both ways ------------------------------------------------------------------------

GOLDEN = Path(__file__).resolve().parent / "golden"


def _without_light(monkeypatch) -> None:
    monkeypatch.setattr("loraregistry.schema.resolve.import_light", lambda *a, **k: None)
    monkeypatch.setattr("loraregistry.schema.kohya.light_record", lambda *a, **k: None)
    monkeypatch.setattr("loraregistry.schema.modelspec.light_record", lambda *a, **k: None)


def _findings(path: Path, monkeypatch, *, light: bool) -> list[tuple]:
    with monkeypatch.context() as patch:
        if not light:
            _without_light(patch)
        report = verify(path, tensors=False)
    return [(f.code, f.key, f.message, f.hint) for f in report.findings] + [report.declared_architecture]


def _metadata_files(tmp_path: Path) -> list[Path]:
    from tests.adapters import lora_tensors, write_adapter

    tensors = lora_tensors("sd1")
    return [write_adapter(tmp_path / f"{name}.safetensors", tensors, header) for name, header in HEADERS.items()]


def test_verify_findings_are_the_same_without_the_light_reader(tmp_path, monkeypatch):
    files = sorted(GOLDEN.glob("*.safetensors")) + [case.build(tmp_path / case.name) for case in KNOWN_BAD_ADAPTERS
                                                     if not (tmp_path / case.name).mkdir()]
    files += _metadata_files(tmp_path)
    assert len(files) > 40
    for path in files:
        assert _findings(path, monkeypatch, light=True) == _findings(path, monkeypatch, light=False), path.name


def test_kohya_args_json_reads_the_same_both_ways():
    header = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha", "conv_dim": "4",
                                                                                    "conv_alpha": "2"})}
    light = import_light(header)
    assert light is not None and light.values["network.type"] == "loha" and light.values["network.conv_rank"] == 4
    assert light.values == flatten(import_metadata(header).metadata)
