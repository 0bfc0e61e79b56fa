"""InvokeAI (6.x) LoRA models for SD1/SD2/SDXL (here), FLUX.1 (``invokeai_flux.py``) and SD3 (refused):
``LoRALoader._load_model`` -> ``LayerPatcher.apply_smart_model_patches``.

Written from invoke-ai/InvokeAI 6.14.2 (installed here without its dependencies): ``backend/model_manager/load/
model_loaders/lora.py`` (``_load_model``), ``backend/patches/lora_conversions/sd_lora_conversion_utils.py``,
``sdxl_lora_conversion_utils.py``, ``peft_adapter_utils.py``, ``backend/patches/layers/utils.py``
(``any_lora_layer_from_state_dict``), ``backend/patches/layer_patcher.py`` and the prefixes of
``app/invocations/compel.py`` / ``denoise_latents.py``. In order:

* ``bundle_emb.*`` keys are dropped; peft adapter names (``lora_A.default.weight``) are normalized;
* SDXL: every key must start with ``lora_unet_``, ``lora_te1_`` or ``lora_te2_`` (``ValueError: Unrecognized SDXL
  LoRA key prefix``: peft/diffusers SDXL files fail), and SGM UNet names are converted to diffusers names (a file
  mixing both spellings raises);
* keys are grouped at their FIRST dot; a group that is no LoRA/LoCon/LoHa/LoKr/full/IA3/norm/DoRA layer raises
  ``ValueError: Unsupported lora format`` and nothing loads (peft ``base_model.model.…``, diffusers ``unet.…``,
  attention processors: the whole stem before the first dot is one group);
* each model is patched only with the layers under its prefix: UNet ``lora_unet_``, CLIP ``lora_te_`` (SD1/SD2),
  ``lora_te1_``/``lora_te2_`` (SDXL); other layers are silently unused;
* the flattened name is walked through the model (diffusers UNet, transformers CLIP): a name that reaches no
  module is logged "Failed to find module" and skipped. InvokeAI 6.14 pins transformers >=5.5,<5.6, whose CLIP
  encoders keep the ``text_model`` level, so CLIP keys must spell it (``lora_te_text_model_encoder_…``, as
  sd-scripts writes them); keys exported under transformers >= 5.6 without it find nothing. SD1/SD2 SGM names
  are not converted and find nothing;
* deltas are reshaped to the weight (1x1 conv <-> Linear load); a delta of another size raises ``RuntimeError``.

FLUX.1: ``invokeai_flux.py`` (its own format chain). SD3/SD3.5: ``_load_model`` has no branch for an SD3 base and
raises ``ValueError: Unsupported LoRA base model``: nothing loads.

Checked by tests/test_oracle_invokeai.py: the verdict (outcome, applied modules, unused keys) equals what InvokeAI's
own functions do on the tiny models for every golden, derived edit and ``fix`` output, FLUX.1 files in every
format included (InvokeAI's own BFL-layout ``Flux`` model, tiny), and the SD3 refusal is read from its loader.
"""

from __future__ import annotations

from . import Assessment, Consumer, Verified
from .facts import ABSENT, MISMATCH, AdapterFacts
from .invokeai_flux import assess_flux

