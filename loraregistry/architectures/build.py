"""Build a base architecture's real components from the public config values in ``configs/<name>.json``.

On the meta device by default: every module with its true shape and no weight memory, in well under a second
for SDXL, so tests and scripts can inject adapters with the real tools at real shapes without downloads.
Needs torch, diffusers and transformers (the ``train`` extra); they are imported only inside functions, so
importing this module costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CLIP_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


def config_doc(name: str) -> dict[str, Any]:
    """The recorded config document of a fingerprint (``sd1``, ``sd2``, ``sdxl-base``, ...)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise ValueError(f"no config for {name!r}; known: {known}")
    return json.loads(path.read_text(encoding="utf-8"))


def build_component(spec: dict[str, Any], *, device: str = "meta"):
    """Instantiate one component from its recorded library, class and config (random weights off meta)."""
    import torch

    library, cls_name, config = spec["library"], spec["class"], spec["config"]
    with torch.device(device):
        if library == "diffusers":
            import diffusers

            return getattr(diffusers, cls_name).from_config(config)
        if library == "transformers":
            import transformers

            config_cls = {"T5EncoderModel": "T5Config", **dict.fromkeys(CLIP_CLASSES, "CLIPTextConfig")}[cls_name]
            return getattr(transformers, cls_name)(getattr(transformers, config_cls)(**config))
    raise ValueError(f"unsupported component library {library!r}")


def build_architecture(name: str, components: tuple[str, ...] | None = None, *, device: str = "meta") -> dict[str, Any]:
    """component -> model for the fingerprint ``name`` (all of its components unless ``components`` names some)."""
    doc = config_doc(name)
    wanted = components or tuple(sorted(doc["components"]))
    return {c: build_component(doc["components"][c], device=device) for c in wanted}
