"""What a header-level ``verify()`` of a kohya file leaves out, beyond tests/test_import_layers.py's list: modules the
library's own verify path stopped needing (a test fails when one creeps back), and no ``@dataclass`` in the modules
it runs (``record.Record`` instead: see that module for why)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import loraregistry
from tests.adapters import lora_tensors, write_adapter

ROOT = Path(__file__).resolve().parent.parent

_VERIFY = """
import json, sys
from loraregistry.verify import verify
report = verify(sys.argv[1], tensors=False)
print(json.dumps({"ok": report.ok, "architecture": report.detected_architecture, "modules": sorted(sys.modules)}))
"""
# gzip: the fingerprint index is decompressed with zlib; heapq: Counter.most_common imports it, the rank/alpha facts
# use max(); pkgutil: consumer discovery, which runs only for --target; dataclasses (and the inspect, ast and dis it
# imports): value classes are record.Record.
_NOT_FOR_HEADER_VERIFY = ("gzip", "heapq", "pkgutil", "dataclasses", "inspect", "ast", "dis")
# The verify path's own value classes, and the header's and the metadata import's.
_RECORD_MODULES = ("loraregistry.adapter", "loraregistry.canonical", "loraregistry.architectures",
                   "loraregistry.formats", "loraregistry.verify", "loraregistry.safetensors_io",
                   "loraregistry.schema._foreign", "loraregistry.schema.resolve")
_NOT_ON_THE_HEADER_PATH = ("loraregistry.verify.base", "loraregistry.verify.health", "loraregistry.verify.bitscan",
                           "loraregistry.verify.output_models", "loraregistry.verify.outputs")


def test_header_level_verify_leaves_out_what_it_does_not_need(tmp_path):
    path = write_adapter(tmp_path / "kohya.safetensors", lora_tensors("sd1"), {"ss_base_model_version": "sd_v1"})
    done = subprocess.run([sys.executable, "-c", _VERIFY, str(path)], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["architecture"] == "sd1"
    assert [name for name in _NOT_FOR_HEADER_VERIFY if name in result["modules"]] == []
    on_path = [name for name in result["modules"] if name.startswith(_RECORD_MODULES)]
    assert "loraregistry.formats.kohya" in on_path and "loraregistry.verify.detect" in on_path


def _path_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(loraregistry.__path__, "loraregistry.")
             if info.name.startswith(_RECORD_MODULES) and not info.name.startswith(_NOT_ON_THE_HEADER_PATH)
             and not info.name.startswith("loraregistry.verify.consumers.")]  # loaded for --target only
    return [*_RECORD_MODULES, "loraregistry.verify.consumers", *names]


@pytest.mark.parametrize("name", _path_modules())
def test_no_dataclass_on_the_header_path(name):
    module = importlib.import_module(name)
    defined = [value for value in vars(module).values()
               if isinstance(value, type) and value.__module__ == name and dataclasses.is_dataclass(value)]
    assert defined == [], f"{name} defines {defined}: use record.Record / FrozenRecord"
