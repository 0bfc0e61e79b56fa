"""diffusers ``pipe.load_lora_weights(file)`` for SD1/SD2 (``StableDiffusionLoraLoaderMixin``), SDXL
(``StableDiffusionXLLoraLoaderMixin``), SD3/SD3.5 (``SD3LoraLoaderMixin``) and FLUX.1 (``FluxLoraLoaderMixin``).

Written from huggingface/diffusers 0.42.1 (installed here), ``loaders/lora_pipeline.py`` (``lora_state_dict``,
``load_lora_weights``), ``loaders/lora_conversion_utils.py`` (``_maybe_map_sgm_blocks_to_diffusers``,
``_convert_non_diffusers_lora_to_diffusers``), ``loaders/peft.py`` (``load_lora_adapter``) and
``loaders/lora_base.py`` (``_load_lora_into_text_encoder``); the same flow holds since 0.32. In order:

1. keys containing ``dora_scale`` are dropped with a warning (DoRA loads as plain LoRA);
2. only when EVERY key starts with ``lora_te_``/``lora_unet_``/``lora_te1_``/``lora_te2_`` is the file read as
   kohya: SDXL pipelines map SGM block names first (and drop them when both spellings are present); then
   each ``<name>.lora_down.weight`` takes its ``lora_up``/``alpha``, and ANY key left over (LoHa/LoKr
   factors, ``lora_mid``, ``diff``, a stray suffix) raises ``ValueError: ... not correctly renamed``;
3. otherwise every key must contain ``lora`` (``ValueError: Invalid LoRA checkpoint``);
4. each component takes only keys starting with ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``: keys
   without that prefix (bare peft, ``base_model.model.``, legacy attention processors, kohya keys in a
   mixed file) are dropped silently ("No LoRA keys associated ...");
5. peft injects the modules and loads the state dict: a module the model lacks is an "unexpected key"
   warning; a factor whose shape differs (1x1-conv factors on SD2's Linear projections, 2-D factors on
   SD1's 1x1-conv projections, other sizes) raises ``RuntimeError: size mismatch`` for the whole file.
   CLIP paths without ``text_model.`` load only with transformers >= 5.6 (which folded ``CLIPTextModel``'s
   ``text_model`` level away; diffusers strips the level).

SD3 and Flux (same flow, other components and conversions):

* SD3 pipelines load ``transformer.`` / ``text_encoder.`` / ``text_encoder_2.`` keys (CLIP-L, CLIP-G; never T5)
  and convert nothing: a kohya file (sd-scripts ``lora_unet_joint_blocks_…``) matches no prefix and loads
  NOTHING, silently;
* Flux pipelines load ``transformer.`` / ``text_encoder.`` keys (no T5); a file with any ``.lora_down.weight``
  key goes through ``_convert_kohya_flux_lora_to_diffusers`` (sd-scripts ``lora_flux`` names), which raises on
  keys it cannot place (T5 ``lora_te3_``, LoHa/LoKr factors).

Checked by oracle tests (tests/test_consumers_diffusers.py): the verdict (outcome, modules applied) equals what
the installed diffusers does with tiny pipelines for every golden and for derived files.
"""

from __future__ import annotations

from functools import cache

from importlib.metadata import PackageNotFoundError, version

from . import Assessment, Consumer, Verified
from .facts import ABSENT, FITS, UNCHECKED, AdapterFacts

VERSION_RANGE = "0.32 - 0.42"
KOHYA_PREFIXES = ("lora_te_", "lora_unet_", "lora_te1_", "lora_te2_")
KOHYA_PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha")
SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
DIFFUSERS_BLOCKS = ("down_blocks", "mid_block", "up_blocks")
PIPELINE_COMPONENTS = {"sd1": ("unet", "text_encoder"), "sd2": ("unet", "text_encoder"),
                       "sdxl": ("unet", "text_encoder", "text_encoder_2"),
                       "sd3": ("transformer", "text_encoder", "text_encoder_2"),
                       "flux": ("transformer", "text_encoder")}
_CONVERTS_KOHYA = ("sd1", "sd2", "sdxl")  # Flux has its own converter; SD3 has none
_FIX = "run `lorareg fix --for diffusers`"


@cache  # read package metadata once per process: the verdict runs for every file of a scan
def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _major_minor(text: str | None) -> tuple[int, int] | None:
    try:
        major, minor = (int(x) for x in (text or "").split(".")[:2])
    except ValueError:
        return None
    return major, minor


def assess(facts: AdapterFacts) -> Assessment:
    a = Assessment("diffusers")
    installed = _major_minor(_installed("diffusers"))
    if installed is not None and not (0, 32) <= installed <= (0, 42):
        a.note("consumer-version-outside-rules", f"installed diffusers {_installed('diffusers')} is outside the "
               f"{VERSION_RANGE} range these rules were written from")
    keys = [k for k in facts.keys if "dora_scale" not in k]
    a.lose_dora(m.module for m in facts.modules.values() if m.dora and any("dora_scale" in k for k in m.keys))
    if facts.family == "flux" and any(k.endswith(".lora_down.weight") for k in keys):
        _kohya_flux(a, facts, keys)
    elif keys and all(k.startswith(KOHYA_PREFIXES) for k in keys) and facts.family not in ("sd3", "flux"):
        _kohya(a, facts, keys)
    else:
        _prefixed(a, facts, keys)
    if not a.fatal:
        _components_and_shapes(a, facts)
    return a


