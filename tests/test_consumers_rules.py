"""The rule modules of loaders that cannot run here (ComfyUI, A1111, Forge, kohya sd-scripts) and peft, on files
whose outcome their public code determines (see each module's header for the code paths), plus the registry,
the --target parsing, the LRG6xx codes and the generated loader table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loraregistry.errors import UsageError
from loraregistry.verify.consumers import (
    CONSUMERS,
    consumer_verdicts,
    loaders_table_markdown,
    parse_targets,
    verdict_exit_code,
)
from loraregistry.verify.consumers.codes import CONSUMER_ROWS
from tests.test_consumers_diffusers import DERIVED, GOLDEN, arch_of, derive
from tests.tiny_models import tiny_pipeline_dir  # noqa: F401 - fixture

DOC = Path(__file__).parent.parent / "docs" / "loaders.md"
README = Path(__file__).parent.parent / "README.md"

# (file, consumer) -> outcome, from reading each loader's key matching (module headers say which code).
EXPECTED = {
    # kohya LoRA: every tool built around kohya keys loads it; peft has no kohya parameter names.
    ("sd1_kohya", "comfyui"): "loads", ("sd1_kohya", "a1111"): "loads", ("sd1_kohya", "kohya"): "loads",
    ("sd1_kohya", "forge"): "loads", ("sd1_kohya", "peft"): "fails",
    # LyCORIS: the web UIs have LoHa/LoKr module types; networks.lora creates only lora_down modules.
    ("sd1_lycoris_loha", "comfyui"): "loads", ("sd1_lycoris_loha", "a1111"): "loads",
    ("sd1_lycoris_loha", "kohya"): "fails", ("sd1_lycoris_lokr", "forge"): "loads",
    ("sd1_lycoris_locon", "kohya"): "loads_partly",  # conv_in/conv_out/time_embedding are no networks.lora targets
    # SD2 1x1-conv projections: reshaped by ComfyUI (calculate_weight) and A1111 (network_lora); sd-scripts' SD2
    # projections ARE 1x1 convs.
    ("sd2_kohya_conv_proj", "comfyui"): "loads", ("sd2_kohya_conv_proj", "a1111"): "loads",
    ("sd2_kohya_conv_proj", "kohya"): "loads", ("sd2_kohya_flat_projections", "kohya"): "fails",
    # peft keys: only peft itself reads base_model.model.; A1111 splits at the first dot.
    ("sd1_peft_prefixed", "peft"): "loads", ("sd1_peft_dora", "peft"): "loads",
    ("sd1_peft_prefixed", "comfyui"): "fails", ("sd1_peft_prefixed", "a1111"): "fails",
    ("sd1_diffusers_unet_te", "peft"): "fails",  # unet./text_encoder. prefixes are diffusers', not peft's
    # diffusers peft keys: ComfyUI maps attention only as .processor.to_q, so only proj/ff modules load.
    ("sd1_diffusers_unet_te", "comfyui"): "loads_partly", ("sdxl_diffusers", "a1111"): "fails",
    # Legacy attention processors: ComfyUI's "" / "unet." + .processor.to_* key map.
    ("sd1_attn_procs", "comfyui"): "loads", ("sd1_attn_procs", "a1111"): "fails",
    # transformers-5 CLIP names (no text_model): neither web UI nor sd-scripts map them.
    ("sd1_kohya_from_diffusers", "comfyui"): "loads_partly", ("sd1_kohya_from_diffusers", "a1111"): "loads_partly",
    ("sd1_kohya_from_diffusers", "forge"): "fails",  # 24 unmatched keys > 12: "LoRA version mismatch"
    # DoRA: ComfyUI/A1111 apply dora_scale, sd-scripts networks.lora ignores it.
    ("sd1_kohya_dora", "comfyui"): "loads", ("sd1_kohya_dora", "a1111"): "loads",
    ("sd1_kohya_dora", "kohya"): "loads_partly",
    # Foreign keys: A1111 loads bundle_emb as embeddings; ComfyUI logs "lora key not loaded".
    ("sd1_kohya_bundled_embedding", "a1111"): "loads", ("sd1_kohya_bundled_embedding", "comfyui"): "loads_partly",
    ("sd1_kohya_foreign_suffix", "a1111"): "loads_partly",
    # Tucker LoCon: the web UIs multiply lora_mid in; sd-scripts' 3x3 lora_down cannot take a 1x1 factor.
    ("sd1_locon_tucker_conv_in", "comfyui"): "loads", ("sd1_locon_tucker_conv_in", "a1111"): "loads",
    ("sd1_mixed_kohya_te_peft_unet", "a1111"): "loads_partly",
}


def path_of(name: str, folder: Path) -> Path:
    if name in DERIVED:
        source, edit = DERIVED[name]
        return derive(folder, name, source, edit)
    return GOLDEN / f"{name}.safetensors"


@pytest.mark.parametrize(("name", "consumer"), sorted(EXPECTED))
def test_rule_outcome(name, consumer, tmp_path, tiny_pipeline_dir):
    (verdict,) = consumer_verdicts(path_of(name, tmp_path), [consumer], base=str(tiny_pipeline_dir(arch_of(name))))
    assert verdict.outcome == EXPECTED[name, consumer], [f.message for f in verdict.findings]


def test_a1111_reads_the_sd_version_from_metadata_only():
    from loraregistry.verify.consumers.a1111 import sd_version
    from loraregistry.verify.consumers.forge import sd_version as forge_version

    assert sd_version({"ss_base_model_version": "sdxl_base_v1-0"}) == "SDXL"
    assert sd_version({"ss_v2": "True"}) == "SD2"
    assert sd_version({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}) == "SD1"  # A1111 ignores it
    assert sd_version({}) == "Unknown"
    assert forge_version({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}) == "SDXL"
    assert forge_version({"ss_base_model_version": "sd_v1"}) == "Unknown"


def test_sdxl_weights_declared_sd1_are_misfiled_by_a1111(tiny_pipeline_dir):
    (verdict,) = consumer_verdicts(GOLDEN / "sdxl_diffusers.safetensors", ["a1111"],
                                   base=str(tiny_pipeline_dir("sdxl")))
    assert "LRG605" in {f.code for f in verdict.findings}


def test_registry_holds_one_consumer_per_module():
    assert list(CONSUMERS) == ["a1111", "comfyui", "diffusers", "forge", "invokeai", "kohya", "peft"]
    for consumer in CONSUMERS.values():
        assert consumer.sources and consumer.version_range
    headers = {name: sys.modules[f"loraregistry.verify.consumers.{name}"].__doc__ for name in CONSUMERS}
    assert all("Written from" in doc and "Checked by" in doc for doc in headers.values())


def test_parse_targets():
    assert parse_targets("diffusers, ComfyUI,diffusers") == ("diffusers", "comfyui")
    assert parse_targets("all") == tuple(CONSUMERS)
    assert parse_targets("invokeai") == ("invokeai",)
    with pytest.raises(UsageError) as err:
        parse_targets("diffusers,fooocus")
    assert "'fooocus'" in str(err.value) and "comfyui" in err.value.one_line()


def test_exit_code_follows_the_chosen_consumers(tiny_pipeline_dir):
    verdicts = consumer_verdicts(GOLDEN / "sd1_lycoris_loha.safetensors", ["comfyui", "a1111"],
                                 base=str(tiny_pipeline_dir("sd1")))
    assert verdict_exit_code(verdicts) == 0
    verdicts = consumer_verdicts(GOLDEN / "sd1_lycoris_loha.safetensors", ["diffusers"], base="sd1")
    assert verdict_exit_code(verdicts) == 1


def test_a_broken_file_fails_every_target(tmp_path):
    from loraregistry.verify.consumers import target_verdicts

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    verdicts = target_verdicts(broken, ("diffusers", "comfyui"))
    assert [(v.consumer, v.outcome) for v in verdicts] == [("diffusers", "fails"), ("comfyui", "fails")]
    assert verdict_exit_code(verdicts) == 1


def test_codes_are_a_block_of_their_own():
    from loraregistry.verify.findings import CODES

    codes = [row[0] for row in CONSUMER_ROWS]
    assert all(600 <= int(c[3:]) < 700 for c in codes) and len(set(codes)) == len(codes)
    for row in CONSUMER_ROWS:  # once findings.py registers the rows, they must be these
        assert row[0] not in CODES or (CODES[row[0]].name, CODES[row[0]].severity) == (row[1], row[2])


def test_loaders_doc_is_current():
    assert loaders_table_markdown() in DOC.read_text(), "regenerate docs/loaders.md (see its header)"
    assert loaders_table_markdown().strip() in README.read_text(), "regenerate the table in README.md"


def test_importing_the_consumers_leaves_torch_out():
    code = ("import sys, loraregistry.verify.consumers as c; list(c.CONSUMERS); c.loaders_table_markdown();"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_verified_cells_in_the_loaders_doc_are_current():
    from loraregistry.verify.consumers.table import verified_cells

    assert verified_cells() in DOC.read_text(), "regenerate the verified-cells table in docs/loaders.md"


def _mmdit_facts(family: str, key_format: str):
    from loraregistry.canonical import ModuleKey
    from loraregistry.formats.mmdit import to_native
    from loraregistry.verify.consumers.facts import FITS, AdapterFacts, ModuleFacts

    path = "transformer_blocks.0.attn.{to_q,to_k,to_v}" if key_format == "kohya" else "transformer_blocks.0.attn.to_q"
    if key_format == "kohya":
        stem = "lora_unet_" + to_native(path, family).replace(".", "_")
        keys = (f"{stem}.alpha", f"{stem}.lora_down.weight", f"{stem}.lora_up.weight")
    else:
        keys = (f"transformer.{path}.lora_A.weight", f"transformer.{path}.lora_B.weight")
    module = ModuleKey("transformer", path)
    return AdapterFacts(format=key_format, modules={module: ModuleFacts(module, keys, key_format, "lora", FITS)},
                        family=family, base_known=True)


# (family, key format, consumer) -> outcome: SD3/FLUX rules; loaders whose rules do not cover a family say so.
MMDIT_EXPECTED = {
    ("flux", "kohya", "comfyui"): "loads",  # sd-scripts lora_flux names: ComfyUI maps every lora_unet_* Flux key
    ("sd3", "kohya", "comfyui"): "loads",
    ("flux", "peft", "comfyui"): "loads",  # transformer.<diffusers path>
    ("sd3", "peft", "comfyui"): "loads",
    ("flux", "kohya", "forge"): "loads",
    ("sd3", "kohya", "forge"): "not_modelled",
    ("flux", "kohya", "a1111"): "not_modelled", ("sd3", "kohya", "a1111"): "not_modelled",
    ("flux", "kohya", "kohya"): "not_modelled", ("sd3", "kohya", "kohya"): "not_modelled",
    ("sd3", "kohya", "diffusers"): "fails",  # SD3LoraLoaderMixin converts no kohya keys: nothing loads
    ("flux", "peft", "diffusers"): "loads", ("sd3", "peft", "diffusers"): "loads",
}


@pytest.mark.parametrize(("family", "key_format", "consumer"), sorted(MMDIT_EXPECTED))
def test_sd3_and_flux_rules(family, key_format, consumer):
    verdict = CONSUMERS[consumer].verdict(_mmdit_facts(family, key_format))
    assert verdict.outcome == MMDIT_EXPECTED[family, key_format, consumer], [f.message for f in verdict.findings]
    if verdict.outcome == "not_modelled":
        assert [f.code for f in verdict.findings] == ["LRG608"] and verdict_exit_code([verdict]) == 0
        assert verdict_exit_code([verdict], strict=True) == 1
