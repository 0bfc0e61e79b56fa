"""InvokeAI 6.14 FLUX.1 LoRA rules: the LyCORIS-file branch of ``LoRALoader._load_model`` for a FLUX base.

Written from invoke-ai/InvokeAI 6.14.2 ``backend/model_manager/load/model_loaders/lora.py`` and
``backend/patches/lora_conversions/flux_*.py``, ``layers/merged_layer_patch.py``, ``layer_patcher.py``. The loader
asks each format detector in turn and the first that says yes converts the file to InvokeAI's BFL module names:

1. diffusers (every key ends ``lora_A.weight``/``lora_B.weight``/``lora.down.weight``/``lora.up.weight`` and the
   four marker keys ``single_transformer_blocks.0.attn.to_q`` / ``transformer_blocks.0.attn.add_q_proj`` (A and B)
   exist under ``transformer.`` or ``base_model.model.``): keys are grouped by cutting their last two segments;
   every group must be a FLUX.1 transformer module of the conversion table (19 double, 38 single blocks), else
   ``AssertionError`` (text-encoder keys, ``norm_out``, ``.lora.down`` spellings); a double block's q/k/v must
   all be there (``ValueError: Missing LoRA layer``). q/k/v (and single blocks' proj_mlp) are merged into the
   fused BFL weight at FLUX.1's fixed widths (3072; 12288): on a model of other widths the patch raises
   ``RuntimeError``;
2. kohya (every key matches sd-scripts' ``lora_unet_<block>_<n>_<module>``, ``lora_unet_final_layer_…``,
   ``lora_te1_text_model_encoder_layers_…`` (CLIP) or ``lora_te2_encoder_block_…`` (T5) patterns): the final
   layer is skipped ("incompatible with current model definition"), the rest is patched;
3. OneTrainer (``lora_transformer_…`` or ``transformer.double_blocks…`` keys) and FLUX Control LoRAs: their
   conversions are not modelled here (LRG608);
4. ai-toolkit / BFL (a key under ``diffusion_model.double_blocks.``/``single_blocks.``, no LyCORIS factor): keys
   are grouped by cutting their last two segments and ``lora_A``/``lora_B`` read as ``lora_down``/``lora_up``;
   groups outside ``diffusion_model.`` (``text_encoders.…``) are dropped with a warning; a group that is no
   LoRA layer (a ``.alpha`` key makes its own group) raises ``ValueError: Unsupported lora format``;
5. XLabs (every key ``double_blocks.<n>.processor.{qkv,proj}_lora{1,2}.{down,up}.weight``): image / text stream
   attention;
6. BFL PEFT/LyCORIS (``diffusion_model.`` or ``base_model.model.`` + BFL names, PEFT or LyCORIS factors);
7. anything else: ``ValueError: LoRA model is in unsupported FLUX format``.

The patches go onto the BFL transformer, the CLIP-L and the T5 encoder; a layer that names no module is skipped
("Failed to find module"), one whose delta has another number of elements is skipped with a warning.
"""

from __future__ import annotations

import re

from .facts import ABSENT, FITS, UNCHECKED, AdapterFacts

DIFFUSERS_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora.down.weight", "lora.up.weight")
DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.")
DIFFUSERS_MARKERS = ("single_transformer_blocks.0.attn.to_q.lora_A.weight",
                     "single_transformer_blocks.0.attn.to_q.lora_B.weight",
                     "transformer_blocks.0.attn.add_q_proj.lora_A.weight",
                     "transformer_blocks.0.attn.add_q_proj.lora_B.weight")
FLUX1_DOUBLE, FLUX1_SINGLE, FLUX1_WIDTH, FLUX1_MLP = 19, 38, 3072, 12288
_DOUBLE = ("norm1.linear", "norm1_context.linear", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
           "ff_context.net.2", "attn.to_out.0", "attn.to_add_out")
_MERGED_DOUBLE = (("attn.to_q", "attn.to_k", "attn.to_v"), ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))
_MERGED_SINGLE = {"attn.to_q": FLUX1_WIDTH, "attn.to_k": FLUX1_WIDTH, "attn.to_v": FLUX1_WIDTH,
                  "proj_mlp": FLUX1_MLP}
