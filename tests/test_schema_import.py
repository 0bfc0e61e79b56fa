"""import_metadata / project_metadata / merge_projection over real-world-looking headers."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraregistry.architectures.ids import ARCHITECTURES
from loraregistry.canonical import WeightFacts
from loraregistry.errors import MetadataError
from loraregistry.schema import AdapterMetadata, import_metadata, merge_projection, project_metadata
from tests.test_schema import SHA, adapter_metadata

UTC = timezone.utc

# --- headers as tools write them --------------------------------------------------------------------

KOHYA_SD1 = {
    "ss_session_id": "2961633214", "ss_training_started_at": "1684342410.5", "ss_output_name": "lowpolyStyle",
    "ss_learning_rate": "0.0001", "ss_text_encoder_lr": "5e-05", "ss_unet_lr": "0.0001",
    "ss_num_train_images": "400", "ss_num_reg_images": "0", "ss_num_batches_per_epoch": "200",
    "ss_num_epochs": "10", "ss_epoch": "10", "ss_batch_size_per_device": "2", "ss_total_batch_size": "2",
    "ss_gradient_checkpointing": "False", "ss_max_train_steps": "2000", "ss_steps": "2000",
    "ss_lr_scheduler": "cosine_with_restarts", "ss_network_module": "networks.lora", "ss_network_dim": "32",
    "ss_network_alpha": "16.0", "ss_network_dropout": "None", "ss_mixed_precision": "fp16", "ss_full_fp16": "False",
    "ss_v2": "False", "ss_base_model_version": "sd_v1", "ss_clip_skip": "2", "ss_seed": "1234",
    "ss_noise_offset": "None", "ss_training_comment": "None", "ss_min_snr_gamma": "5.0",
    "ss_sd_scripts_commit_hash": "5050971ac687dca70ba0486a583d283e8ae324e2",
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1)", "ss_resolution": "(512, 512)",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_new_sd_model_hash": "CC6CB27103417325FF94F52B7A5D2DDE45A7515B25C255D8E396C90014281516",
    "ss_tag_frequency": json.dumps({"10_lowpoly": {"lowpoly": 40, "1girl": 12}}),
    "ss_dataset_dirs": json.dumps({"10_lowpoly": {"n_repeats": 10, "img_count": 40}}),
    "ss_training_finished_at": "1684345994.25", "sshs_model_hash": SHA, "sshs_legacy_hash": "539b7f8e",
}

KOHYA_SD2_OLD = {  # written before ss_base_model_version existed
    "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "1.0", "ss_v2": "True",
    "ss_output_name": "sd2style",
}
KOHYA_SD2_V = {
    "ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8.0", "ss_v2": "True",
    "ss_base_model_version": "sd_v2_v",
}
KOHYA_SD2_OLD_V = {"ss_network_module": "networks.lora", "ss_v2": "True", "ss_v_parameterization": "True"}

KOHYA_SDXL = {
    "ss_network_module": "networks.lora", "ss_network_dim": "Dynamic", "ss_network_alpha": "Dynamic",
    "ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False", "ss_output_name": "xl_style",
    "ss_text_encoder_lr": "[0.0001, 0.0001]", "ss_resolution": "(1024, 1024)",
    "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.title": "LoRA@1690000000.123", "modelspec.date": "2023-07-22T04:26:40",
    "modelspec.resolution": "1024x1024", "modelspec.prediction_type": "epsilon",
}
LYCORIS_LOHA = {
    "ss_network_module": "lycoris.kohya", "ss_network_dim": "16", "ss_network_alpha": "8.0",
    "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1", "algo": "loha", "preset": "full"}),
    "ss_base_model_version": "sd_v1", "ss_v2": "False",
}
MODELSPEC_ONLY = {
    "modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "diffusers", "modelspec.title": "Red Hat", "modelspec.author": "Ann",
    "modelspec.description": "Puts a red hat on people.", "modelspec.license": "openrail",
    "modelspec.tags": "hat, clothing, , hat", "modelspec.trigger_phrase": "ohwx hat, red",
    "modelspec.date": "2024-03-01", "modelspec.hash_sha256": "0x" + SHA.upper(),
    "modelspec.prediction_type": "epsilon", "modelspec.resolution": "512x512", "modelspec.usage_hint": "weight 0.8",
    "modelspec.merged_from": "a.safetensors, b.safetensors", "modelspec.thumbnail": "data:image/png;base64,AAAA",
}
DIFFUSERS_PREFIXED = {  # StableDiffusionXLPipeline.save_lora_weights(..., unet_lora_adapter_metadata=...)
    "format": "pt",
    "lora_adapter_metadata": json.dumps({
        "unet.r": 4, "unet.lora_alpha": 4, "unet.peft_type": "LORA", "unet.use_dora": False,
        "unet.target_modules": ["to_k", "to_q", "to_v", "to_out.0"], "unet.rank_pattern": {}, "unet.alpha_pattern": {},
        "text_encoder.r": 4, "text_encoder.lora_alpha": 4, "text_encoder.target_modules": ["q_proj", "k_proj"],
        "unet.base_model_name_or_path": None,
    }, sort_keys=True),
}
DIFFUSERS_NESTED = {"lora_adapter_metadata": json.dumps({
    "transformer": {"r": 16, "lora_alpha": 16, "use_dora": True, "target_modules": "to_.*",
                    "rank_pattern": {"single_transformer_blocks.0.attn.to_q": 8},
                    "base_model_name_or_path": "black-forest-labs/FLUX.1-dev", "revision": "main"}})}
DIFFUSERS_FLAT = {"lora_adapter_metadata": json.dumps({
    "r": 8, "lora_alpha": 8.0, "target_modules": ["to_q"], "base_model_name_or_path": "/models/sd15"})}


def meta(**fields) -> AdapterMetadata:
    return AdapterMetadata.model_validate(fields)


CASES = {
    "kohya-sd1": (KOHYA_SD1, meta(
        name="lowpolyStyle", tensor_sha256=SHA,
        base={"architecture": "sd1", "model_name": "v1-5-pruned-emaonly.safetensors",
              "sha256": "cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516"},
        network={"type": "lora", "rank": 32, "alpha": 16.0},
        training={"steps": 2000, "epochs": 10, "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5,
                  "optimizer": "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1)",
                  "scheduler": "cosine_with_restarts", "batch_size": 2, "seed": 1234, "resolution": (512, 512),
                  "dataset_size": 40, "tool": "sd-scripts", "tool_version": "5050971ac687dca70ba0486a583d283e8ae324e2",
                  "started_at": datetime.fromtimestamp(1684342410.5, UTC),
                  "finished_at": datetime.fromtimestamp(1684345994.25, UTC),
                  "mixed_precision": "fp16", "min_snr_gamma": 5.0, "clip_skip": 2},
    ), []),
    "kohya-sd2-old": (KOHYA_SD2_OLD, meta(
        name="sd2style", base={"architecture": "sd2-512"}, network={"type": "lora", "rank": 8, "alpha": 1.0}), []),
    "kohya-sd2-v": (KOHYA_SD2_V, meta(
        base={"architecture": "sd2-768-v"}, network={"type": "lora", "rank": 16, "alpha": 8.0}), []),
    "kohya-sd2-old-v": (KOHYA_SD2_OLD_V, meta(
        base={"architecture": "sd2-768-v", "prediction_type": "v"}, network={"type": "lora"}), []),
    "kohya-sdxl": (KOHYA_SDXL, meta(
        name="xl_style",  # the 'LoRA@<time>' title is a placeholder, not a name
        base={"architecture": "sdxl-base", "prediction_type": "epsilon", "resolution": (1024, 1024)},
        network={"type": "lora"}, provenance={"created_at": datetime(2023, 7, 22, 4, 26, 40, tzinfo=UTC)},
        training={"text_encoder_lr": 1e-4, "resolution": (1024, 1024)},
    ), []),
    "lycoris-loha": (LYCORIS_LOHA, meta(
        base={"architecture": "sd1"},
        network={"type": "loha", "rank": 16, "alpha": 8.0, "conv_rank": 4, "conv_alpha": 1.0}), []),
    "modelspec-only": (MODELSPEC_ONLY, meta(
        name="Red Hat", author="Ann", description="Puts a red hat on people.", license="openrail",
        tags=["hat", "clothing"], trigger_words=["ohwx hat", "red"], usage_hint="weight 0.8", tensor_sha256=SHA,
        base={"architecture": "sd1", "prediction_type": "epsilon", "resolution": (512, 512)},
        provenance={"created_at": datetime(2024, 3, 1, tzinfo=UTC), "operation": "merge",
                    "parents": [{"name": "a.safetensors"}, {"name": "b.safetensors"}]},
    ), []),
    # peft's LORA type is LoRA or LoCon (its targets decide), so the config alone declares no network.type
    "diffusers-prefixed": (DIFFUSERS_PREFIXED, meta(
        network={"rank": 4, "alpha": 4.0, "components": ["unet", "text_encoder"],
                 "target_modules": ["to_k", "to_q", "to_v", "to_out.0", "q_proj", "k_proj"]}), []),
    "diffusers-nested-dora": (DIFFUSERS_NESTED, meta(
        base={"model_id": "black-forest-labs/FLUX.1-dev", "revision": "main"},
        network={"type": "dora", "rank": 16, "alpha": 16.0, "components": ["transformer"], "target_modules": ["to_.*"],
                 "rank_pattern": {"transformer:single_transformer_blocks.0.attn.to_q": 8}}), []),
    "diffusers-flat": (DIFFUSERS_FLAT, meta(
        base={"model_name": "/models/sd15"}, network={"rank": 8, "alpha": 8.0, "target_modules": ["to_q"]}), []),
    "nothing": ({}, AdapterMetadata(), []),
    "broken-json": ({"ss_network_module": "lycoris.kohya", "ss_network_args": "{algo: loha",
                     "ss_dataset_dirs": "{", "lora_adapter_metadata": "[not json", "ss_tag_frequency": "{{{"},
                    meta(network={"type": "locon"}),
                    ["ss_network_args = '{algo: loha': ignored (not valid JSON)",
                     "ss_dataset_dirs = '{': ignored (not valid JSON)",
                     "lora_adapter_metadata: not valid JSON; ignored"]),
    "junk-values": ({"ss_network_dim": "0", "ss_seed": "-3", "ss_v2": "maybe",
                     "modelspec.architecture": "lumina-2/lora",
                     "ss_network_module": "networks.oft", "modelspec.hash_sha256": "0x12",
                     "modelspec.resolution": "big", "ss_learning_rate": "inf"},
                    AdapterMetadata(),
                    ["ss_network_dim = '0': ignored (Input should be greater than or equal to 1)",
                     "modelspec.architecture = 'lumina-2/lora': unknown base; architecture left unset",
                     "ss_network_module = 'networks.oft': not a LoRA network lorareg knows; network.type left unset"]),
}


@pytest.mark.parametrize("name", CASES)
def test_import_real_world_headers(name):
    header, expected, expected_warnings = CASES[name]
    result = import_metadata(header)
    assert result.metadata == expected
    for warning in expected_warnings:
        assert any(w.startswith(warning) for w in result.warnings), (warning, result.warnings)
    if not expected_warnings:
        assert result.warnings == []
    assert result.inferred == []
    assert result.metadata.trigger_words == expected.trigger_words  # never guessed from ss_tag_frequency


def test_sources_group_the_raw_keys():
    header = {**KOHYA_SDXL, **DIFFUSERS_PREFIXED, "lorareg": '{"schema_version":"1"}', "my_tool.rating": "5"}
    sources = import_metadata(header).sources
    assert set(sources) == {"lorareg", "modelspec", "kohya", "diffusers", "other"}
    assert sources["other"] == {"format": "pt", "my_tool.rating": "5"}
    assert sources["modelspec"]["modelspec.title"] == "LoRA@1690000000.123"
    assert sources["diffusers"] == {"lora_adapter_metadata": DIFFUSERS_PREFIXED["lora_adapter_metadata"]}


def test_origins_name_the_header_key_of_each_field():
    origins = import_metadata(KOHYA_SDXL).origins
    assert origins["base.architecture"] == "modelspec.architecture"
    assert origins["name"] == "ss_output_name"
    assert origins["training.text_encoder_lr"] == "ss_text_encoder_lr"


# --- weights -------------------------------------------------------------------------------------

FACTS = WeightFacts(format="kohya", network_type="lora", components=("unet", "text_encoder"), module_count=264,
                    rank=16, alpha=8.0, rank_pattern={"unet:mid_block.attentions.0.proj_in": 4},
                    alpha_pattern={}, architecture="sd1", tensor_sha256=SHA)


def test_nothing_declared_everything_inferred():
    result = import_metadata({}, facts=FACTS)
    assert result.metadata == meta(
        tensor_sha256=SHA, base={"architecture": "sd1"},
        network={"type": "lora", "rank": 16, "alpha": 8.0, "components": ["unet", "text_encoder"],
                 "rank_pattern": {"unet:mid_block.attentions.0.proj_in": 4}})
    assert result.inferred == ["network.type", "network.rank", "network.alpha", "network.rank_pattern",
                               "network.components", "tensor_sha256", "base.architecture"]
    assert result.warnings == []
    assert result.origins["network.rank"] == "weights"


def test_weights_win_for_network_and_conflicts_are_reported():
    header = {**KOHYA_SD1, "sshs_model_hash": "f" * 64}
    result = import_metadata(header, facts=FACTS)
    assert result.metadata.network.rank == 16 and result.metadata.network.alpha == 8.0
    assert result.metadata.tensor_sha256 == SHA
    assert "network.rank: ss_network_dim = 32 but weights = 16; keeping weights" in result.warnings
    assert "network.alpha: ss_network_alpha = 16.0 but weights = 8.0; keeping weights" in result.warnings
    assert f"tensor_sha256: sshs_model_hash = '{'f' * 64}' but weights = '{SHA}'; keeping weights" in result.warnings
    assert {"network.rank", "network.alpha", "tensor_sha256"} <= set(result.inferred)
    assert "network.type" not in result.inferred  # declared and confirmed


def test_declared_architecture_is_kept_when_weights_disagree():
    facts = WeightFacts(format="kohya", network_type="lora", components=("unet",), module_count=1, rank=4,
                        alpha=4.0, architecture="sdxl-base")
    result = import_metadata(KOHYA_SD2_V, facts=facts)
    assert result.metadata.base.architecture == "sd2-768-v"
    assert "base.architecture" not in result.inferred
    assert any(w.startswith("base.architecture: ss_base_model_version = 'sd2-768-v' but the weights look like "
                            "'sdxl-base'; keeping ss_base_model_version") for w in result.warnings)


def test_uniform_weights_clear_declared_patterns():
    facts = WeightFacts(format="peft", network_type="dora", components=("transformer",), module_count=3, rank=16,
                        alpha=16.0)
    result = import_metadata(DIFFUSERS_NESTED, facts=facts)
    assert result.metadata.network.rank_pattern == {}
    assert "network.rank_pattern" in result.inferred
    assert any(w.startswith("network.rank_pattern: lora_adapter_metadata =") for w in result.warnings)


def test_inconsistent_weights_value_is_dropped_not_fatal():
    facts = WeightFacts(format="x", network_type="locon", components=("unet",), module_count=1, conv_alpha=2.0)
    result = import_metadata({}, facts=facts)
    assert result.metadata.network.conv_alpha is None
    assert "network.conv_alpha" not in result.inferred
    assert any(w.startswith("network.conv_alpha: weights = 2.0 ignored (network.conv_alpha is set but")
               for w in result.warnings)


# --- precedence between declared sources --------------------------------------------------------


def test_modelspec_beats_kohya_and_the_conflict_is_reported():
    header = {**KOHYA_SD1, "modelspec.title": "Low Poly", "modelspec.architecture": "stable-diffusion-v1/lora"}
    result = import_metadata(header)
    assert result.metadata.name == "Low Poly"
    assert "name: modelspec.title = 'Low Poly' but ss_output_name = 'lowpolyStyle'; keeping modelspec.title" \
        in result.warnings


def test_kohya_beats_diffusers():
    result = import_metadata({**KOHYA_SD2_V, **DIFFUSERS_PREFIXED})
    assert result.metadata.network.rank == 16
    assert "network.rank: ss_network_dim = 16 but lora_adapter_metadata = 4; keeping ss_network_dim" \
        in result.warnings


def test_lorareg_record_beats_edited_foreign_keys_and_gaps_are_filled():
    record = meta(name="Hat", base={"architecture": "sdxl"}, network={"type": "lora", "rank": 8, "alpha": 8.0})
    header = project_metadata(record)
    header["ss_output_name"] = "hat_v2"  # renamed by a metadata editor
    header["modelspec.trigger_phrase"] = "ohwx"  # added by another tool
    result = import_metadata(header)
    assert result.metadata.name == "Hat"
    assert result.metadata.trigger_words == ["ohwx"]
    assert result.warnings == ["name: lorareg = 'Hat' but ss_output_name = 'hat_v2'; keeping lorareg"]


def test_conflicting_foreign_value_the_schema_refuses_is_dropped():
    header = {"lorareg": '{"schema_version":"1","training":{"started_at":"2024-01-02T00:00:00Z"}}',
              "ss_training_finished_at": "1704067200"}  # 2024-01-01: before the record's start
    result = import_metadata(header)
    assert result.metadata.training.finished_at is None
    assert any(w.startswith("training.finished_at: ss_training_finished_at =") for w in result.warnings)


def test_newer_lorareg_record_warnings_are_passed_on():
    result = import_metadata({"lorareg": '{"schema_version":"2","name":"x","future":1}'})
    assert result.metadata.name == "x"
    assert result.warnings[0].startswith("lorareg: schema_version 2 is newer than 1; ignored unknown fields future")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"lorareg": "{"}, "lorareg: not valid JSON"),
        ({"lorareg": '{"network": {"rank": 0}}', **KOHYA_SD1}, "lorareg: network.rank: Input should be greater"),
        ({"ss_network_dim": 32}, "header metadata must map str to str; 'ss_network_dim' -> int"),
    ],
)
def test_invalid_own_record_or_non_string_values_raise(header, message):
    with pytest.raises(MetadataError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        import_metadata(header)


# --- projection -------------------------------------------------------------------------------------

FULL = meta(
    name="Red Hat", description="Puts a red hat on people.", author="Ann", license="openrail",
    tags=["hat", "clothing"], trigger_words=["ohwx hat"], usage_hint="weight 0.8", tensor_sha256=SHA,
    base={"architecture": "sdxl-base", "prediction_type": "epsilon", "resolution": (1024, 1024),
          "model_name": "sd_xl_base_1.0.safetensors"},
    network={"type": "locon", "rank": 16, "alpha": 8.0, "conv_rank": 4, "conv_alpha": 2.0},
    training={"steps": 1500, "epochs": 10, "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 0.0,
              "optimizer": "AdamW8bit", "scheduler": "cosine", "batch_size": 4, "seed": 42, "resolution": (1024, 1024),
              "started_at": datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
              "finished_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
              "mixed_precision": "bf16", "noise_offset": 0.05, "min_snr_gamma": 5.0, "clip_skip": 1, "comment": "v1"},
    provenance={"created_at": datetime(2024, 5, 1, 12, 5, tzinfo=UTC)},
)


def test_projection_has_modelspec_must_keys_and_the_kohya_minimum():
    header = project_metadata(FULL)
    assert header["modelspec.sai_model_spec"] == "1.0.1"
    assert header["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert header["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert header["modelspec.title"] == "Red Hat"
    assert header["modelspec.hash_sha256"] == "0x" + SHA
    assert header["modelspec.resolution"] == "1024x1024"
    assert header["modelspec.trigger_phrase"] == "ohwx hat"
    assert header["modelspec.date"] == "2024-05-01T12:05:00+00:00"
    assert header["ss_base_model_version"] == "sdxl_base_v1-0"
    assert header["ss_network_module"] == "networks.lora"
    assert json.loads(header["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2"}
    assert (header["ss_network_dim"], header["ss_network_alpha"]) == ("16", "8")
    assert list(header) == sorted(header)
    assert all(isinstance(v, str) for v in header.values())


def test_foreign_projection_alone_carries_the_record():
    """Strip the lorareg key: what ModelSpec + ss_* say must import back to the same record."""
    header = {k: v for k, v in project_metadata(FULL).items() if k != "lorareg"}
    result = import_metadata(header)
    assert result.metadata == FULL
    assert result.warnings == []


@pytest.mark.parametrize(
    ("arch", "implementation"),
    [("sd1", "diffusers"), ("sd2-768-v", "diffusers"),
     ("sdxl-refiner", "https://github.com/Stability-AI/generative-models"),
     ("sd3-medium", "diffusers"), ("flux1-dev", "https://github.com/black-forest-labs/flux")],
)
def test_modelspec_implementation_follows_sd_scripts(arch, implementation):
    assert project_metadata(meta(base={"architecture": arch}))["modelspec.implementation"] == implementation


def _a1111_sd_version(metadata: dict[str, str]) -> str:
    """AUTOMATIC1111 extensions-builtin/Lora/network.py, NetworkOnDisk.__init__."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("sd1", "SD1"), ("sd2-512", "SD2"), ("sd2-768-v", "SD2"), ("sdxl-base", "SDXL"), ("sdxl-refiner", "SDXL")],
)
def test_a1111_classifies_the_projection_right(arch, expected):
    assert _a1111_sd_version(project_metadata(meta(base={"architecture": arch}))) == expected


