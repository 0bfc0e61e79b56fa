"""Stable Diffusion WebUI Forge, built-in ``sd_forge_lora`` extension.

Written from lllyasviel/stable-diffusion-webui-forge (main, 2025-06) ``extensions-builtin/sd_forge_lora/
networks.py`` (``load_lora_for_models``), ``network.py`` (``NetworkOnDisk.detect_version``) and
``packages_3rdparty/comfyui_lora_collection/lora.py`` (ComfyUI's key maps and ``load_lora``). Forge cannot run
here; these rules reuse ``comfyui.assess_keys`` for the key matching and add what Forge does differently:

* more than 12 keys matched by neither the UNet nor the CLIP map -> "LoRA version mismatch": nothing is applied;
* the SD version the UI files it under: ``modelspec.architecture`` ``stable-diffusion-xl-v1-base/lora`` or
  ``ss_base_model_version`` ``sdxl_…`` -> SDXL, ``ss_v2 == "True"`` -> SD2, ``modelspec.architecture``
  ``stable-diffusion-v1/lora`` -> SD1, else Unknown (Flux from its modelspec keys).

FLUX.1 goes through the same ComfyUI key maps (the current ones, see ``comfyui.py``); SD3 is not modelled
(LRG608).

Checked by tests/test_consumers_rules.py on files whose outcome this code determines (goldens and edits).
"""

from __future__ import annotations

from . import Assessment, Consumer
from .a1111 import check_version
from .comfyui import assess_keys
from .facts import AdapterFacts

VERSION_RANGE = "2024-08 - 2025-06 (main)"
UNMATCHED_LIMIT = 12
_FIX = "run `lorareg fix --for comfyui`"


def sd_version(metadata) -> str:
    arch = str(metadata.get("modelspec.architecture", ""))
    if metadata.get("modelspec.implementation") == "https://github.com/black-forest-labs/flux" \
            or arch == "flux-1-dev/lora":
        return "Flux"
    if arch == "stable-diffusion-xl-v1-base/lora" or str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if arch == "stable-diffusion-v1/lora" else "Unknown"


def assess(facts: AdapterFacts) -> Assessment:
    a = assess_keys(Assessment("forge"), facts, fix=_FIX)
    unmatched = len(a.ignored) + sum(len(facts.modules[m].keys) for m in a.skipped)
    if unmatched > UNMATCHED_LIMIT:
        a.load_nothing(f"{unmatched} keys match no module (more than {UNMATCHED_LIMIT}): 'LoRA version mismatch', "
                       "nothing is applied", hint=f"{_FIX} to write kohya keys, or check the base model")
    check_version(a, facts, sd_version(facts.metadata), fix="run `lorareg fix --for a1111`")
    return a


CONSUMER = Consumer(
    name="forge", title="SD WebUI Forge (sd_forge_lora)", version_range=VERSION_RANGE,
    sources=("lllyasviel/stable-diffusion-webui-forge: extensions-builtin/sd_forge_lora/networks.py",
             "lllyasviel/stable-diffusion-webui-forge: extensions-builtin/sd_forge_lora/network.py",
             "lllyasviel/stable-diffusion-webui-forge: packages_3rdparty/comfyui_lora_collection/lora.py"),
    assess=assess, families=("sd1", "sd2", "sdxl", "flux"))