_TOP = ("time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
        "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
        "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
        "context_embedder", "x_embedder", "proj_out")
# sd-scripts' key patterns, as InvokeAI's detector matches them (re.match: from the start, not to the end)
KOHYA_PATTERNS = tuple(re.compile(p) for p in (
    r"lora_unet_(\w+_blocks)_(\d+)_"
    r"(img_attn|img_mlp|img_mod|txt_attn|txt_mlp|txt_mod|linear1|linear2|modulation)_?(.*)",
    r"lora_unet_final_layer_(linear|linear1|linear2)_?(.*)",
    r"lora_te1_text_model_encoder_layers_(\d+)_(mlp|self_attn)_(\w+)\.?.*",
    r"lora_te2_encoder_block_(\d+)_layer_(\d+)_(DenseReluDense|SelfAttention)_(\w+)_?(\w+)?\.?.*"))
XLABS_PATTERN = re.compile(r"double_blocks\.(\d+)\.processor\.(qkv|proj)_lora([12])\.(down|up)\.weight")
LYCORIS_SUFFIXES = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "hada_w1_a",
                    "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
BFL_PREFIXES = ("diffusion_model.", "base_model.model.")
BFL_BLOCKS = tuple(f"{p}{b}" for p in BFL_PREFIXES for b in ("double_blocks.", "single_blocks."))
# Leaves any_lora_layer_from_state_dict turns into a layer (after lora_A/lora_B -> lora_down/lora_up)
LAYER_LEAVES = ("lora_down.weight", "lora_up.weight", "lora_A.weight", "lora_B.weight")
_PEFT_ADAPTER = re.compile(r"\.(lora_[AB]|lora_magnitude_vector)\.[^.]+\.weight$")


def diffusers_table() -> dict[str, int | None]:
    """Every group the diffusers FLUX conversion places -> the fixed width it is merged at (None: not merged)."""
    table: dict[str, int | None] = dict.fromkeys(_TOP)
    for i in range(FLUX1_DOUBLE):
        table.update({f"transformer_blocks.{i}.{m}": None for m in _DOUBLE})
        table.update({f"transformer_blocks.{i}.{m}": FLUX1_WIDTH for group in _MERGED_DOUBLE for m in group})
    for i in range(FLUX1_SINGLE):
        table.update(dict.fromkeys((f"single_transformer_blocks.{i}.norm.linear",
                                    f"single_transformer_blocks.{i}.proj_out")))
        table.update({f"single_transformer_blocks.{i}.{m}": w for m, w in _MERGED_SINGLE.items()})
    return table


def _group(key: str) -> str:
    return key.rsplit(".", 2)[0]


def detect(keys: list[str]) -> str:
    """Which of the loader's FLUX branches takes a file with these (normalized) keys."""
    if keys and all(k.endswith(DIFFUSERS_SUFFIXES) for k in keys) and any(
            all(f"{p}{m}" in set(keys) for m in DIFFUSERS_MARKERS) for p in DIFFUSERS_PREFIXES):
        return "diffusers"
    if any(k for k in keys if "to_qkv_mlp_proj" in k or ".linear_in" in k) and all(
            k.endswith(DIFFUSERS_SUFFIXES) for k in keys):
        return "flux2"
    if all(any(p.match(k) for p in KOHYA_PATTERNS) for k in keys):
        return "kohya"
    if any(k.startswith(("lora_transformer_", "transformer.double_blocks.", "transformer.single_blocks.",
                         "img_in.lora_")) for k in keys):
        return "onetrainer_or_control"
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")) for k in keys) \
            and not any(k.endswith(LYCORIS_SUFFIXES) for k in keys):
        return "aitoolkit"
    if keys and all(XLABS_PATTERN.match(k) for k in keys):
        return "xlabs"
    if keys and any(k.startswith(BFL_BLOCKS) for k in keys) and all(k.startswith(BFL_PREFIXES) for k in keys):
        return "bfl_peft"
    return "unsupported"


