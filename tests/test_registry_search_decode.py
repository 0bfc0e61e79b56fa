"""The registry's JSON-column decoding on the search path: the fast path gives what ``json.loads`` gives (value or
error), and values decoded once per distinct text are never mutable objects shared between entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraregistry.registry import Registry
from loraregistry.registry.core import _json

from .test_registry import make_adapter


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [1, 2]}', '[1, "x"]', ' {"a": 1}', '{"a": 1} ', '[1]\n', '"s"', "3", "null",
])
def test_json_column_decodes_like_json_loads(text: str) -> None:
    assert _json(text, "empty") == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": ', "[1] [2]", "{'a': 1}", " "])
def test_json_column_error_is_json_loads_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        _json(text, "empty")
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("text, empty", [(None, ()), ("", {}), ("{}", {}), ("[]", [])])
def test_json_column_empty(text: str | None, empty: object) -> None:
    assert _json(text, empty) == empty


def test_entries_share_no_mutable_values(tmp_path: Path) -> None:
    """Two files with the same verdicts decode to equal loader outcomes, each entry its own dict."""
    folder = tmp_path / "loras"
    folder.mkdir()
    for i in range(2):
        make_adapter(folder, f"adapter {i}", seed=i, tags=["style"])
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([folder], verify_files=True)
        first, second = reg.search()
        assert first.loaders == second.loaders and first.loaders
        assert first.loaders is not second.loaders
        assert first.tags == second.tags == ("style",)
        first.loaders.clear()
        assert reg.search()[0].loaders == second.loaders
