"""``TrainConfig``: every setting of a training run, typed and strict, loaded from TOML and overridden by flags.

Sections mirror the pipeline: ``model`` (the base) -> ``data`` -> ``network`` (what LoRA patches) -> ``flow``
(FLUX/SD3 flow matching) -> ``optim`` ->
``train`` (the loop) -> ``output``. Unknown fields are errors (a typo never silently does nothing), and every error
is one line naming the field and what it accepts. Pure pydantic: importing this module never imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Architecture = Literal["sd1", "sd2-512", "sd2-768-v", "sdxl-base", "flux1-dev", "flux1-schnell", "sd3-medium",
                       "sd35-medium", "sd35-large"]
Precision = Literal["no", "fp16", "bf16"]
Optimizer = Literal["adamw", "adamw8bit", "prodigy"]
Scheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
OutputFormat = Literal["kohya", "diffusers"]
TrainedComponent = Literal["unet", "transformer", "text_encoder", "text_encoder_2"]
TimestepSampling = Literal["uniform", "logit_normal", "mode"]
OnBadItem = Literal["skip", "stop"]
# accelerate's trackers (accelerate.tracking.LOGGER_TYPE_TO_CLASS)
Tracker = Literal["tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio"]
OnMissingCaption = Literal["skip", "stop", "empty"]

# Module-name suffixes peft matches. "attn" is what the diffusers LoRA scripts train; "transformer" adds the
# projections and feed-forward of each transformer block (kohya's default target set).
UNET_TARGET_PRESETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "transformer": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
}
# FLUX.1 / SD3 transformer blocks (module names are matched inside transformer_blocks / single_transformer_blocks
# only, so the final proj_out never trains). "attn": the joint attention (and SD3.5 medium's attn2); "all" adds the
# feed-forwards and FLUX's single-block MLP and output projection: kohya's lora_flux / lora_sd3 default set.
_MMDIT_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
TRANSFORMER_TARGET_PRESETS = {
    "attn": _MMDIT_ATTENTION,
    "all": [*_MMDIT_ATTENTION, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
            "proj_out"],
}
TEXT_ENCODER_TARGET_PRESETS = {
    "attn": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}

DENOISERS = ("unet", "transformer")
Positive = Annotated[int, Field(ge=1)]
# network fields an init_from file decides (its modules, ranks, alphas, components, DoRA)
_FROM_INIT_FILE = frozenset({"rank", "alpha", "components", "unet_targets", "transformer_targets",
                             "text_encoder_targets", "conv_rank", "conv_alpha", "use_dora"})
Rate = Annotated[float, Field(ge=0, le=1)]


def _cross(field: str, problem: str) -> PydanticCustomError:
    return PydanticCustomError("cross_field", "{message}", {"message": f"{field} {problem}"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """The base model: where it is and what it is."""

    base: str = Field(description="local diffusers folder, single-file .safetensors/.ckpt, Hub id already in the "
                                  "HF cache, or tiny:sd1|sd2|sd2-v|sdxl|flux1-dev|flux1-schnell|"
                                  "sd3-medium|sd35-medium|sd35-large (built offline from configs)")
    revision: str | None = Field(None, description="Hub revision of a cached Hub id")
    variant: str | None = Field(None, description="weights variant to load, e.g. fp16")
    single_file_config: str | None = Field(
        None, description="for a single-file base: a diffusers folder or cached Hub id holding the component configs")
    architecture: Architecture | None = Field(None, description="override detection (within the base's family)")
    prediction_type: Literal["epsilon", "v"] | None = Field(None, description="override the scheduler's")
    fp8_base: bool = Field(False, description="keep the frozen UNet/transformer (and FLUX/SD3's T5) weights in float8 "
                                              "(e4m3), computing in the mixed-precision dtype (diffusers' layerwise "
                                              "casting): FLUX.1's transformer takes 12 GB instead of 24, T5-XXL ~6 "
                                              "instead of 9.5")


class DataConfig(_Section):
    """Images with same-name captions, or an HF imagefolder ``metadata.jsonl``."""

    folder: Path = Field(description="images + same-name captions; N_name subfolders repeat N times")
    caption_extension: str = Field(".txt", pattern=r"^\.[\w.-]+$")
    repeats: Positive = Field(1, description="repeats of images outside N_name folders")
    shuffle_captions: bool = Field(False, description="shuffle comma-separated tags after keep_tokens")
    keep_tokens: int = Field(1, ge=0, description="leading tags kept in place (the trigger word)")
    caption_dropout: Rate = Field(0.0, description="probability of training a sample with an empty caption")
    resolution: int = Field(512, ge=16, le=4096, description="training side length; buckets keep its area")
    buckets: bool = Field(True, description="aspect-ratio buckets (else center crop to a square)")
    bucket_step: int = Field(64, ge=8, le=512, description="bucket sides are multiples of this")
    cache_dir: Path | None = Field(None, description="latent / text-embedding cache (default: user cache)")
    missing_caption: OnMissingCaption = Field("skip", description="image without caption: skip, stop or empty")
    bad_image: OnBadItem = Field("skip", description="unreadable image: skip (reported) or stop")
    validation_split: int | float = Field(0, description="images held out for the validation loss: a count (2) or "
                                                         "a fraction (0.1); which ones follows from train.seed")

    @field_validator("validation_split")
    @classmethod
    def _split(cls, value: int | float) -> int | float:
        if value < 0 or (isinstance(value, float) and value >= 1):
            raise ValueError("takes a count of images (a whole number >= 0) or a fraction (0 < x < 1)")
        return value

    @model_validator(mode="after")
    def _step_divides(self) -> DataConfig:
        if self.resolution % 8:
            raise _cross("data.resolution", f"must be a multiple of 8 (got {self.resolution})")
        return self


class NetworkConfig(_Section):
    """What the adapter patches and how big it is."""

    rank: Positive = 16
    alpha: float = Field(8.0, gt=0, description="scale = alpha / rank")
    dropout: Rate = 0.0
    components: list[TrainedComponent] = Field(["unet"], min_length=1, description="unet for SD1/SD2/SDXL, "
                                               "transformer for FLUX.1/SD3 (the default there)")
    unet_targets: list[str] | Literal["attn", "transformer"] = "attn"
    transformer_targets: list[str] | Literal["attn", "all"] = Field("all", description="FLUX.1 / SD3 modules")
    text_encoder_targets: list[str] | Literal["attn", "all"] = "attn"
    conv_rank: int = Field(0, ge=0, description="> 0 adds ResNet convolutions (LoCon)")
    conv_alpha: float | None = Field(None, gt=0)
    use_dora: bool = False
    init_from: Path | None = Field(None, description="an adapter file (any format lorareg reads) to continue: its "
                                                     "modules, ranks and alphas replace the fields above")

    @field_validator("components")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a component twice: {value}")
        return value

    @model_validator(mode="after")
    def _conv(self) -> NetworkConfig:
        if self.conv_alpha is not None and not self.conv_rank:
            raise _cross("network.conv_alpha", "is set but network.conv_rank is 0; set conv_rank or drop conv_alpha")
        return self

    @model_validator(mode="after")
    def _init_from_decides(self) -> NetworkConfig:
        if self.init_from is not None:
            clash = sorted(self.model_fields_set & _FROM_INIT_FILE)
            if clash:
                raise _cross(f"network.{clash[0]}", "is taken from network.init_from; drop one of them")
        return self

    def unet_modules(self) -> list[str]:
        t = self.unet_targets
        return list(UNET_TARGET_PRESETS[t] if isinstance(t, str) else t)

    def transformer_modules(self) -> list[str]:
        t = self.transformer_targets
        return list(TRANSFORMER_TARGET_PRESETS[t] if isinstance(t, str) else t)

    def text_encoder_modules(self) -> list[str]:
        t = self.text_encoder_targets
        return list(TEXT_ENCODER_TARGET_PRESETS[t] if isinstance(t, str) else t)


class FlowConfig(_Section):
    """Flow matching (FLUX.1, SD3.x): how timesteps are drawn and what conditions the transformer. Defaults are the
    diffusers training scripts' (train_dreambooth_lora_flux.py / _sd3.py); a UNet base refuses this section."""

    timestep_sampling: TimestepSampling | None = Field(
        None, description="density of the noise level: uniform, logit_normal (SD3 paper) or mode; default: FLUX "
                          "uniform, SD3 logit_normal")
    logit_mean: float = Field(0.0, description="logit_normal: mean")
    logit_std: float = Field(1.0, gt=0, description="logit_normal: standard deviation")
    mode_scale: float = Field(1.29, description="mode: its scale")
    shift: float | None = Field(None, gt=0, description="shift the sampled sigmas: s' = shift*s / (1 + (shift-1)*s) "
                                                        "(kohya's discrete_flow_shift); default: the base "
                                                        "scheduler's own sigmas")
    guidance_scale: float = Field(3.5, ge=0, description="FLUX.1 dev's distilled guidance input while training")
    max_sequence_length: int | None = Field(
        None, ge=1, le=512, description="T5 tokens; default FLUX dev 512, schnell 256, SD3 77 (capped by the "
                                        "tokenizer); part of the text cache key")


