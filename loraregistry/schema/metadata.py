"""The canonical metadata record of an adapter: ``AdapterMetadata`` (schema_version "1").

The record is stored as one compact JSON string with sorted keys under the header key ``lorareg``.
Models forbid unknown fields: a typo in a record is an error, not a silently ignored key. Records
written by a *newer* lorareg (higher ``schema_version``) are read tolerantly: fields this version
does not know are dropped with a warning (the peft config-loading convention).

``base.architecture`` accepts any alias the architecture table knows (``sdxl``,
``stable-diffusion-xl-v1-base/lora``, ``SDXL 1.0``, ...) and is normalized to our id (``sdxl-base``),
so every stored record carries the id.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..architectures.ids import ARCHITECTURES, resolve
from ..errors import MetadataError
from .keys import HEADER_KEY, SCHEMA_VERSION

# Spelled out for the JSON Schema; tests check they equal canonical.NETWORK_TYPES / COMPONENTS.
NetworkType = Literal["lora", "locon", "loha", "lokr", "dora", "full"]
ComponentName = Literal["unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer"]
PredictionType = Literal["epsilon", "v", "flow"]
ContentRating = Literal["general", "mature", "adult"]
Operation = Literal["train", "convert", "merge", "resize", "extract", "fix", "import"]

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256, 64 lowercase hex digits")]
Text = Annotated[str, Field(min_length=1, max_length=20_000)]
ShortText = Annotated[str, Field(min_length=1, max_length=500)]
Size = Annotated[int, Field(ge=1, le=65_536)]
Resolution = Annotated[tuple[Size, Size], Field(description="[width, height] in pixels")]
PositiveFloat = Annotated[float, Field(gt=0)]
Rank = Annotated[int, Field(ge=1, le=65_536)]


def _no_duplicates(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        dupes = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"duplicate entries {dupes}; list each once")
    return values


def _strip_checked(value: str) -> str:
    if value != value.strip():
        raise ValueError(f"{value!r} has leading or trailing whitespace; strip it")
    return value


def _known_field_path(value: str) -> str:
    if value not in field_paths():
        raise ValueError(f"{value!r} is not a field of the record (e.g. 'network.rank', 'base.architecture')")
    return value


FieldPath = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_known_field_path)]
Tag = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^,]+$"), AfterValidator(_strip_checked)]
TriggerWord = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_strip_checked)]


def cross_field_error(fields: str, problem: str) -> PydanticCustomError:
    """A rule over several fields; ``ctx['fields']`` names the field(s) to change (first = the one to drop)."""
    subject = fields.split(",")[0]
    return PydanticCustomError("cross_field", "{message}", {"fields": fields, "message": f"{subject} {problem}"})


class _Record(BaseModel):
    """Strict: unknown fields are errors, NaN/inf are refused (JSON cannot hold them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BaseInfo(_Record):
    """The base model the adapter was made for."""

    architecture: str | None = Field(
        None,
        description="Base architecture id (" + ", ".join(ARCHITECTURES) + "). Aliases (ModelSpec, kohya, Civitai, "
        "Hub repo ids) are accepted on input and normalized to the id.",
        examples=list(ARCHITECTURES),
    )
    model_id: str | None = Field(
        None, pattern=r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$", max_length=200,
        description="Hugging Face Hub repo id of the base model, e.g. 'stabilityai/stable-diffusion-xl-base-1.0'.",
    )
    model_name: ShortText | None = Field(
        None, description="Base checkpoint name as the trainer saw it (file name or repo id; kohya ss_sd_model_name).",
    )
    revision: ShortText | None = Field(None, description="Revision (commit sha, branch or tag) of model_id.")
    sha256: Sha256Hex | None = Field(None, description="sha256 of the base checkpoint file.")
    prediction_type: PredictionType | None = Field(
        None, description="What the base model predicts: epsilon, v (v-prediction) or flow (flow matching).",
    )
    resolution: Resolution | None = Field(None, description="Native [width, height] the adapter is meant for.")

    @field_validator("architecture")
    @classmethod
    def _normalize_architecture(cls, value: str | None) -> str | None:
        if value is None:
            return None
        arch = resolve(value)
        if arch is None:
            raise ValueError(f"unknown architecture {value!r}; known ids: {', '.join(ARCHITECTURES)}")
        return arch.id


class NetworkInfo(_Record):
    """The adapter network: algorithm, ranks and what it patches."""

    type: NetworkType | None = Field(None, description="Adapter algorithm: lora, locon, loha, lokr, dora or full.")
    rank: Rank | None = Field(None, description="Most common rank (dim) over Linear modules.")
    alpha: PositiveFloat | None = Field(None, description="Most common alpha; the scale is alpha / rank.")
    conv_rank: Rank | None = Field(None, description="Rank of convolution modules (LoCon / LoRA-C3Lier).")
    conv_alpha: PositiveFloat | None = Field(None, description="Alpha of convolution modules.")
    rank_pattern: dict[str, Rank] = Field(
        default_factory=dict, description="Modules ('component:path') whose rank differs from `rank`.",
    )
    alpha_pattern: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Modules ('component:path') whose alpha differs from `alpha`.",
    )
    components: Annotated[list[ComponentName], AfterValidator(_no_duplicates)] = Field(
        default_factory=list, description="Model components the adapter patches (unet, text_encoder, ...).",
    )
    target_modules: Annotated[list[ShortText], AfterValidator(_no_duplicates)] = Field(
        default_factory=list, description="Module names or patterns the adapter targets (peft target_modules).",
    )

    @model_validator(mode="after")
    def _conv_alpha_needs_conv_rank(self) -> NetworkInfo:
        if self.conv_alpha is not None and self.conv_rank is None:
            raise cross_field_error("network.conv_alpha",
                                    "is set but network.conv_rank is not; set conv_rank or drop conv_alpha")
        if self.alpha is not None and self.rank is None:
            raise cross_field_error("network.alpha", "is set but network.rank is not; set rank or drop alpha")
        return self