@pytest.mark.parametrize(
    ("network", "module", "args"),
    [({"type": "lora", "rank": 4}, "networks.lora", None),
     ({"type": "loha", "rank": 4}, "lycoris.kohya", {"algo": "loha"}),
     ({"type": "lokr", "rank": 4}, "lycoris.kohya", {"algo": "lokr"}),
     ({"type": "dora", "rank": 4}, "lycoris.kohya", {"algo": "lora", "dora_wd": "True"}),
     ({"type": "full"}, "lycoris.kohya", {"algo": "full"})],
)
def test_network_type_round_trips_through_ss_keys(network, module, args):
    record = meta(base={"architecture": "sd1"}, network=network)
    header = project_metadata(record)
    assert header["ss_network_module"] == module
    assert (json.loads(header["ss_network_args"]) if "ss_network_args" in header else None) == args
    foreign_only = {k: v for k, v in header.items() if k.startswith("ss_")}
    assert import_metadata(foreign_only).metadata.network == record.network


def test_unknown_architecture_writes_no_modelspec_and_no_sd_version():
    header = project_metadata(meta(name="x", network={"type": "lora", "rank": 4}))
    assert not any(k.startswith("modelspec.") for k in header)
    assert "ss_v2" not in header and "ss_base_model_version" not in header
    assert header["ss_network_dim"] == "4"