def assess_flux(a, facts: AdapterFacts, keys: list[str], fix: str) -> None:
    keys = [_PEFT_ADAPTER.sub(r".\1.weight", k) for k in keys]  # normalize_peft_adapter_names
    spelled = {_PEFT_ADAPTER.sub(r".\1.weight", k): m.module for m in facts.modules.values() for k in m.keys}
    branch = detect(keys)
    if branch in ("flux2", "onetrainer_or_control"):
        a.unmodelled(f"InvokeAI reads this file with its {'FLUX.2' if branch == 'flux2' else 'OneTrainer/Control'} "
                     "conversion, which these rules do not model")
        return
    if branch == "unsupported":
        a.refuse("ValueError: LoRA model is in unsupported FLUX format", key=keys[0] if keys else None, hint=fix)
        return
    if branch == "diffusers" and not _diffusers_places(a, facts, keys, spelled, fix):
        return
    if branch == "aitoolkit" and not _aitoolkit_groups(a, keys, spelled, fix):
        return
    skipped_final = {spelled[k] for k in keys if k.startswith("lora_unet_final_layer") and k in spelled}
    if branch == "kohya":
        a.skip(skipped_final, "InvokeAI skips sd-scripts' final layer ('incompatible with current model definition')")
    for m in facts.modules.values():
        if m.fit == ABSENT:
            a.skip([m.module], "the model has no such module ('Failed to find module for LoRA layer key')")
        elif m.fit not in (FITS, UNCHECKED):
            a.skip([m.module], "its delta does not fit the weight (skipped: 'shape mismatch')",
                   hint="the adapter was made for another base")
    a.ignore([k for k in keys if k not in spelled and k not in a.ignored], "fit no module")


def _diffusers_places(a, facts: AdapterFacts, keys: list[str], spelled, fix: str) -> bool:
    prefix = "base_model.model." if any(k.startswith("base_model.model.") for k in keys) else "transformer."
    groups = {_group(k).replace(prefix, "", 1): k for k in keys}
    table = diffusers_table()
    unplaced = sorted(g for g in groups if g not in table)
    if unplaced:
        a.refuse(f"AssertionError: its diffusers FLUX conversion has no place for {len(unplaced)} layers, e.g. "
                 f"{unplaced[0]!r}", key=groups[unplaced[0]], hint=fix)
        return False
    for i in range(FLUX1_DOUBLE):
        for triple in _MERGED_DOUBLE:
            present = [f"transformer_blocks.{i}.{m}" in groups for m in triple]
            if any(present) and not all(present):
                missing = next(m for m, p in zip(triple, present) if not p)
                a.refuse(f"ValueError: Missing LoRA layer: 'transformer_blocks.{i}.{missing}' (q, k and v go "
                         "together)", hint=fix)
                return False
    wrong = [m for g, k in groups.items() if table[g] is not None and (m := facts.modules.get(spelled.get(k)))
             is not None and m.base_shape and m.base_shape[0] != table[g]]
    if wrong:
        a.refuse(f"RuntimeError: q/k/v are merged at FLUX.1's widths ({FLUX1_WIDTH}, mlp {FLUX1_MLP}), and this "
                 f"model's '{wrong[0].module.path}' has {wrong[0].base_shape[0]} rows", key=str(wrong[0].module),
                 hint="InvokeAI loads diffusers-format FLUX LoRAs into FLUX.1 dev/schnell only")
        return False
    return True


def _aitoolkit_groups(a, keys: list[str], spelled, fix: str) -> bool:
    groups: dict[str, set[str]] = {}
    for key in keys:
        groups.setdefault(_group(key), set()).add(key.rsplit(".", 2)[-2] + "." + key.rsplit(".", 1)[-1])
    dropped = [k for k in keys if not k.startswith("diffusion_model.")]
    reason = "their keys are outside 'diffusion_model.' (InvokeAI: 'Unexpected submodel name', dropped)"
    a.skip(sorted({spelled[k] for k in dropped if k in spelled}), reason)
    a.ignore([k for k in dropped if k not in spelled], reason.replace("their keys ", ""))
    bad = sorted(g for g, leaves in groups.items() if g.startswith("diffusion_model.")
                 and not leaves & set(LAYER_LEAVES))
    if bad:
        a.refuse(f"ValueError: Unsupported lora format for {len(bad)} layers, e.g. {bad[0]!r} (keys are grouped by "
                 "cutting their last two segments: an '.alpha' key is a group of its own)", key=bad[0], hint=fix)
        return False
    return True