class TrainingInfo(_Record):
    """How the adapter was trained (all optional: imported files often say little)."""

    steps: int | None = Field(None, ge=1, description="Optimizer steps taken.")
    epochs: int | None = Field(None, ge=1, description="Epochs completed.")
    learning_rate: float | None = Field(None, ge=0, description="Base learning rate.")
    unet_lr: float | None = Field(None, ge=0, description="Learning rate of the UNet / transformer.")
    text_encoder_lr: float | None = Field(None, ge=0, description="Learning rate of the text encoder(s); 0 = frozen.")
    optimizer: ShortText | None = Field(None, description="Optimizer, with arguments if any, e.g. 'AdamW8bit'.")
    scheduler: ShortText | None = Field(None, description="Learning-rate scheduler, e.g. 'cosine'.")
    batch_size: int | None = Field(None, ge=1, description="Batch size per device.")
    seed: int | None = Field(None, ge=0, description="Random seed.")
    resolution: Resolution | None = Field(None, description="Training [width, height].")
    dataset_size: int | None = Field(None, ge=1, description="Number of distinct training images (no repeats).")
    dataset_hash: Sha256Hex | None = Field(None, description="sha256 identifying the dataset (images and captions).")
    tool: ShortText | None = Field(None, description="Training tool, e.g. 'lorareg' or 'sd-scripts'.")
    tool_version: ShortText | None = Field(None, description="Version or commit of the training tool.")
    started_at: AwareDatetime | None = Field(None, description="When training started (ISO 8601 with timezone).")
    finished_at: AwareDatetime | None = Field(None, description="When training finished (ISO 8601 with timezone).")
    mixed_precision: ShortText | None = Field(None, description="Mixed precision mode: 'no', 'fp16', 'bf16', ...")
    noise_offset: float | None = Field(None, ge=0, description="Noise offset.")
    min_snr_gamma: PositiveFloat | None = Field(None, description="Min-SNR weighting gamma.")
    clip_skip: int | None = Field(None, ge=1, le=12, description="CLIP skip (1 = last layer).")
    comment: Text | None = Field(None, description="Free-form training comment.")

    @model_validator(mode="after")
    def _finished_after_started(self) -> TrainingInfo:
        if self.started_at and self.finished_at and self.finished_at < self.started_at:
            raise cross_field_error(
                "training.finished_at,training.started_at",
                f"({self.finished_at.isoformat()}) is before training.started_at ({self.started_at.isoformat()}); "
                "swap or fix them",
            )
        return self


