"""The tolerant pydantic models of foreign metadata: kohya ``ss_*``, ModelSpec, the peft config of diffusers'
``lora_adapter_metadata``.

Safetensors metadata is str -> str and written by many tools, so a foreign value that does not parse is never
fatal: the field becomes ``None`` and a warning names the key, the value and the problem. Every lenient field is
declared as ``Annotated[T | None, ..., Lenient]``; ``Lenient`` wraps the normal validation of ``T`` and turns its
failure into that warning.

These models are the reference. The readers first try ``light.light_record``, which accepts only values it knows
these models accept unchanged, and fall back here for anything else; ``kohya.FIELDS`` and ``modelspec.FIELDS``
name the light kind of each field, and tests/test_speed_light_schema.py holds the two together.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, WrapValidator

from ._foreign import (
    NULL_STRINGS,
    parse_json,
    parse_list,
    parse_resolution,
    parse_sha256,
    parse_timestamp,
    short,
    single_learning_rate,
)


def _lenient(value: Any, handler: Any, info: ValidationInfo) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in NULL_STRINGS):
        return None
    try:
        return handler(value)
    except ValidationError as exc:
        context = info.context or {}
        problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        where = f"{context.get('where', '')}{info.field_name}"
        context.get("warnings", []).append(f"{where} = {short(value)}: ignored ({problem})")
        return None


Lenient = WrapValidator(_lenient)


LenientStr = Annotated[Annotated[str, Field(min_length=1, max_length=20_000)] | None, Lenient]
LenientBool = Annotated[bool | None, Lenient]
LenientPositiveInt = Annotated[Annotated[int, Field(ge=1)] | None, Lenient]
LenientSeed = Annotated[Annotated[int, Field(ge=0)] | None, Lenient]
LenientPositiveFloat = Annotated[Annotated[float, Field(gt=0)] | None, Lenient]
LenientNonNegativeFloat = Annotated[Annotated[float, Field(ge=0)] | None, Lenient]
LenientList = Annotated[list[str] | None, BeforeValidator(parse_list), Lenient]
LenientResolution = Annotated[tuple[int, int] | None, BeforeValidator(parse_resolution), Lenient]
LenientTimestamp = Annotated[datetime | None, BeforeValidator(parse_timestamp), Lenient]
LenientSha256 = Annotated[str | None, BeforeValidator(parse_sha256), Lenient]


class ForeignRecord(BaseModel):
    """Base of the tolerant import models: unknown keys are ignored, NaN/inf refused, nothing raises."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_strip_whitespace=True, frozen=True)

    @classmethod
    def read(cls, data: Mapping[str, Any], *, where: str, warnings: list[str]) -> Any:
        """Validate ``data`` leniently; problems go to ``warnings`` as '<where><key> = value: ignored (why)'."""
        return cls.model_validate(dict(data), context={"warnings": warnings, "where": where})


# --- kohya sd-scripts ----------------------------------------------------------------------------

class _DatasetDir(BaseModel):
    img_count: int = Field(ge=0)


LearningRate = Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(single_learning_rate), Lenient]
DatasetDirs = Annotated[dict[str, _DatasetDir] | None, BeforeValidator(parse_json), Lenient]
JsonObject = Annotated[dict[str, Any] | None, BeforeValidator(parse_json), Lenient]


class KohyaMetadata(ForeignRecord):
    """The ``ss_*`` keys lorareg reads (all others stay in ``sources['kohya']`` untouched)."""

    ss_output_name: LenientStr = None
    ss_v2: LenientBool = None
    ss_v_parameterization: LenientBool = None
    ss_base_model_version: LenientStr = None
    ss_network_module: LenientStr = None
    ss_network_dim: LenientPositiveInt = None
    ss_network_alpha: LenientPositiveFloat = None
    ss_network_args: JsonObject = None
    ss_sd_model_name: LenientStr = None
    ss_new_sd_model_hash: LenientSha256 = None
    sshs_model_hash: LenientSha256 = None
    ss_learning_rate: LearningRate = None
    ss_unet_lr: LearningRate = None
    ss_text_encoder_lr: LearningRate = None
    ss_optimizer: LenientStr = None
    ss_lr_scheduler: LenientStr = None
    ss_batch_size_per_device: LenientPositiveInt = None
    ss_seed: LenientSeed = None
    ss_resolution: LenientResolution = None
    ss_steps: LenientPositiveInt = None
    ss_max_train_steps: LenientPositiveInt = None
    ss_epoch: LenientPositiveInt = None
    ss_num_epochs: LenientPositiveInt = None
    ss_training_started_at: LenientTimestamp = None
    ss_training_finished_at: LenientTimestamp = None
    ss_mixed_precision: LenientStr = None
    ss_noise_offset: LenientNonNegativeFloat = None
    ss_min_snr_gamma: LenientPositiveFloat = None
    ss_clip_skip: LenientPositiveInt = None
    ss_training_comment: LenientStr = None
    ss_sd_scripts_commit_hash: LenientStr = None
    ss_dataset_dirs: DatasetDirs = None


class KohyaNetworkArgs(ForeignRecord):
    """The keys of ``ss_network_args`` (JSON of the ``--network_args`` strings) that lorareg reads."""

    algo: LenientStr = None
    conv_dim: LenientPositiveInt = None
    conv_alpha: LenientPositiveFloat = None
    dora_wd: LenientBool = None


# --- Stability ModelSpec ---------------------------------------------------------------------------

class ModelSpecMetadata(ForeignRecord):
    """The ``modelspec.*`` keys lorareg reads, without their prefix."""

    sai_model_spec: LenientStr = None
    architecture: LenientStr = None
    implementation: LenientStr = None
    title: LenientStr = None
    description: LenientStr = None
    author: LenientStr = None
    date: LenientTimestamp = None
    hash_sha256: LenientSha256 = None
    license: LenientStr = None
    usage_hint: LenientStr = None
    tags: LenientList = None
    trigger_phrase: LenientList = None
    prediction_type: Annotated[Literal["epsilon", "v", "flow"] | None, Lenient] = None
    resolution: LenientResolution = None
    merged_from: LenientList = None


# --- diffusers lora_adapter_metadata (peft configs) ------------------------------------------------

def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # peft allows one regex string


class PeftConfig(ForeignRecord):
    """The keys of a peft LoraConfig / LoHaConfig / LoKrConfig that lorareg reads."""

    peft_type: LenientStr = None
    r: LenientPositiveInt = None
    lora_alpha: LenientPositiveFloat = None
    alpha: LenientPositiveFloat = None  # LoHa / LoKr spell it without the prefix
    rank_pattern: Annotated[dict[str, Annotated[int, Field(ge=1)]] | None, Lenient] = None
    alpha_pattern: Annotated[dict[str, Annotated[float, Field(gt=0)]] | None, Lenient] = None
    target_modules: Annotated[list[Annotated[str, Field(min_length=1, max_length=500)]] | None,
                              BeforeValidator(_as_list), Lenient] = None
    use_dora: LenientBool = None
    base_model_name_or_path: LenientStr = None
    revision: LenientStr = None
