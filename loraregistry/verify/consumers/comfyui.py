"""ComfyUI ``LoraLoader`` (``comfy.sd.load_lora_for_models`` -> ``comfy.lora.load_lora`` + ``calculate_weight``)
for SD1/SD2/SDXL checkpoints.

Written from comfyanonymous/ComfyUI ``comfy/lora.py`` at commit 41444b5 (2024, v0.2) and ``comfy/lora_convert.py``
(2025); the key maps are the same in the copy Forge ships (packages_3rdparty/comfyui_lora_collection/lora.py,
2025-06). ComfyUI cannot run here, so these rules re-implement its key matching on the file's keys:

* ``model_lora_keys_unet``: a UNet module is found under ``lora_unet_<diffusers name>``, ``lora_unet_<LDM/SGM
  name>``, ``lycoris_<diffusers name>`` or ``[unet.]<diffusers path>`` where attention projections are spelled
  ``.processor.to_q`` / ``.processor.to_out`` (so peft/diffusers keys ``unet.….attn1.to_q.lora_A.weight`` do NOT
  match; proj_in/proj_out/ff do);
* ``model_lora_keys_clip``: CLIP encoder layers (q/k/v/out_proj, fc1, fc2) under ``lora_te_`` / ``lora_te1_`` /
  ``text_encoder.`` + ``text_model…`` (CLIP-L; CLIP-H for SD2), and ``lora_te2_`` / ``text_encoder_2.`` for SDXL's
  CLIP-G; paths without ``text_model`` do not match;
* ``load_lora``: a matched stem takes ``.lora_up/.lora_down(.lora_mid).weight``, ``_lora.up/down.weight``,
  ``.lora_B/.lora_A.weight``, ``.lora.up/down.weight``, ``.lora_linear_layer.up/down.weight``, ``.alpha``,
  ``.dora_scale``, LoHa ``hada_*``, LoKr ``lokr_*``, ``diff``/``diff_b``; every other key is logged
  "lora key not loaded" (peft's ``lora_magnitude_vector`` too, so peft DoRA loads as plain LoRA);
* ``calculate_weight``: the delta is ``reshape``d to the weight, so 1x1-conv factors on a Linear (and the reverse)
  load; a delta whose size differs is logged "ERROR lora …" and that weight is left unchanged.

Checked by tests/test_consumers_rules.py on files whose outcome this code determines (goldens and edits).
"""

from __future__ import annotations

from . import Assessment, Consumer
from .facts import ABSENT, MISMATCH, AdapterFacts, ModuleFacts
from .names import clip_layer, flat, module_of_keys, sgm_path, stem

VERSION_RANGE = "2024-09 (v0.2) - 2025"
PARTS = (".alpha", ".dora_scale", ".reshape_weight", ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight",
         "_lora.up.weight", "_lora.down.weight", ".lora_B.weight", ".lora_A.weight", ".lora.up.weight",
         ".lora.down.weight", ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight",
         ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2", ".lokr_w1", ".lokr_w2",
         ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2", ".diff", ".diff_b", ".w_norm",
         ".b_norm", ".set_weight")
# Parts that carry the delta; a module whose only loaded keys are alpha/dora_scale applies nothing.
_SCALARS = (".alpha", ".dora_scale", ".reshape_weight")
_FIX = "run `lorareg fix --for comfyui`"


def module_names(module: ModuleFacts, family: str | None) -> set[str]:
    """The stems ComfyUI's key maps give this module."""
    path, component = module.module.path, module.component
    if component == "unet":
        names = {f"lora_unet_{flat(path)}", f"lycoris_{flat(path)}"}
        sgm = sgm_path(path, family)
        if sgm:
            names.add(f"lora_unet_{flat(sgm)}")
        processor = path.replace(".to_", ".processor.to_")
        processor = processor[:-2] if processor.endswith(".to_out.0") else processor
        return names | {processor, f"unet.{processor}"}
    layer = clip_layer(path)
    if layer is None or family not in ("sd1", "sd2", "sdxl"):
        return set()
    b, c = layer
    flat_name = f"text_model_encoder_layers_{b}_{flat(c)}"
    if component == "text_encoder_2":
        return {f"lora_te2_{flat_name}", f"text_encoder_2.{path}"} if family == "sdxl" else set()
    return {f"lora_te_{flat_name}", f"lora_te1_{flat_name}", f"text_encoder.{path}"}


def assess(facts: AdapterFacts) -> Assessment:
    return assess_keys(Assessment("comfyui"), facts, fix=_FIX)


def assess_keys(a: Assessment, facts: AdapterFacts, *, fix: str) -> Assessment:
    """ComfyUI's key matching (shared with Forge, which uses the same maps)."""
    owner = module_of_keys(facts.modules)
    loaded: dict[str, set[str]] = {}
    not_loaded = []
    for key in facts.keys:
        module = owner.get(key)
        found = stem(key, PARTS)
        known = module is not None and facts.modules[module].fit != ABSENT
        if known and found and found[0] in module_names(facts.modules[module], facts.family):
            loaded.setdefault(module, set()).add(found[1])
        else:
            not_loaded.append(key)
    dead = [m.module for m in facts.modules.values() if not set(loaded.get(m.module, ())) - set(_SCALARS)]
    a.skip([m for m in dead if facts.modules[m].fit == ABSENT], "the model has no such module ('lora key not "
           "loaded')")
    a.skip([m for m in dead if facts.modules[m].fit != ABSENT], "their names are not in ComfyUI's key map ('lora "
           "key not loaded')", hint=f"{fix} to write kohya keys")
    a.skip([m.module for m in facts.modules.values() if m.fit == MISMATCH], "their delta does not fit the weight "
           "('ERROR lora', weight left unchanged)", hint="the adapter was made for another base model")
    a.lose_dora(m.module for m in facts.modules.values() if m.dora and ".dora_scale" not in loaded.get(m.module, ()))
    live = set(owner) - {k for m in dead for k in facts.modules[m].keys}
    a.ignore([k for k in not_loaded if k in live or k not in owner], "are not loaded ('lora key not loaded')")
    return a


CONSUMER = Consumer(
    name="comfyui", title="ComfyUI `LoraLoader`", version_range=VERSION_RANGE,
    sources=("comfyanonymous/ComfyUI: comfy/lora.py", "comfyanonymous/ComfyUI: comfy/lora_convert.py"),
    assess=assess)