def test_merge_projection_replaces_owned_keys_and_keeps_the_rest():
    existing = {**KOHYA_SDXL, "modelspec.thumbnail": "data:image/png;base64,AAAA", "modelspec.description": "old",
                "my_tool.rating": "5"}
    record = meta(name="New", base={"architecture": "sdxl-base"}, network={"type": "lora", "rank": 8})
    merged = merge_projection(existing, record)
    assert merged["modelspec.title"] == "New" and merged["ss_output_name"] == "New"
    assert "modelspec.description" not in merged  # ours, and the record has none
    assert "ss_network_alpha" not in merged  # 'Dynamic' was ours to replace; the record has no alpha
    assert merged["modelspec.thumbnail"] == "data:image/png;base64,AAAA"
    assert merged["my_tool.rating"] == "5"
    assert merged["ss_network_dim"] == "8"
    assert import_metadata(merged).metadata == record


def test_merge_projection_keeps_foreign_architecture_keys_it_cannot_replace():
    existing = {"modelspec.architecture": "lumina-2/lora", "modelspec.title": "Lumi",
                "ss_base_model_version": "lumina2"}
    merged = merge_projection(existing, meta(name="Lumi 2"))
    assert merged["modelspec.architecture"] == "lumina-2/lora"
    assert merged["ss_base_model_version"] == "lumina2"
    assert json.loads(merged["lorareg"])["name"] == "Lumi 2"