class OptimConfig(_Section):
    optimizer: Optimizer = "adamw"
    lr: float = Field(1e-4, gt=0, le=10)
    unet_lr: float | None = Field(None, gt=0, le=10, description="lr of the UNet or FLUX/SD3 transformer")
    text_encoder_lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float = Field(1e-2, ge=0)
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0)
    scheduler: Scheduler = "cosine"
    warmup_steps: int = Field(0, ge=0)
    grad_accumulation: Positive = 1
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip gradients to this norm; omit to disable")


Seed = Annotated[int, Field(ge=0, lt=2**63)]


class SamplePrompt(_Section):
    """One row of the sample grid."""

    prompt: str
    negative_prompt: str | None = Field(None, description="default: train.sample_negative_prompt")
    seeds: list[Seed] | None = Field(None, min_length=1, description="default: train.sample_seeds")


# a plain prompt, or a table: errors then name the table's field, not "should be a valid string"
SampleEntry = Annotated[Union[Annotated[str, Tag("prompt")], Annotated[SamplePrompt, Tag("table")]],
                        Discriminator(lambda v: "prompt" if isinstance(v, str) else "table")]


class LoopConfig(_Section):
    """The ``[train]`` section."""

    steps: Positive | None = Field(None, description="optimizer steps (or give epochs)")
    epochs: Positive | None = None
    batch_size: Positive = 1
    seed: int = Field(42, ge=0, lt=2**32)
    mixed_precision: Precision = "no"
    gradient_checkpointing: bool = False
    min_snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0, le=1)
    checkpoint_every: int = Field(0, ge=0, description="0 = no intermediate checkpoints")
    keep_checkpoints: Positive = 2
    sample_every: int = Field(0, ge=0, description="0 = samples only at the end (if prompts are set)")
    sample_prompts: list[SampleEntry] = Field(
        default_factory=list, description='a grid row each: "a prompt", or {prompt, negative_prompt, seeds}')
    sample_negative_prompt: str = Field("", description="negative prompt of the sample prompts that set none")
    sample_seeds: list[Seed] = Field(default_factory=lambda: [0], description="seeds of the rows that set none")
    sample_steps: Positive = 20
    sample_guidance: float = Field(7.0, ge=0)
    log_every: Positive = Field(1, description="log to the trackers every N steps (loss.csv has every step)")
    validate_every: int = Field(0, ge=0, description="validation loss every N steps (0 = at the end only); needs "
                                                     "data.validation_split")
    validation_draws: Positive = Field(4, le=256, description="fixed (noise, timestep) draws per held-out image, "
                                                              "the same at every validation: values compare")

    def sample_rows(self) -> list[SamplePrompt]:
        """Every sample prompt with its negative prompt and seeds filled in from the section's defaults."""
        rows = []
        for entry in self.sample_prompts:
            row = SamplePrompt(prompt=entry) if isinstance(entry, str) else entry
            rows.append(SamplePrompt(prompt=row.prompt, seeds=row.seeds or list(self.sample_seeds),
                                     negative_prompt=self.sample_negative_prompt if row.negative_prompt is None
                                     else row.negative_prompt))
        return rows

    @model_validator(mode="after")
    def _length(self) -> LoopConfig:
        if (self.steps is None) == (self.epochs is None):
            raise _cross("train.steps", "or train.epochs: set exactly one of them")
        if not self.sample_seeds:
            raise _cross("train.sample_seeds", "must list at least one seed")
        return self


