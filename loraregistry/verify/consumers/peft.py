"""peft on one model: ``PeftModel.from_pretrained(model, folder)`` / ``set_peft_model_state_dict(model, sd)``.

Written from huggingface/peft 0.21.2 (installed here) ``utils/save_and_load.py`` (``set_peft_model_state_dict``:
keys relative to the model, ``base_model.model.`` prefixed or not; adapter names inserted before loading with
``load_state_dict(strict=False)``) and ``tuners/lora/layer.py`` (LoRA ``lora_A``/``lora_B``, DoRA
``lora_magnitude_vector``). The rules hold since peft 0.9:

* only peft keys (``lora_A``/``lora_B``, ``lora_magnitude_vector``, ``lora_B.bias``) load; kohya, diffusers
  ``.lora.down`` and attention-processor keys match no parameter, so the adapter stays at its zero init;
* the keys must be relative to the one model peft wraps: a diffusers file's ``unet.``/``text_encoder.``
  prefixes match nothing (load it with diffusers, or strip the prefix per component);
* a module the model lacks is an unexpected key; a factor whose shape differs (1x1-conv factors on a Linear,
  2-D factors on a 1x1 Conv2d) raises ``RuntimeError: size mismatch``;
* LoHa/LoKr in kohya keys are not peft's ``hada_``/``lokr_`` parameters (peft needs its own config for them).

Checked by tests/test_oracle_diffusers.py: the verdict's outcome and applied modules equal what peft's
``set_peft_model_state_dict`` does on tiny models for every oracle case (SD1/SD2/SDXL/SD3/FLUX).
"""

from __future__ import annotations

from . import Assessment, Consumer, Verified
from .facts import ABSENT, FITS, UNCHECKED, AdapterFacts

VERSION_RANGE = "0.9 - 0.21"
_FIX = "run `lorareg fix --for peft`"
# A file for several models has no peft spelling that loads in one: no command can repair that.
_ONE_MODEL = "peft wraps one model and this file holds several: load it with diffusers, or save each model's own"


def assess(facts: AdapterFacts) -> Assessment:
    a = Assessment("peft")
    fix = _FIX if len(facts.components) <= 1 else _ONE_MODEL
    not_peft = [m.module for m in facts.modules.values() if m.key_format != "peft"]
    a.skip(not_peft, "their keys are not peft parameter names", hint=fix)
    prefixed = [m.module for m in facts.modules.values() if m.key_format == "peft"
                and all(k.startswith(f"{m.component}.") for k in m.keys)]
    a.skip(prefixed, "their keys carry a diffusers component prefix ('unet.'), which peft's model lacks",
           hint=f"{_FIX} to strip it" if fix == _FIX else _ONE_MODEL)
    components = {m.component for m in facts.modules.values() if m.module not in a.skipped}
    if len(components) > 1:
        a.note("consumer-skips-modules", f"keys for {len(components)} components: peft wraps one model at a time",
               hint="load each component's keys into its own model")
    a.skip([m.module for m in facts.modules.values() if m.fit == ABSENT], "the model has no such module")
    bad = [m for m in facts.modules.values() if m.module not in a.skipped and m.fit not in (FITS, ABSENT, UNCHECKED)]
    if bad:
        a.refuse(f"RuntimeError: size mismatch for {len(bad)} modules ({bad[0].fit}), e.g. '{bad[0].module}'",
                 key=str(bad[0].module), hint=fix)
    a.ignore(list(facts.unknown_keys), "are unexpected keys")
    return a


CONSUMER = Consumer(
    name="peft", title="peft `set_peft_model_state_dict`", version_range=VERSION_RANGE,
    sources=("huggingface/peft: src/peft/utils/save_and_load.py", "huggingface/peft: src/peft/tuners/lora/layer.py"),
    assess=assess,
    verified=dict.fromkeys(("sd1", "sd2", "sdxl", "sd3", "flux"), Verified(
        "peft", "0.21.2", "peft 0.21.2 `set_peft_model_state_dict` on tiny models",
        ("tests/test_oracle_diffusers.py::test_peft_verdict_equals_a_real_load",))))
