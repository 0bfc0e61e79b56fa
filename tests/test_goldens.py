"""Golden adapter files (tests/golden/) and the example dataset match their recorded facts.

The fast tests read only headers and bytes (numpy, no torch). The slow ones regenerate everything with
scripts/make_goldens.py and scripts/make_example_dataset.py and compare.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
DATASET = ROOT / "examples" / "dataset"
RECORDS = sorted(GOLDEN.glob("*.json"))
NAMES = [p.stem for p in RECORDS]


def _load_script(name: str):
    """Import a script from scripts/ by path (they import torch only inside functions)."""
    spec = importlib.util.spec_from_file_location(f"_lorareg_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def test_every_builder_has_a_golden():
    builders = set(_load_script("make_goldens")._BUILDERS)
    assert builders == set(NAMES)
    assert {p.stem for p in GOLDEN.glob("*.safetensors")} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_golden_matches_its_record(name):
    rec = _record(name)
    path = GOLDEN / rec["file"]
    with safe_open(str(path), framework="numpy") as f:
        keys = sorted(f.keys())
        metadata = f.metadata() or {}
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in keys})
    assert len(keys) == rec["key_count"]
    assert set(rec["sample_keys"]) <= set(keys)
    assert metadata == rec["metadata"]
    assert dtypes == rec["dtypes"]
    data = path.read_bytes()
    assert len(data) == rec["file_size"]
    assert hashlib.sha256(data).hexdigest() == rec["file_sha256"]
    _, tensor_bytes = _split(path)
    assert hashlib.sha256(tensor_bytes).hexdigest() == rec["tensor_sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_golden_module_counts(name):
    rec = _record(name)
    module_of = _load_script("make_goldens").module_of
    with safe_open(str(GOLDEN / rec["file"]), framework="numpy") as f:
        keys = list(f.keys())
    modules: dict[str, set[str]] = {}
    for k in keys:
        component, module = module_of(k, "unet")
        modules.setdefault(component, set()).add(module)
    assert {c: len(m) for c, m in modules.items()} == rec["modules_per_component"]
    assert sorted(modules) == rec["components"]


@pytest.mark.parametrize("name", [n for n in NAMES if _record(n)["network_type"] in ("lora", "locon", "dora")])
def test_golden_ranks(name):
    """Every down/A factor has the recorded (linear or conv) rank as its first dimension."""
    rec = _record(name)
    ranks = {rec["rank"], rec.get("conv_rank", rec["rank"])}
    downs = ("lora_down.weight", "lora_A.weight", ".down.weight")
    with safe_open(str(GOLDEN / rec["file"]), framework="numpy") as f:
        seen = {f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(downs)}
    assert seen and seen <= ranks


@pytest.mark.parametrize("name", [n for n in NAMES if _record(n)["format"] == "kohya"])
def test_kohya_goldens_have_alpha_per_module(name):
    rec = _record(name)
    with safe_open(str(GOLDEN / rec["file"]), framework="numpy") as f:
        keys = list(f.keys())
        modules = {k.split(".", 1)[0] for k in keys}
        alphas = {k[: -len(".alpha")] for k in keys if k.endswith(".alpha")}
        assert alphas == modules
        assert all(f.get_slice(f"{m}.alpha").get_shape() == [] for m in modules)


def test_dataset_is_complete():
    images = sorted(DATASET.glob("*.png"))
    assert len(images) >= 12
    total = 0
    for image in images:
        caption = image.with_suffix(".txt").read_text()
        assert caption.startswith("lrgshape, ")
        total += image.stat().st_size + len(caption)
    assert total < 200_000
    assert (DATASET / "README.md").is_file()


# --------------------------------------------------------------------------------------------- slow


def _run(script: str, out: Path) -> None:
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("goldens")
    _run("make_goldens.py", out)
    return out


def _comparable(rec: dict) -> dict:
    rec = dict(rec)
    rec.pop("library_versions")
    rec["writer"] = {k: v for k, v in rec["writer"].items() if k != "version"}
    if not rec["byte_reproducible"]:
        rec.pop("file_sha256")
    return rec


def _shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    header, _ = _split(path)
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def _outcome(rec: dict) -> dict:
    """What a library upgrade must not change: keys, shapes and module counts (what loaders do with a golden is
    never recorded: the oracle tests load it live)."""
    return {k: rec.get(k) for k in ("components", "dtypes", "format", "key_count", "modules_per_component",
                                    "network_type", "rank", "alpha", "conv_rank")}


def _changed_versions(old: dict, new: dict) -> str:
    return ", ".join(f"{name} {old.get(name)} -> {new.get(name)}" for name in sorted(set(old) | set(new))
                     if old.get(name) != new.get(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_regenerated_golden_is_identical(name, regenerated):
    """Same library versions: the same bytes (or parsed header and tensors). Other versions: regenerated all
    the same, and any change in keys, shapes or module counts fails, naming the versions that changed."""
    rec = _record(name)
    new_rec = json.loads((regenerated / f"{name}.json").read_text())
    old_path, new_path = GOLDEN / rec["file"], regenerated / rec["file"]
    changed = _changed_versions(rec["library_versions"], new_rec["library_versions"])
    if changed:
        assert _shapes(new_path) == _shapes(old_path), f"keys or shapes of {name} changed with {changed}"
        assert _outcome(new_rec) == _outcome(rec), f"the facts of {name} changed with {changed}"
        return
    if rec["byte_reproducible"]:
        assert new_path.read_bytes() == old_path.read_bytes()
    else:
        # same tensors, same parsed header; only the order of __metadata__ entries may differ
        assert _split(new_path) == _split(old_path)
    assert _comparable(new_rec) == _comparable(rec)


@pytest.mark.slow
def test_regenerated_dataset_is_identical(tmp_path):
    _run("make_example_dataset.py", tmp_path)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in DATASET.iterdir())
    for name in made:
        assert (tmp_path / name).read_bytes() == (DATASET / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sd1", "sd2", "sd2-v", "sdxl"])
def test_tiny_models_are_deterministic_and_keep_their_signals(arch):
    import torch

    from tests.tiny_models import tiny_pipeline, tiny_unet

    a, b = tiny_unet(arch).state_dict(), tiny_unet(arch).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = tiny_pipeline(arch)
    proj_in = pipe.unet.mid_block.attentions[0].proj_in
    assert isinstance(proj_in, torch.nn.Conv2d if arch == "sd1" else torch.nn.Linear)
    assert hasattr(pipe.unet.down_blocks[0], "attentions") == (arch != "sdxl")
    expected = "v_prediction" if arch == "sd2-v" else "epsilon"
    assert pipe.scheduler.config.prediction_type == expected
    image = pipe(
        "lrgshape, a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 32, 32, 3)