def _kohya(a: Assessment, facts: AdapterFacts, keys: list[str]) -> None:
    has_down = {k.split(".", 1)[0] for k in keys if k.endswith(".lora_down.weight")}
    leftovers = [k for k in keys if not (k.endswith(KOHYA_PARTS) and k.split(".", 1)[0] in has_down)]
    if leftovers:
        algos = sorted({m.algo if not m.mid else "locon-tucker" for m in facts.modules.values()
                        if set(m.keys) & set(leftovers)} - {"lora"})
        what = f" ({'/'.join(algos)} factors it cannot convert)" if algos else ""
        a.refuse(f"ValueError: {len(leftovers)} keys 'have not been correctly renamed'{what}, e.g. {leftovers[0]!r}",
                 key=leftovers[0], hint=f"{_FIX} to turn them into plain LoRA" if algos else
                 "remove the keys, or convert the adapter with `lorareg convert`")
        return
    a.ignore([k for k in facts.unknown_keys if k in keys], "fit no module (unexpected keys warning)")
    sgm = [m.module for m in facts.modules.values() if any(b in k for k in m.keys for b in SGM_BLOCKS)]
    if sgm and facts.family in ("sd1", "sd2"):
        a.skip(sgm, "SGM block names are mapped for SDXL pipelines only", hint=_FIX)
    elif sgm and facts.family == "sdxl" and any(b in k for k in keys for b in DIFFUSERS_BLOCKS):
        a.skip(sgm, "SGM names dropped because the file also uses diffusers block names", hint=_FIX)


def _kohya_flux(a: Assessment, facts: AdapterFacts, keys: list[str]) -> None:
    """``_convert_kohya_flux_lora_to_diffusers``: transformer (``lora_unet_``) and CLIP (``lora_te1_``) LoRA
    modules convert; any other key is left over and raises."""
    converts = [m for m in facts.modules.values() if m.key_format == "kohya" and m.algo == "lora" and not m.mid
                and m.component in ("transformer", "text_encoder")]
    done = {k for m in converts for k in m.keys}
    leftovers = [k for k in keys if k not in done]
    if leftovers:
        a.refuse(f"ValueError: {len(leftovers)} keys are left after the kohya Flux conversion, e.g. "
                 f"{leftovers[0]!r}", key=leftovers[0], hint=f"{_FIX} to write diffusers keys")


def _prefixed(a: Assessment, facts: AdapterFacts, keys: list[str]) -> None:
    no_lora = [k for k in keys if "lora" not in k]
    if no_lora:
        a.refuse(f"ValueError: Invalid LoRA checkpoint: {len(no_lora)} keys without 'lora', e.g. {no_lora[0]!r}",
                 key=no_lora[0], hint="remove the foreign keys (bundled embeddings?) or ship them separately")
        return
    prefixes = tuple(f"{c}." for c in PIPELINE_COMPONENTS.get(facts.family or "", PIPELINE_COMPONENTS["sdxl"]))
    unprefixed = [m.module for m in facts.modules.values() if not all(k.startswith(prefixes) for k in m.keys)]
    kohya = [m for m in unprefixed if facts.modules[m].key_format == "kohya"]
    bare = [m for m in unprefixed if m not in kohya]
    if kohya:
        a.skip(kohya, "kohya keys in a file that is not all kohya are dropped", hint="convert to one format: "
               f"{_FIX}")
    if bare:
        a.skip(bare, "keys without a 'unet.'/'text_encoder.' prefix are dropped", hint=f"{_FIX} to add the prefixes")
    a.ignore([k for k in facts.unknown_keys if k in keys], "fit no module (dropped or unexpected)")


def _components_and_shapes(a: Assessment, facts: AdapterFacts) -> None:
    wanted = PIPELINE_COMPONENTS.get(facts.family or "")
    if wanted:
        a.skip([m.module for m in facts.modules.values() if m.component not in wanted],
               f"the {facts.family} pipeline has no such component")
    a.skip([m.module for m in facts.modules.values() if m.fit == ABSENT], "the model has no such module "
           "(unexpected keys warning)")
    if (_major_minor(_installed("transformers")) or (5, 6)) < (5, 6):
        a.skip([m.module for m in facts.modules.values() if m.component.startswith("text_encoder")
                and not any("text_model" in k for k in m.keys)], "CLIP names lack 'text_model.' "
               "(transformers < 5.6 needs it: 5.6 folded CLIPTextModel's text_model level away)")
    bad = [m for m in facts.modules.values() if m.module not in a.skipped and m.fit not in (FITS, ABSENT, UNCHECKED)]
    if bad:
        kinds = sorted({m.fit for m in bad})
        a.refuse(f"RuntimeError: size mismatch for {len(bad)} modules ({', '.join(kinds)}), e.g. '{bad[0].module}': "
                 "the whole file is rejected", key=str(bad[0].module),
                 hint=f"{_FIX} to reshape them" if set(kinds) <= {"conv-shaped-linear", "linear-shaped-conv"}
                 else "the adapter was made for another base model")


CONSUMER = Consumer(
    name="diffusers", title="diffusers `load_lora_weights`", version_range=VERSION_RANGE,
    verified=dict.fromkeys(("sd1", "sd2", "sdxl", "sd3", "flux"), Verified(
        "diffusers", "0.42.1", "diffusers 0.42.1 `load_lora_weights` on tiny pipelines",
        ("tests/test_oracle_diffusers.py::test_diffusers_verdict_equals_a_real_load",
         "tests/test_oracle_diffusers.py::test_fix_for_diffusers_output_loads"))),
    sources=("huggingface/diffusers: src/diffusers/loaders/lora_pipeline.py",
             "huggingface/diffusers: src/diffusers/loaders/lora_conversion_utils.py",
             "huggingface/diffusers: src/diffusers/loaders/peft.py"),
    assess=assess)
