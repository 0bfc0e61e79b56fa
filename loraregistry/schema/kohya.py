"""kohya sd-scripts ``ss_*`` metadata: a tolerant import model, its mapping, and the projection we write.

Reference: sd-scripts ``train_network.py`` (every value goes through ``str()``, so ``"None"``, ``"True"``
and Python tuple reprs occur) and ``library/train_util.py`` (``SS_METADATA_MINIMUM_KEYS``). There is no
trigger-word key in ``ss_*``; ``ss_tag_frequency`` holds caption statistics, and we never guess
trigger words from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from ..architectures.ids import ARCHITECTURES, resolve
from ._foreign import (
    Findings,
    ForeignRecord,
    Lenient,
    LenientBool,
    LenientNonNegativeFloat,
    LenientPositiveFloat,
    LenientPositiveInt,
    LenientResolution,
    LenientSeed,
    LenientSha256,
    LenientStr,
    LenientTimestamp,
    parse_json,
    short,
)
from .metadata import AdapterMetadata

PREFIXES = ("ss_", "sshs_")


def _single_learning_rate(value: Any) -> Any:
    """sd-scripts writes a list for SDXL's two text encoders: '[0.0001, 5e-05]'. One value if they agree."""
    if isinstance(value, str) and value.strip().startswith("["):
        rates = parse_json(value)
        if isinstance(rates, list) and rates and all(rate == rates[0] for rate in rates):
            return rates[0]
        raise ValueError("differs per text encoder; lorareg records one rate")
    return value


class _DatasetDir(BaseModel):
    img_count: int = Field(ge=0)


LearningRate = Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(_single_learning_rate), Lenient]
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


# key -> AdapterMetadata field, for keys that map one to one
_DIRECT = {
    "ss_output_name": "name",
    "ss_sd_model_name": "base.model_name",
    "ss_new_sd_model_hash": "base.sha256",
    "sshs_model_hash": "tensor_sha256",
    "ss_network_dim": "network.rank",
    "ss_network_alpha": "network.alpha",
    "ss_learning_rate": "training.learning_rate",
    "ss_unet_lr": "training.unet_lr",
    "ss_text_encoder_lr": "training.text_encoder_lr",
    "ss_optimizer": "training.optimizer",
    "ss_lr_scheduler": "training.scheduler",
    "ss_batch_size_per_device": "training.batch_size",
    "ss_seed": "training.seed",
    "ss_resolution": "training.resolution",
    "ss_training_started_at": "training.started_at",
    "ss_training_finished_at": "training.finished_at",
    "ss_mixed_precision": "training.mixed_precision",
    "ss_noise_offset": "training.noise_offset",
    "ss_min_snr_gamma": "training.min_snr_gamma",
    "ss_clip_skip": "training.clip_skip",
    "ss_training_comment": "training.comment",
}
# field -> keys in order of preference: the actual count at save time beats the planned one
_FIRST_OF = {
    "training.steps": ("ss_steps", "ss_max_train_steps"),
    "training.epochs": ("ss_epoch", "ss_num_epochs"),
}
# LyCORIS algo -> network type; "lora" in LyCORIS is LoCon (it also trains conv layers)
_LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr", "full": "full", "dylora": "lora"}


def is_kohya_key(key: str) -> bool:
    return key.startswith(PREFIXES)


def read_kohya(header: Mapping[str, str]) -> Findings:
    """What the ``ss_*`` keys of a header say about the canonical record."""
    found = Findings("kohya")
    record = KohyaMetadata.read({k: v for k, v in header.items() if is_kohya_key(k)}, where="", warnings=found.warnings)
    for key, path in _DIRECT.items():
        found.put(path, getattr(record, key), key)
    for path, keys in _FIRST_OF.items():
        key = next((k for k in keys if getattr(record, k) is not None), None)
        if key:
            found.put(path, getattr(record, key), key)
    if record.ss_sd_scripts_commit_hash:
        found.put("training.tool", "sd-scripts", "ss_sd_scripts_commit_hash")
        found.put("training.tool_version", record.ss_sd_scripts_commit_hash, "ss_sd_scripts_commit_hash")
    if record.ss_dataset_dirs:
        images = sum(d.img_count for d in record.ss_dataset_dirs.values())
        found.put("training.dataset_size", images or None, "ss_dataset_dirs")
    if record.ss_v_parameterization:
        found.put("base.prediction_type", "v", "ss_v_parameterization")
    _read_architecture(record, found)
    _read_network(record, found)
    return found


def _read_architecture(record: KohyaMetadata, found: Findings) -> None:
    version = record.ss_base_model_version
    if version is not None:
        arch = resolve(version)
        if arch is None:
            found.warnings.append(f"ss_base_model_version = {short(version)}: unknown base; architecture left unset")
            return
        if record.ss_v2 is not None and record.ss_v2 != arch.ss_v2:
            found.warnings.append(f"ss_v2 = {record.ss_v2} disagrees with ss_base_model_version = {version!r}; "
                                  "using ss_base_model_version")
        found.put("base.architecture", arch.id, "ss_base_model_version")
    elif record.ss_v2 is not None:  # files from before ss_base_model_version (SD1/SD2 only)
        arch_id = ("sd2-768-v" if record.ss_v_parameterization else "sd2-512") if record.ss_v2 else "sd1"
        found.put("base.architecture", arch_id, "ss_v2")


