"""The SD3 / FLUX goldens (tests/golden/mmdit) are what their writers produce today.

``scripts/make_goldens.py`` is rerun for them into a temporary folder. With the library versions the goldens were
written with, the files must be the same (bytes, or parsed header and tensors where safetensors' metadata order
varies) and so must their records; with other versions, the keys, shapes and module counts must be the same, and a
difference fails naming the versions that changed. Nothing is skipped. What diffusers loads from them is not
recorded: tests/test_oracle_diffusers.py loads them live.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracle_cases import MMDIT_GOLDEN, MMDIT_GOLDENS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("goldens")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_goldens.py"), "--out", str(out), "--only",
                    *MMDIT_GOLDENS], check=True, env=env, capture_output=True)
    return out / "mmdit"


def _header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {"metadata": f.metadata() or {},
                "tensors": {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}}


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(str(path)).items()}


def _outcome(record: dict) -> dict:
    return {k: record[k] for k in ("components", "format", "key_count", "modules_per_component", "network_type",
                                   "rank", "alpha")}


def test_there_are_sd3_and_flux_goldens_named_after_their_writer():
    assert {"sd3_diffusers", "flux_diffusers"} <= set(MMDIT_GOLDENS)
    for name in MMDIT_GOLDENS:
        writer = json.loads((MMDIT_GOLDEN / f"{name}.json").read_text())["writer"]
        assert writer["tool"] == "diffusers" and writer["version"] and "save_lora_weights" in writer["call"]


@pytest.mark.parametrize("name", MMDIT_GOLDENS)
def test_regenerated_mmdit_golden(name, regenerated):
    old = json.loads((MMDIT_GOLDEN / f"{name}.json").read_text())
    new = json.loads((regenerated / f"{name}.json").read_text())
    old_path, new_path = MMDIT_GOLDEN / f"{name}.safetensors", regenerated / f"{name}.safetensors"
    changed = ", ".join(f"{lib} {old['library_versions'].get(lib)} -> {new['library_versions'].get(lib)}"
                        for lib in sorted(set(old["library_versions"]) | set(new["library_versions"]))
                        if old["library_versions"].get(lib) != new["library_versions"].get(lib))
    if changed:
        assert _header(new_path)["tensors"] == _header(old_path)["tensors"], f"keys or shapes changed with {changed}"
        assert _outcome(new) == _outcome(old), f"the file's facts changed with {changed}"
        return
    if old["byte_reproducible"]:
        assert new_path.read_bytes() == old_path.read_bytes()
    assert _header(new_path) == _header(old_path) and _tensors(new_path) == _tensors(old_path)
    volatile = ("file_sha256",) if not old["byte_reproducible"] else ()
    assert {k: v for k, v in new.items() if k not in volatile} == {k: v for k, v in old.items() if k not in volatile}
