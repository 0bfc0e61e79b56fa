"""AUTOMATIC1111 stable-diffusion-webui, built-in Lora extension (``<lora:name:w>`` in a prompt).

Written from AUTOMATIC1111/stable-diffusion-webui ``extensions-builtin/Lora/networks.py`` (``load_network``,
``convert_diffusers_name_to_compvis``), ``network.py`` (``NetworkOnDisk.detect_version``), ``network_lora.py``
and ``ui_extra_networks_lora.py``, releases 1.7 - 1.10 (bundled embeddings from 1.7, DoRA from 1.9). A1111 cannot
run here; these rules re-implement its matching:

* each key is split at its FIRST dot: the part before must be a kohya name (``lora_unet_…``, ``lora_te_…``,
  ``lora_te1_…``, ``lora_te2_…``); dotted keys (peft, diffusers, attention processors) never match. UNet names
  may use diffusers or LDM/SGM block names; CLIP encoder layers need ``text_model`` (SD1: ``lora_te_`` or
  ``lora_te1_``; SD2: ``lora_te_``; SDXL: ``lora_te1_``/``lora_te2_``). Unmatched keys are printed as
  "Failed to match keys when loading network" and the rest is applied;
* a matched module whose parts no module type accepts (LoRA needs both ``lora_up`` and ``lora_down``; LoHa
  the four ``hada_w*``; LoKr both halves; full ``diff``) raises ``AssertionError``: the whole network fails;
* LoRA factors are reshaped to the target (1x1 conv <-> Linear both load); ``bundle_emb.*`` loads as
  textual-inversion embeddings;
* the SD version shown in the UI comes from metadata only: ``ss_base_model_version`` starting ``sdxl_`` ->
  SDXL, ``ss_v2 == "True"`` -> SD2, any other metadata -> SD1, none -> Unknown; with the default settings a
  LoRA whose version differs from the loaded checkpoint is hidden from the Lora tab (a sidecar .json
  "sd version" overrides it).

SD3/SD3.5 and FLUX.1 are not modelled (LRG608).

Checked by tests/test_consumers_rules.py on files whose outcome this code determines (goldens and edits).
"""

from __future__ import annotations

from . import Assessment, Consumer
from .facts import ABSENT, MISMATCH, AdapterFacts, ModuleFacts
from .names import clip_layer, flat, kohya_te_prefixes, module_of_keys, sgm_path

VERSION_RANGE = "1.7 - 1.10"
BUNDLED = "bundle_emb"
_FIX = "run `lorareg fix --for a1111`"
# network_part sets each module type accepts (network_lora / _hada / _lokr / _full / _ia3 / _norm / _glora / _oft).
_LOKR_1 = ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"})
_LOKR_2 = ({"lokr_w2"}, {"lokr_w2_a", "lokr_w2_b"})


def accepted(parts: set[str]) -> bool:
    if {"lora_up.weight", "lora_down.weight"} <= parts:
        return True
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= parts:
        return True
    if any(p <= parts for p in _LOKR_1) and any(p <= parts for p in _LOKR_2):
        return True
    return bool(parts & {"diff", "weight", "w_norm", "a1.weight", "oft_blocks", "oft_diag"})


def module_names(module: ModuleFacts, family: str | None) -> set[str]:
    path, component = module.module.path, module.component
    if component == "unet":
        if path.startswith("add_embedding"):
            return set()  # no compvis name for SDXL's label_emb in diffusers spelling
        sgm = sgm_path(path, family)
        return {f"lora_unet_{flat(path)}"} | ({f"lora_unet_{flat(sgm)}"} if sgm else set())
    layer = clip_layer(path)
    if layer is None:
        return set()
    name = f"text_model_encoder_layers_{layer[0]}_{flat(layer[1])}"
    if family == "sdxl":
        return {f"{p}_{name}" for p in kohya_te_prefixes(component, family)}
    if component != "text_encoder":
        return set()
    return {f"lora_te_{name}"} | ({f"lora_te1_{name}"} if family == "sd1" else set())


def sd_version(metadata) -> str:
    """NetworkOnDisk.detect_version: SDXL / SD2 / SD1 / Unknown from metadata alone."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


def check_version(a: Assessment, facts: AdapterFacts, shown: str, *, fix: str) -> None:
    want = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}.get(facts.family or "")
    if want is None or shown == want:
        return
    if shown == "Unknown":
        a.misfile(f"no metadata, so the SD version is Unknown: hidden where 'lora_hide_unknown_for_versions' "
                  f"lists {want}", hint=f"{fix} to write ss_base_model_version / ss_v2")
    else:
        a.misfile(f"metadata makes it {shown} but the weights are {want}: hidden from the Lora tab of {want} "
                  "checkpoints (and shown for the wrong ones)", hint=f"{fix} to write ss_base_model_version / ss_v2")


def assess(facts: AdapterFacts) -> Assessment:
    a = Assessment("a1111")
    owner = module_of_keys(facts.modules)
    parts: dict = {}
    unmatched = []
    for key in facts.keys:
        head, _, part = key.partition(".")
        module = owner.get(key)
        if head == BUNDLED:
            continue  # loaded as embeddings (1.7+)
        if module is not None and facts.modules[module].fit != ABSENT \
                and head in module_names(facts.modules[module], facts.family):
            parts.setdefault(module, set()).add(part)
        else:
            unmatched.append(key)
    refused = [m for m, p in parts.items() if not accepted(p)]
    if refused:
        a.refuse(f"AssertionError: no module type accepts the keys of '{refused[0]}' "
                 f"({', '.join(sorted(parts[refused[0]]))}): the network fails to load", key=str(refused[0]),
                 hint="a factor is missing or misspelled; re-export the adapter")
    mismatched = [m for m in parts if facts.modules[m].fit == MISMATCH]
    if mismatched:
        a.refuse(f"{len(mismatched)} modules whose delta does not fit the weight, e.g. '{mismatched[0]}': "
                 "generation fails with a RuntimeError", key=str(mismatched[0]),
                 hint="the adapter was made for another base model")
    dead = [m.module for m in facts.modules.values() if m.module not in parts]
    a.skip([m for m in dead if facts.modules[m].fit == ABSENT], "the model has no such module")
    a.skip([m for m in dead if facts.modules[m].fit != ABSENT], "their keys are not kohya names A1111 maps "
           "('Failed to match keys')", hint=f"{_FIX} to write kohya keys")
    a.ignore([k for k in unmatched if k not in owner], "fit no module ('Failed to match keys')")
    check_version(a, facts, sd_version(facts.metadata), fix=_FIX)
    return a


CONSUMER = Consumer(
    name="a1111", title="AUTOMATIC1111 webui (built-in Lora)", version_range=VERSION_RANGE,
    sources=("AUTOMATIC1111/stable-diffusion-webui: extensions-builtin/Lora/networks.py",
             "AUTOMATIC1111/stable-diffusion-webui: extensions-builtin/Lora/network.py",
             "AUTOMATIC1111/stable-diffusion-webui: extensions-builtin/Lora/ui_extra_networks_lora.py"),
    assess=assess, families=("sd1", "sd2", "sdxl"))