VERSION_RANGE = "6.14"
PREFIXES = {"sd1": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
            "sd2": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
            "sdxl": {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}
SDXL_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_")
# Leaves that make a group a layer InvokeAI knows (any_lora_layer_from_state_dict).
LAYER_MARKERS = frozenset({"dora_scale", "dora_magnitude", "lora_up.weight", "hada_w1_a", "lokr_w1", "lokr_w1_a",
                           "diff", "on_input", "w_norm"})
BUNDLED = "bundle_emb"
_SGM = ("input_blocks", "middle_block", "output_blocks")
_FIX = "run `lorareg fix --for invokeai` to write the kohya keys it reads"


def assess(facts: AdapterFacts) -> Assessment:
    a = Assessment("invokeai")
    family = facts.family or "sd1"
    keys = [k for k in facts.keys if not k.startswith(BUNDLED)]
    a.ignore([k for k in facts.keys if k.startswith(BUNDLED)], "are bundled embeddings InvokeAI drops")
    if family == "sd3":
        a.refuse("ValueError: Unsupported LoRA base model: InvokeAI 6.14 has no SD3 LoRA loader (its LoRA loader "
                 "handles SD1, SD2, SDXL, FLUX and newer families, not SD3/SD3.5)",
                 hint="load SD3 LoRAs with diffusers or ComfyUI")
        return a
    if family == "flux":
        assess_flux(a, facts, keys, _FIX)
        return a
    if family == "sdxl":
        foreign = [k for k in keys if not k.startswith(SDXL_PREFIXES)]
        if foreign:
            a.refuse(f"ValueError: Unrecognized SDXL LoRA key prefix: {foreign[0]!r} ({len(foreign)} such keys)",
                     key=foreign[0], hint=_FIX)
            return a
    groups: dict[str, set[str]] = {}
    for key in keys:
        stem, _, leaf = key.partition(".")
        groups.setdefault(stem, set()).add(leaf)
    unsupported = sorted(stem for stem, leaves in groups.items() if not leaves & LAYER_MARKERS)
    if unsupported:
        a.refuse(f"ValueError: Unsupported lora format for {len(unsupported)} layers, e.g. {unsupported[0]!r} "
                 "(keys are grouped at their first dot)", key=unsupported[0], hint=_FIX)
        return a
    prefixes = PREFIXES[family]
    for m in facts.modules.values():
        stem = m.keys[0].partition(".")[0]
        prefix = prefixes.get(m.component)
        if prefix is None:
            a.skip([m.module], f"the {family} pipeline has no {m.component}")
        elif not stem.startswith(prefix):
            a.skip([m.module], f"InvokeAI patches each model only with its own prefix "
                               f"({', '.join(f'{c} {p}' for c, p in prefixes.items())})",
                   hint=_FIX)
        elif m.component == "unet" and family != "sdxl" and any(b in stem for b in _SGM) and m.fit != ABSENT:
            a.skip([m.module], "SD1/SD2 SGM block names are not converted and find no module ('Failed to find "
                               "module for LoRA layer key')", hint=_FIX)
        elif m.fit == ABSENT:
            a.skip([m.module], "the model has no such module ('Failed to find module for LoRA layer key')")
        elif m.component.startswith("text_encoder") and "_text_model_" not in stem:
            a.skip([m.module], "CLIP names without 'text_model' find no module in the transformers InvokeAI pins "
                               "('Failed to find module for LoRA layer key')",
                   hint=_FIX)
    mismatched = [m for m in facts.modules.values() if m.module not in a.skipped and m.fit == MISMATCH]
    if mismatched:
        a.refuse(f"RuntimeError: the delta of {len(mismatched)} modules does not fit the weight, e.g. "
                 f"'{mismatched[0].module}'", key=str(mismatched[0].module),
                 hint="the adapter was made for another base model")
    owner = {k for m in facts.modules.values() for k in m.keys}
    a.ignore([k for k in keys if k not in owner], "fit no module ('Failed to find module')")
    return a


CONSUMER = Consumer(
    name="invokeai", title="InvokeAI LoRA loader", version_range=VERSION_RANGE,
    sources=("invoke-ai/InvokeAI: invokeai/backend/model_manager/load/model_loaders/lora.py",
             "invoke-ai/InvokeAI: invokeai/backend/patches/lora_conversions/sdxl_lora_conversion_utils.py",
             "invoke-ai/InvokeAI: invokeai/backend/patches/layers/utils.py",
             "invoke-ai/InvokeAI: invokeai/backend/patches/layer_patcher.py",
             "invoke-ai/InvokeAI: invokeai/backend/patches/lora_conversions/flux_*_lora_conversion_utils.py"),
    assess=assess, families=("sd1", "sd2", "sdxl", "sd3", "flux"),
    verified={**dict.fromkeys(("sd1", "sd2", "sdxl"), Verified(
        "invokeai", "6.14.2", "InvokeAI 6.14.2 conversion and patching functions",
        ("tests/test_oracle_invokeai.py::test_invokeai_verdict_equals_its_code",))),
        "flux": Verified("invokeai", "6.14.2", "InvokeAI 6.14.2 FLUX format chain on its own FLUX model",
                         ("tests/test_oracle_invokeai.py::test_invokeai_flux_verdict_equals_its_code",
                          "tests/test_oracle_invokeai.py::test_fixed_for_invokeai_flux_agrees_and_loads")),
        "sd3": Verified("invokeai", "6.14.2", "InvokeAI 6.14.2 LoRA loader (no SD3 branch: read from its source)",
                        ("tests/test_oracle_invokeai.py::test_sd3_has_no_invokeai_lora_loader",))})
