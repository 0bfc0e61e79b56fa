"""kohya sd-scripts ``ss_*`` metadata: a tolerant import model, its mapping, and the projection we write.

Reference: sd-scripts ``train_network.py`` (every value goes through ``str()``, so ``"None"``, ``"True"``
and Python tuple reprs occur) and ``library/train_util.py`` (``SS_METADATA_MINIMUM_KEYS``). There is no
trigger-word key in ``ss_*``; ``ss_tag_frequency`` holds caption statistics, and we never guess
trigger words from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..architectures.ids import ARCHITECTURES, resolve
from ._foreign import Findings, short
from .light import light_record

if TYPE_CHECKING:
    from .metadata import AdapterMetadata

PREFIXES = ("ss_", "sshs_")


# The fields lorareg reads, by light kind (``light.KINDS``); the pydantic models in ``foreign_models`` declare the
# same fields with the same types (a test holds them together). Every other ss_* key stays in sources['kohya'].
FIELDS = {
    "ss_output_name": "str", "ss_v2": "bool", "ss_v_parameterization": "bool", "ss_base_model_version": "str",
    "ss_network_module": "str", "ss_network_dim": "positive_int", "ss_network_alpha": "positive_float",
    "ss_network_args": "json_object", "ss_sd_model_name": "str", "ss_new_sd_model_hash": "sha256",
    "sshs_model_hash": "sha256", "ss_learning_rate": "learning_rate", "ss_unet_lr": "learning_rate",
    "ss_text_encoder_lr": "learning_rate", "ss_optimizer": "str", "ss_lr_scheduler": "str",
    "ss_batch_size_per_device": "positive_int", "ss_seed": "seed", "ss_resolution": "resolution",
    "ss_steps": "positive_int", "ss_max_train_steps": "positive_int", "ss_epoch": "positive_int",
    "ss_num_epochs": "positive_int", "ss_training_started_at": "timestamp", "ss_training_finished_at": "timestamp",
    "ss_mixed_precision": "str", "ss_noise_offset": "non_negative_float", "ss_min_snr_gamma": "positive_float",
    "ss_clip_skip": "positive_int", "ss_training_comment": "str", "ss_sd_scripts_commit_hash": "str",
    "ss_dataset_dirs": "dataset_dirs",
}
# The keys of ``ss_network_args`` (JSON of the ``--network_args`` strings) that lorareg reads.
NETWORK_ARG_FIELDS = {"algo": "str", "conv_dim": "positive_int", "conv_alpha": "positive_float", "dora_wd": "bool"}


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
    raw = {k: v for k, v in header.items() if is_kohya_key(k)}
    record = light_record(FIELDS, raw)
    if record is None:  # a value the light reader cannot vouch for: the pydantic model judges it, with its warning
        from .foreign_models import KohyaMetadata

        record = KohyaMetadata.read(raw, where="", warnings=found.warnings)
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


def _read_architecture(record: Any, found: Findings) -> None:
    version = record.ss_base_model_version
    if version is not None:
        arch = ARCHITECTURES.get(_SD3_VERSIONS_READ.get(version, "")) or resolve(version)
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


def _read_network(record: Any, found: Findings) -> None:
    raw_args = record.ss_network_args or {}
    args = light_record(NETWORK_ARG_FIELDS, raw_args)
    if args is None:
        from .foreign_models import KohyaNetworkArgs

        args = KohyaNetworkArgs.read(raw_args, where="ss_network_args.", warnings=found.warnings)
    found.put("network.conv_rank", args.conv_dim, "ss_network_args")
    found.put("network.conv_alpha", args.conv_alpha, "ss_network_args")
    module = record.ss_network_module
    if module is None:
        return
    if module.startswith("lycoris"):
        algo = (args.algo or "lora").lower()
        network_type = _LYCORIS_ALGOS.get(algo)
        if network_type == "locon" and args.algo and not args.conv_dim:  # a declared "lora" without conv_dim:
            network_type = "lora"  # LyCORIS creates no 3x3-conv module, so the file is a plain LoRA
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


# sd-scripts' sd3_train_network.py writes the MMDiT's model type as ss_base_model_version: a suffix of
# "stable-diffusion-3-" ("medium", "5-large", "5-medium"; "3-medium", "3-5-large", "3-5-medium" before Aug 2025).
# Those words mean SD3 only in this key, so they are read here, not added to the global alias table.
_SD3_VERSIONS_WRITTEN = {"sd3-medium": "medium", "sd35-large": "5-large", "sd35-medium": "5-medium"}
_SD3_VERSIONS_READ = {**{v: k for k, v in _SD3_VERSIONS_WRITTEN.items()},
                      "3-medium": "sd3-medium", "3-5-large": "sd35-large", "3-5-medium": "sd35-medium"}
# sd-scripts' network module per family (networks/lora_flux.py, networks/lora_sd3.py); SD1/SD2/SDXL: networks.lora
_LORA_MODULES = {"flux": "networks.lora_flux", "sd3": "networks.lora_sd3"}


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
        arch = ARCHITECTURES.get(meta.base.architecture or "")
        return _LORA_MODULES.get(arch.family if arch else "", "networks.lora"), conv
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
        # 'sdxl_' prefix -> A1111 shows it as SDXL; SD3: what sd-scripts writes (FLUX.1 schnell keeps
        # 'flux1_schnell': sd-scripts writes 'flux1' for dev and schnell alike, which would read back as dev)
        out["ss_base_model_version"] = _SD3_VERSIONS_WRITTEN.get(arch.id, arch.kohya)
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
