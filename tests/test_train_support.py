"""Shared set-up for the training tests (no tests here): tiny datasets, tiny configs, diffusers loading."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import pytest

EXAMPLE_DATASET = Path(__file__).resolve().parent.parent / "examples" / "dataset"


@contextlib.contextmanager
def torch_one_thread():
    """One CPU thread: deterministic, and much faster than two contending threads on small CI machines."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    with torch_one_thread():
        yield


def copy_dataset(folder: Path, count: int = 4) -> Path:
    """The first ``count`` example images with their captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted(EXAMPLE_DATASET.glob("*.png"))[:count]:
        shutil.copy(image, folder / image.name)
        shutil.copy(image.with_suffix(".txt"), folder / image.with_suffix(".txt").name)
    return folder


def tiny_settings(tmp_path: Path, arch: str = "sd1", **sections: dict[str, Any]) -> dict[str, Any]:
    """A config dict for a few 32 px steps on a tiny base; ``sections`` update it per section."""
    data = {
        "model": {"base": f"tiny:{arch}"},
        "data": {"folder": str(tmp_path / "data"), "resolution": 32, "bucket_step": 8,
                 "cache_dir": str(tmp_path / "cache")},
        "network": {"rank": 4, "alpha": 4.0},
        "optim": {"lr": 1e-2, "scheduler": "constant"},
        "train": {"steps": 4, "batch_size": 2, "seed": 7},
        "output": {"dir": str(tmp_path / "out"), "name": "t", "formats": ["kohya", "diffusers"],
                   "trigger_words": ["lrgshape"], "license": "cc0-1.0"},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    if not (tmp_path / "data").exists():
        copy_dataset(tmp_path / "data")
    return data


def tiny_config(tmp_path: Path, arch: str = "sd1", **sections: dict[str, Any]):
    from loraregistry.train.config import from_dict

    return from_dict(tiny_settings(tmp_path, arch, **sections))


def diffusers_load(path: Path, arch: str) -> tuple[Any, dict[str, int], list[str]]:
    """Load an adapter into a fresh tiny pipeline with diffusers' own loader: (pipeline, modules patched per
    component, warnings diffusers logged)."""
    import logging

    from diffusers.utils import logging as dlogging

    from loraregistry.train.tiny import tiny_pipeline

    pipe = tiny_pipeline(arch)
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Grab(level=logging.WARNING)
    logger = dlogging.get_logger("diffusers")
    logger.addHandler(handler)
    try:
        # folder + weight_name: older diffusers (0.32) will not look for the file in a folder when offline
        folder, name = (path, None) if path.is_dir() else (path.parent, path.name)
        pipe.load_lora_weights(str(folder), weight_name=name or "pytorch_lora_weights.safetensors",
                               adapter_name="trained")
    finally:
        logger.removeHandler(handler)
    patched = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            patched[component] = sum(1 for _, m in model.named_modules()
                                     if hasattr(m, "lora_A") and "trained" in m.lora_A)
    return pipe, patched, records


def mmdit_diffusers_load(path: Path, arch: str) -> tuple[Any, dict[str, Any], list[str]]:
    """A fresh tiny FLUX/SD3 pipeline (``arch``: a tiny_mmdit id) with the adapter file ``path`` loaded by diffusers:
    (pipeline, the transformer's LoRA modules by name, warnings diffusers logged)."""
    import logging

    from diffusers.utils import logging as dlogging

    from loraregistry.train.tiny_mmdit import tiny_mmdit_pipeline

    pipe = tiny_mmdit_pipeline(arch)
    records: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = dlogging.get_logger("diffusers")
    logger.addHandler(handler)
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="trained")
    finally:
        logger.removeHandler(handler)
    patched = {name: m for name, m in pipe.transformer.named_modules()
               if hasattr(m, "lora_A") and "trained" in m.lora_A}
    return pipe, patched, records
