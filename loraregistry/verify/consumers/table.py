"""The "which tools load what" table: every consumer's rules run on typical files, described as facts.

Each row is a small ``AdapterFacts`` whose keys are spelled by ``loraregistry.formats`` exactly as the file
kind spells them, so the table shows what the rule modules decide, not a hand-written claim.
"""

from __future__ import annotations

from collections.abc import Callable

from ...canonical import CanonicalKey, ModuleKey
from .facts import CONV_SHAPED_LINEAR, FITS, LINEAR_SHAPED_CONV, AdapterFacts, ModuleFacts

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
PROJ = "down_blocks.0.attentions.0.proj_in"
CONV = "down_blocks.0.resnets.0.conv1"
TE = "text_model.encoder.layers.0.self_attn.q_proj"
SDXL_ATTN = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
LORA = ("down", "up", "alpha")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")
LOKR = ("lokr_w1", "lokr_w2", "alpha")
META = {"sd1": {"ss_base_model_version": "sd_v1", "ss_v2": "False",
                "modelspec.architecture": "stable-diffusion-v1/lora"},
        "sd2": {"ss_base_model_version": "sd_v2", "ss_v2": "True"},
        "sdxl": {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False",
                 "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}}

Module = tuple[str, str, tuple[str, ...]]  # component, path, roles


def _facts(fmt: str, modules: list[Module], *, family: str = "sd1", dialect: dict[str, str] | None = None,
           fits: dict[str, str] | None = None, unknown: tuple[str, ...] = (), metadata: dict | None = None,
           formats: dict[str, str] | None = None) -> AdapterFacts:
    from ...formats import from_canonical
    from ...alphas import algorithm

    out = {}
    for component, path, roles in modules:
        key_format = (formats or {}).get(component, fmt)
        usable = [r for r in roles if not (key_format != "kohya" and r == "alpha")]
        ckeys = [CanonicalKey(component, path, r) for r in usable]
        keys = from_canonical(ckeys, format=key_format, dialect=dialect or {})
        module = ModuleKey(component, path)
        out[module] = ModuleFacts(module=module, keys=tuple(sorted(keys.values())), key_format=key_format,
                                  algo=algorithm(roles), fit=(fits or {}).get(path, FITS),
                                  dora="dora_scale" in roles, mid="mid" in roles)
    return AdapterFacts(format=fmt if not formats else "mixed", modules=out, unknown_keys=unknown, family=family,
                        base_known=True, metadata=META[family] if metadata is None else metadata)


def _sd1(roles=LORA, **kw) -> list[Module]:
    return [("unet", ATTN, roles), ("unet", PROJ, roles), ("text_encoder", TE, roles)]


_PEFT = {"component_prefix": "yes", "text_encoder.text_model": "yes"}
_BARE = {"component_prefix": "no", "outer_prefix": "base_model.model.", "component": "unet"}

CASES: dict[str, Callable[[], AdapterFacts]] = {
    "kohya LoRA (`lora_unet_*`, `lora_te_*`)": lambda: _facts("kohya", _sd1()),
    "kohya SDXL LoRA with SGM block names (`input_blocks_*`)": lambda: _facts(
        "kohya", [("unet", SDXL_ATTN, LORA), ("text_encoder", TE, LORA), ("text_encoder_2", TE, LORA)],
        family="sdxl", dialect={"unet_names": "sgm", "unet_levels": "3", "te_prefix": "lora_te1"}),
    "LoCon (LoRA on 3x3 convs)": lambda: _facts("kohya", [("unet", CONV, LORA)]),
    "LoCon with Tucker `lora_mid`": lambda: _facts("kohya", [("unet", CONV, ("down", "up", "mid", "alpha"))]),
    "LyCORIS LoHa": lambda: _facts("kohya", _sd1(LOHA)),
    "LyCORIS LoKr": lambda: _facts("kohya", _sd1(LOKR)),
    "kohya DoRA (`dora_scale`)": lambda: _facts("kohya", _sd1((*LORA, "dora_scale"))),
    "SD2 kohya with 1x1-conv `proj_in`/`proj_out`": lambda: _facts(
        "kohya", _sd1(), family="sd2", fits={PROJ: CONV_SHAPED_LINEAR}),
    "SD1 with 2-D `proj_in`/`proj_out` factors": lambda: _facts("kohya", _sd1(), fits={PROJ: LINEAR_SHAPED_CONV}),
    "peft / diffusers, `unet.` + `text_encoder.` prefixes": lambda: _facts("peft", _sd1(), dialect=_PEFT),
    "peft DoRA (`lora_magnitude_vector`), prefixed": lambda: _facts(
        "peft", _sd1((*LORA, "dora_scale")), dialect=_PEFT),
    "peft without component prefix (`base_model.model.*`)": lambda: _facts(
        "peft", [("unet", ATTN, LORA), ("unet", PROJ, LORA)], dialect=_BARE),
    "diffusers training script (`.lora.down`, `lora_linear_layer`)": lambda: _facts(
        "diffusers", _sd1(), dialect={"text_encoder.text_model": "yes"}),
    "legacy attention processors without `unet.`": lambda: _facts(
        "attn_procs", [("unet", ATTN, ("down", "up"))], dialect={"component_prefix": "no"}),
    "CLIP keys without `text_model` (transformers 5 export)": lambda: _facts(
        "kohya", [("text_encoder", TE, LORA)], dialect={"text_encoder.text_model": "no", "te_prefix": "lora_te1"}),
    "kohya LoRA + bundled embeddings (`bundle_emb.*`)": lambda: _facts(
        "kohya", _sd1(), unknown=("bundle_emb.style.string_to_param.*",)),
    "mixed: kohya text encoder + peft UNet": lambda: _facts(
        "kohya", _sd1(), dialect=_PEFT, formats={"unet": "peft", "text_encoder": "kohya"}),
    "SDXL kohya LoRA without SD-version metadata": lambda: _facts(
        "kohya", [("unet", SDXL_ATTN, LORA), ("text_encoder", TE, LORA)], family="sdxl", metadata={},
        dialect={"te_prefix": "lora_te1"}),
}


def _cell(verdict) -> str:
    codes = sorted({f.code for f in verdict.findings if f.name != "consumer-base-unknown"})
    word = {"loads": "yes", "loads_partly": "partly", "fails": "**no**"}[verdict.outcome]
    return word + (f" ({', '.join(codes)})" if codes else "")


def loaders_table() -> str:
    from . import CONSUMERS
    from .codes import CONSUMER_ROWS

    names = list(CONSUMERS)
    lines = ["<!-- Generated by loraregistry.verify.consumers.loaders_table_markdown(); do not edit by hand. -->", "",
             "| file | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for title, build in CASES.items():
        facts = build()
        lines.append(f"| {title} | " + " | ".join(_cell(CONSUMERS[n].verdict(facts)) for n in names) + " |")
    lines += ["", "Versions the rules were written from: " + "; ".join(
        f"{c.name} {c.version_range}" for c in CONSUMERS.values()) + ".", "",
              "| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {title}: {text} |" for code, _, _, title, text in CONSUMER_ROWS[:6]]
    return "\n".join(lines) + "\n"


def verified_cells() -> str:
    """Per loader and family: checked against running code (which package, which tests), rules only (written from
    which public code), or not modelled."""
    from . import ALL_FAMILIES, CONSUMERS

    lines = ["<!-- Generated by loraregistry.verify.consumers.table.verified_cells(); do not edit by hand. -->", "",
             "| loader | " + " | ".join(ALL_FAMILIES) + " |", "|---|" + "---|" * len(ALL_FAMILIES)]
    for name, consumer in CONSUMERS.items():
        cells = []
        for family in ALL_FAMILIES:
            check = consumer.verified.get(family)
            if not consumer.models(family):
                cells.append("not modelled")
            elif check is not None:
                tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in check.tests)
                cells.append(f"**verified**: {check.code}; {tests}")
            else:
                cells.append(f"rules only ({consumer.version_range})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Rules written from (upstream files):", ""]
    lines += [f"- {name}: " + "; ".join(f"`{s}`" for s in consumer.sources) for name, consumer in CONSUMERS.items()]
    return "\n".join(lines) + "\n"