def _read_network(record: KohyaMetadata, found: Findings) -> None:
    args = KohyaNetworkArgs()
    if record.ss_network_args is not None:
        args = KohyaNetworkArgs.read(record.ss_network_args, where="ss_network_args.", warnings=found.warnings)
    found.put("network.conv_rank", args.conv_dim, "ss_network_args")
    found.put("network.conv_alpha", args.conv_alpha, "ss_network_args")
    module = record.ss_network_module
    if module is None:
        return
    if module.startswith("lycoris"):
        algo = (args.algo or "lora").lower()
        network_type = _LYCORIS_ALGOS.get(algo)
        if network_type in ("lora", "locon") and args.dora_wd:
            network_type = "dora"
        if network_type is None:
            found.warnings.append(f"ss_network_args.algo = {algo!r}: not a network type lorareg records "
                                  "(lora, locon, loha, lokr, dora, full); network.type left unset")
            return
        found.put("network.type", network_type, "ss_network_module")
    elif module.rsplit(".", 1)[-1].startswith(("lora", "dylora")):  # networks.lora, networks.lora_flux, ...
        found.put("network.type", "locon" if args.conv_dim else "lora", "ss_network_module")
    else:
        found.warnings.append(f"ss_network_module = {short(module)}: not a LoRA network lorareg knows; "
                              "network.type left unset")


# --- projection: the ss_* keys lorareg writes ---------------------------------------------------

# Keys written only when the architecture is known (A1111 reads them to pick SD1 / SD2 / SDXL).
ARCHITECTURE_KEYS = frozenset({"ss_v2", "ss_base_model_version"})
OWNED_KEYS = frozenset({
    "ss_network_module", "ss_network_args", "ss_steps", "ss_epoch", *_DIRECT,
}) | ARCHITECTURE_KEYS


def _network_module(meta: AdapterMetadata) -> tuple[str | None, dict[str, str]]:
    """ss_network_module and ss_network_args as sd-scripts / LyCORIS write them (arg values are strings)."""
    net = meta.network
    conv = {}
    if net.conv_rank is not None:
        conv["conv_dim"] = str(net.conv_rank)
        if net.conv_alpha is not None:
            conv["conv_alpha"] = _number(net.conv_alpha)
    if net.type in ("lora", "locon"):
        return "networks.lora", conv
    if net.type == "dora":
        return "lycoris.kohya", {"algo": "lora", "dora_wd": "True", **conv}
    if net.type in ("loha", "lokr", "full"):
        return "lycoris.kohya", {"algo": net.type, **conv}
    return None, conv


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def kohya_projection(meta: AdapterMetadata) -> dict[str, str]:
    """The minimal ``ss_*`` set (plus the training facts we have), as sd-scripts would spell them."""
    out: dict[str, str] = {}
    arch = ARCHITECTURES.get(meta.base.architecture or "")
    if arch is not None:
        out["ss_base_model_version"] = arch.kohya  # 'sdxl_' prefix -> A1111 shows it as SDXL
        out["ss_v2"] = str(arch.ss_v2)  # 'True' -> A1111 shows it as SD2
    module, args = _network_module(meta)
    if module:
        out["ss_network_module"] = module
    if args:
        out["ss_network_args"] = json.dumps(args, sort_keys=True)
    training = meta.training
    values = {
        "ss_output_name": meta.name,
        "ss_sd_model_name": meta.base.model_name,
        "ss_new_sd_model_hash": meta.base.sha256,
        "sshs_model_hash": meta.tensor_sha256,
        "ss_network_dim": meta.network.rank,
        "ss_network_alpha": meta.network.alpha,
        "ss_learning_rate": training.learning_rate,
        "ss_unet_lr": training.unet_lr,
        "ss_text_encoder_lr": training.text_encoder_lr,
        "ss_optimizer": training.optimizer,
        "ss_lr_scheduler": training.scheduler,
        "ss_batch_size_per_device": training.batch_size,
        "ss_seed": training.seed,
        "ss_resolution": f"({training.resolution[0]}, {training.resolution[1]})" if training.resolution else None,
        "ss_steps": training.steps,
        "ss_epoch": training.epochs,
        "ss_training_started_at": training.started_at.timestamp() if training.started_at else None,
        "ss_training_finished_at": training.finished_at.timestamp() if training.finished_at else None,
        "ss_mixed_precision": training.mixed_precision,
        "ss_noise_offset": training.noise_offset,
        "ss_min_snr_gamma": training.min_snr_gamma,
        "ss_clip_skip": training.clip_skip,
        "ss_training_comment": training.comment,
    }
    for key, value in values.items():
        if value is not None:
            out[key] = value if isinstance(value, str) else (_number(value) if isinstance(value, float) else str(value))
    return out
