"""kohya-ss sd-scripts ``networks/lora.py``: ``create_network_from_weights`` + ``LoRANetwork.load_weights``
(what ``--network_weights``, ``gen_img.py`` and the merge scripts use for ``--network_module networks.lora``).

Written from kohya-ss/sd-scripts main (2026-02, commit 48d368f) ``networks/lora.py`` and
``library/model_util.py``; the rules hold since 2023 (v0.6). sd-scripts cannot be installed here (not on PyPI);
these rules re-implement what the code does:

* only keys containing ``lora_down`` define modules (their rank), ``alpha`` their scale; a module is created
  only where its kohya name (prefix + sd-scripts module path, ``.`` -> ``_``) names a Linear/Conv2d inside
  Transformer2DModel, ResnetBlock2D, Downsample2D, Upsample2D (UNet) or CLIPAttention/CLIPMLP (text
  encoders): conv_in/conv_out/time_embedding/add_embedding never load. SD1/SD2 use diffusers block names
  (``lora_te_`` for CLIP), SDXL the SGM names (``lora_te1_``/``lora_te2_``; diffusers-named SDXL keys are
  converted first). CLIP names need ``text_model``;
* weights are loaded with ``load_state_dict(strict=False)``: keys of modules that were not created (LoHa,
  LoKr, full, foreign keys, ``dora_scale``) are silently unexpected; a shape that differs raises
  ``RuntimeError`` for the whole network. sd-scripts builds SD1 AND SD2 with 1x1-conv projections
  (``unet_use_linear_projection_in_v2=False``) and SDXL with Linear ones, so SD2 needs 4-D proj factors
  and 2-D ones fail; a LoCon Tucker ``lora_mid`` (3x3 conv whose down is 1x1) fails the same way.

SD3/SD3.5 and FLUX.1 are trained with ``networks.lora_sd3`` / ``networks.lora_flux``, which these rules do not
model: such files answer "not modelled" (LRG608).

Checked by tests/test_consumers_rules.py on files whose outcome this code determines (goldens and edits).
"""

from __future__ import annotations

import re

from . import Assessment, Consumer
from .facts import ABSENT, CONV_SHAPED_LINEAR, FITS, LINEAR_SHAPED_CONV, AdapterFacts, ModuleFacts
from .names import clip_layer, flat, kohya_te_prefixes, sgm_path

VERSION_RANGE = "v0.6 (2023) - main (2026-02)"
_UNET_TARGETS = re.compile(r"(down_blocks|up_blocks)\.\d+\.(attentions|resnets|downsamplers|upsamplers)\.\d+\..+"
                           r"|mid_block\.(attentions|resnets)\.\d+\..+")
_FIX = "run `lorareg fix --for kohya`"


def module_names(module: ModuleFacts, family: str | None) -> set[str]:
    path, component = module.module.path, module.component
    if component == "unet":
        if not _UNET_TARGETS.fullmatch(path):
            return set()
        if family == "sdxl":
            sgm = sgm_path(path, family)  # diffusers names are converted to these before matching
            return {f"lora_unet_{flat(path)}"} | ({f"lora_unet_{flat(sgm)}"} if sgm else set())
        return {f"lora_unet_{flat(path)}"}
    if clip_layer(path) is None or (component == "text_encoder_2" and family != "sdxl"):
        return set()
    return {f"{p}_{flat(path)}" for p in kohya_te_prefixes(component, family)}


def _kind_fits(module: ModuleFacts, family: str | None) -> bool:
    """Shapes against sd-scripts' own UNet, whose SD2 projections are 1x1 convs (diffusers': Linear)."""
    sd2_proj = family == "sd2" and module.module.path.endswith((".proj_in", ".proj_out"))
    if sd2_proj:
        return module.fit == CONV_SHAPED_LINEAR
    return module.fit == FITS and not module.mid


def assess(facts: AdapterFacts) -> Assessment:
    a = Assessment("kohya")
    created = []
    for m in facts.modules.values():
        names = module_names(m, facts.family)
        downs = [k for k in m.keys if "lora_down" in k and k.split(".", 1)[0] in names]
        if downs and m.fit != ABSENT:
            created.append(m)
    made = {m.module for m in created}
    a.skip([m.module for m in facts.modules.values() if m.module not in made and m.algo != "lora"],
           "LoHa/LoKr/full modules are not networks.lora modules (use --network_module lycoris.kohya)")
    a.skip([m.module for m in facts.modules.values() if m.module not in made and m.fit == ABSENT],
           "the model has no such module")
    a.skip([m.module for m in facts.modules.values() if m.module not in made],
           "their names are not sd-scripts' kohya names", hint=f"{_FIX} to write kohya keys")
    bad = [m for m in created if m.fit != "unchecked" and not _kind_fits(m, facts.family)]
    if bad:
        a.refuse(f"RuntimeError: size mismatch in load_state_dict for {len(bad)} modules, e.g. '{bad[0].module}' "
                 f"({'Tucker lora_mid' if bad[0].mid else bad[0].fit})", key=str(bad[0].module),
                 hint=f"{_FIX} to reshape them" if all(m.fit in (FITS, CONV_SHAPED_LINEAR, LINEAR_SHAPED_CONV)
                                                       for m in bad) else "the adapter was made for another base")
    a.lose_dora(m.module for m in created if m.dora)
    a.ignore(list(facts.unknown_keys), "are unexpected and ignored")
    return a


CONSUMER = Consumer(
    name="kohya", title="kohya sd-scripts `networks.lora`", version_range=VERSION_RANGE,
    sources=("kohya-ss/sd-scripts: networks/lora.py", "kohya-ss/sd-scripts: library/model_util.py"),
    assess=assess, families=("sd1", "sd2", "sdxl"))