# --- properties ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adapter_metadata)
def test_project_then_import_returns_the_record(record):
    result = import_metadata(project_metadata(record))
    assert result.metadata == record
    assert result.warnings == []


KNOWN_KEYS = sorted({*KOHYA_SD1, *KOHYA_SDXL, *MODELSPEC_ONLY, *LYCORIS_LOHA, "lora_adapter_metadata", "lorareg",
                     "ss_v_parameterization"})
ODD_VALUES = ["None", "True", "False", "Dynamic", "", " ", "0", "-1", "1e999", "nan", "{", "[]", "[1, 2]", "{}",
              '{"algo": "loha"}', '{"unet": {"r": 0}}', '{"r": "x", "rank_pattern": [1]}', "0x" + "A" * 64,
              "(512, 512)", "1024x1024", "sd_v2_v", "stable-diffusion-v1/lora", "1684342410.5", "2024-13-40",
              '{"schema_version": "1"}', '{"schema_version": "9", "x": 1}', "\x00", "\u202e"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=20),
                       st.sampled_from(ODD_VALUES) | st.text(max_size=40), max_size=12),
       st.none() | st.just(FACTS))
def test_any_string_header_imports_or_raises_metadata_error(header, facts):
    try:
        result = import_metadata(header, facts=facts)
    except MetadataError as exc:
        assert "\n" not in str(exc)
        assert "lorareg" in header  # only our own record may be fatal
    else:
        assert isinstance(result.metadata, AdapterMetadata)
        assert all(isinstance(w, str) and "\n" not in w for w in result.warnings)


def test_every_architecture_projects_and_imports_back():
    for arch_id in ARCHITECTURES:
        record = meta(base={"architecture": arch_id})
        foreign_only = {k: v for k, v in project_metadata(record).items() if k != "lorareg"}
        assert import_metadata(foreign_only).metadata.base.architecture == arch_id