class OutputConfig(_Section):
    dir: Path = Path("lorareg-output")
    name: str = Field("lora", pattern=r"^[\w.-]+$", max_length=120)
    formats: list[OutputFormat] = Field(["kohya"], min_length=1)
    dtype: Literal["fp16", "fp32"] = Field("fp16", description="dtype of the saved factors")
    trigger_words: list[str] = Field(default_factory=list)
    license: str | None = None
    content_rating: Literal["general", "mature", "adult"] = "general"
    description: str | None = None
    author: str | None = None
    tags: list[str] = Field(default_factory=list)
    add_to_registry: bool = Field(True, description="add the result to the local registry")
    trackers: list[Tracker] | None = Field(None, description="accelerate trackers to log to (each must be installed);"
                                                             " default: tensorboard when installed")
    push_to: str | None = Field(None, description="Hub repo (user/name): push the verified adapter, samples and "
                                                  "loss plot there when training ends")
    push_endpoint: str | None = Field(None, description="Hub-compatible endpoint (default: $HF_ENDPOINT, else "
                                                        "huggingface.co)")
    push_private: bool = Field(False, description="create the push_to repo as private")

    @field_validator("trackers")
    @classmethod
    def _unique_trackers(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"lists a tracker twice: {value}")
        return value


class TrainConfig(_Section):
    """A whole run. ``TrainConfig.load(path, overrides)`` is the usual way in."""

    model: ModelConfig
    data: DataConfig
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: LoopConfig
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _validation_needs_a_split(self) -> TrainConfig:
        if self.train.validate_every and not self.data.validation_split:
            raise _cross("train.validate_every", "needs held-out images: set data.validation_split (a count or a "
                                                  "fraction)")
        return self

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Read a TOML file (its relative paths are relative to the file), then apply dotted overrides (their
        relative paths are relative to the working directory)."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            data = resolve_paths(read_toml(path), path.resolve().parent)
        extra: dict[str, Any] = {}
        for dotted, value in (overrides or {}).items():
            set_dotted(extra, dotted, value)
        for section, values in resolve_paths(extra, Path.cwd()).items():
            data[section] = {**(data.get(section) or {}), **values}
        return from_dict(data)

    def lr_for(self, component: str) -> float:
        specific = self.optim.unet_lr if component in DENOISERS else self.optim.text_encoder_lr
        return specific if specific is not None else self.optim.lr

    def trains_text_encoder(self) -> bool:
        return any(c not in DENOISERS for c in self.network.components)


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig, "data": DataConfig, "network": NetworkConfig, "flow": FlowConfig, "optim": OptimConfig,
    "train": LoopConfig,
    "output": OutputConfig,
}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("no such config file", path=path, hint="write one with `lorareg train init`") from None
    except IsADirectoryError:
        raise ConfigError("is a folder, expected a TOML file", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None


def parse_value(text: str) -> Any:
    """A flag value as TOML (``8``, ``1e-4``, ``true``, ``["unet"]``); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, name = dotted.partition(".")
    if section not in SECTIONS or not name or "." in name:
        raise ConfigError(f"--set {dotted}: expected section.field with section one of {', '.join(SECTIONS)}")
    fields = SECTIONS[section].model_fields
    if name not in fields:
        raise ConfigError(f"--set {dotted}: unknown field; {section} has {', '.join(fields)}")
    data.setdefault(section, {})[name] = value


_PATH_FIELDS = (("data", "folder"), ("data", "cache_dir"), ("output", "dir"), ("network", "init_from"))


def resolve_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Make relative paths in ``data`` absolute against ``base_dir`` (``model.base`` only when it starts with
    ``.`` or ``~``: otherwise it may be a Hub id like ``org/model``)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, name in _PATH_FIELDS:
        value = data.get(section, {}).get(name) if isinstance(data.get(section), dict) else None
        if isinstance(value, str):
            data[section][name] = str((base_dir / Path(value).expanduser()).resolve())
    model = data.get("model")
    base = model.get("base") if isinstance(model, dict) else None
    if isinstance(base, str) and base.startswith((".", "~")):
        model["base"] = str((base_dir / Path(base).expanduser()).resolve())
    return data


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict (paths may be strings) into a config; ConfigError on the first problem."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, name in _PATH_FIELDS:
        value = data.get(section, {}).get(name) if isinstance(data.get(section), dict) else None
        if isinstance(value, str):
            data[section][name] = Path(value)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """The first problem, as 'section.field: what is wrong; allowed: ...' (one line)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    where = ".".join(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else ""
        message = f"{where}: unknown field; allowed: {allowed}"
    elif kind == "missing":
        message = f"{where}: required"
    elif kind == "cross_field":
        message = first["msg"]
    else:
        got = first.get("input")
        message = f"{where}: {first['msg'].removeprefix('Value error, ')} (got {got!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return message + more


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    if not loc:
        return TrainConfig
    if loc[-1] == "table":  # a train.sample_prompts entry
        return SamplePrompt
    return SECTIONS.get(loc[0]) if len(loc) == 1 else None