class Parent(_Record):
    """An input of a merge, conversion or resize."""

    sha256: Sha256Hex | None = Field(None, description="Whole-file sha256 of the parent.")
    tensor_sha256: Sha256Hex | None = Field(None, description="AutoV3 (tensor-data sha256) of the parent.")
    name: ShortText | None = Field(None, description="Name of the parent (file name, title or repo id).")
    weight: float | None = Field(None, description="Weight the parent was merged with.")

    @model_validator(mode="after")
    def _identified(self) -> Parent:
        if self.sha256 is None and self.tensor_sha256 is None and self.name is None:
            raise cross_field_error("provenance.parents", "need each at least one of sha256, tensor_sha256 or name")
        return self


class Provenance(_Record):
    """Where this file came from."""

    created_at: AwareDatetime | None = Field(None, description="When this file was written (ISO 8601, timezone).")
    tool: ShortText | None = Field(None, description="Tool that wrote this file.")
    tool_version: ShortText | None = Field(None, description="Version of that tool.")
    operation: Operation | None = Field(
        None, description="What made this file: train, convert, merge, resize, extract, fix or import.",
    )
    params: dict[str, JsonValue] = Field(default_factory=dict, description="Parameters of the operation.")
    parents: list[Parent] = Field(default_factory=list, description="Inputs of the operation, with hash and weight.")


class AdapterMetadata(_Record):
    """The canonical, versioned metadata record of a LoRA adapter (header key ``lorareg``)."""

    schema_version: Literal["1"] = Field(
        "1", description="Version of this schema; readers refuse unknown fields in v1 and drop them in newer ones.",
    )
    name: ShortText | None = Field(None, description="Human-readable name (ModelSpec title).")
    description: Text | None = Field(None, description="What the adapter does and how to use it.")
    author: ShortText | None = Field(None, description="Author name or organisation.")
    license: ShortText | None = Field(None, description="License id or name, e.g. 'openrail++' or 'cc-by-4.0'.")
    tags: Annotated[list[Tag], AfterValidator(_no_duplicates)] = Field(
        default_factory=list, description="Search tags (no commas: ModelSpec stores them as a comma list).",
    )
    content_rating: ContentRating = Field(
        "general", description="general, mature or adult (adult adds the Hub tag not-for-all-audiences).",
    )
    trigger_words: Annotated[list[TriggerWord], AfterValidator(_no_duplicates)] = Field(
        default_factory=list, description="Words or phrases that activate the adapter in a prompt.",
    )
    usage_hint: ShortText | None = Field(None, description="Very short usage hint (ModelSpec usage_hint).")
    recommended_weight: float | None = Field(
        None, ge=-5, le=5, description="Suggested strength when applying the adapter (-5 to 5; sliders go negative).",
    )
    base: BaseInfo = Field(default_factory=BaseInfo, description="The base model the adapter was made for.")
    network: NetworkInfo = Field(default_factory=NetworkInfo, description="Algorithm, ranks and targets.")
    training: TrainingInfo = Field(default_factory=TrainingInfo, description="How the adapter was trained.")
    provenance: Provenance = Field(default_factory=Provenance, description="Where this file came from.")
    tensor_sha256: Sha256Hex | None = Field(
        None, description="AutoV3: sha256 of the tensor data (header excluded), survives metadata edits.",
    )
    inferred: Annotated[list[FieldPath], AfterValidator(_no_duplicates)] = Field(
        default_factory=list,
        description="Fields (dotted paths, e.g. 'network.rank') whose value lorareg read from the weights or "
        "measured, not one the file's writer declared. They stay in this record and are never written into "
        "foreign keys (modelspec.*, ss_*).",
    )


@cache
def field_paths() -> frozenset[str]:
    """Every field of the record as a dotted path: 'name', 'network.rank', ... (sub-records opened one level)."""
    paths = set()
    for name, info in AdapterMetadata.model_fields.items():
        nested = info.annotation if isinstance(info.annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel):
            paths.update(f"{name}.{sub}" for sub in nested.model_fields)
        else:
            paths.add(name)
    return frozenset(paths - {"schema_version", "inferred"})


# --- storage under the header key `lorareg` -----------------------------------------------------


def to_header_value(meta: AdapterMetadata) -> str:
    """The record as one compact JSON string with sorted keys; defaults are left out to keep headers small."""
    data = meta.model_dump(mode="json", exclude_defaults=True)
    data["schema_version"] = meta.schema_version  # always present, even though it is the default
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def from_header_value(value: str) -> AdapterMetadata:
    """Parse a ``lorareg`` header value; raises MetadataError. Warnings (newer records) are dropped:
    use ``read_header_value`` to get them."""
    return read_header_value(value)[0]


def read_header_value(value: str) -> tuple[AdapterMetadata, list[str]]:
    """Parse a ``lorareg`` header value into the record and warnings; raises MetadataError (one line)."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as exc:  # ValueError: also integers past Python's 4,300 digits
        raise MetadataError(f"{HEADER_KEY}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{HEADER_KEY}: expected a JSON object, got {type(data).__name__}")
    warnings: list[str] = []
    version = data.get("schema_version", SCHEMA_VERSION)
    if _is_newer(version):
        dropped = _drop_unknown_fields(data, AdapterMetadata)
        data["schema_version"] = SCHEMA_VERSION
        if dropped:
            warnings.append(
                f"{HEADER_KEY}: schema_version {version} is newer than {SCHEMA_VERSION}; "
                f"ignored unknown fields {', '.join(dropped)} (upgrade lorareg to read them)"
            )
    try:
        return AdapterMetadata.model_validate(data), warnings
    except ValidationError as exc:
        raise MetadataError(f"{HEADER_KEY}: {describe_validation_error(exc)}") from None
    except RecursionError:
        raise MetadataError(f"{HEADER_KEY}: record is nested too deeply") from None


def _is_newer(version: Any) -> bool:
    is_number = isinstance(version, str) and re.fullmatch(r"[0-9]{1,6}", version) is not None
    return is_number and int(version) > int(SCHEMA_VERSION)


def _drop_unknown_fields(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    """Remove keys ``model`` does not declare, recursing into nested records; return the dropped paths."""
    dropped: list[str] = []
    for key in list(data):
        field = model.model_fields.get(key)
        if field is None:
            dropped.append(prefix + key)
            del data[key]
            continue
        nested = field.annotation if isinstance(field.annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel) and isinstance(data[key], dict):
            dropped += _drop_unknown_fields(data[key], nested, f"{prefix}{key}.")
        elif key == "parents" and isinstance(data[key], list):
            for i, parent in enumerate(data[key]):
                if isinstance(parent, dict):
                    dropped += _drop_unknown_fields(parent, Parent, f"{prefix}{key}[{i}].")
    return dropped


def describe_validation_error(exc: ValidationError) -> str:
    """One line: the first error as 'field.path: problem (got value)', plus how many more there are."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"]) or "record"
    if first["type"] == "extra_forbidden":
        problem = "unknown field (not in schema_version 1; check the spelling)"
    else:
        problem = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    quiet = first["type"] in ("extra_forbidden", "value_error", "cross_field") or isinstance(got, (dict, list))
    shown = "" if quiet else f" (got {_short(got)})"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    where = "" if first["type"] == "cross_field" else f"{path}: "  # the message starts with the field path
    return f"{where}{problem}{shown}{more}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

