"""The trained LoRA -> canonical tensors -> a conforming file per output format, verified before it is named.

peft's state dict is read as the ``peft`` key format (component-prefixed, as diffusers' ``save_lora_weights``
writes it), so the canonical keys come from the same mapper every other file goes through. Alpha is added per
module from the network config. Each file is written to a temp name in the output folder, verified against the
base it was trained on, and only then renamed into place: a failed verification leaves nothing behind.

FLUX.1 / SD3 transformers train per diffusers module (``to_q``, ``to_k``, ``to_v``, ...); their kohya file names
modules the way sd-scripts' ``lora_flux`` / ``lora_sd3`` do (``double_blocks_0_img_attn_qkv``,
``joint_blocks_0_x_block_attn_qkv``), so the split targets are fused exactly (``ops.fused``: ``down`` stacked at
rank k*r, block-diagonal ``up``, alpha k*alpha, same delta) and [shift, scale] rows reordered where the original
model stores them the other way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..canonical import CanonicalKey
from ..schema import AdapterMetadata, BaseInfo, NetworkInfo, Provenance, TrainingInfo
from .config import TrainConfig
from .errors import ExportError

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what load_lora_weights(folder) looks for
_DTYPES = {"fp16": np.float16, "fp32": np.float32}


@dataclass
class ExportedFile:
    format: str
    path: Path
    report: Any = None  # the verify Report of the file as written
    registry_id: str | None = None
    registry_error: str | None = None


def canonical_tensors(parts, config: TrainConfig) -> tuple[dict[CanonicalKey, np.ndarray], dict[str, str]]:
    """Canonical tensors of the trained LoRA (alpha included) and the peft dialect of the models' own names."""
    from peft import get_peft_model_state_dict

    from ..formats import to_canonical

    arrays: dict[str, np.ndarray] = {}
    for component, model in parts.trained.items():
        state = get_peft_model_state_dict(getattr(model, "module", model))
        for key, tensor in state.items():
            arrays[f"{component}.{key}"] = tensor.detach().float().cpu().numpy()
    mapping = to_canonical(list(arrays), format="peft")
    if mapping.unknown:
        raise ExportError(f"peft produced keys lorareg cannot map: {mapping.unknown[:3]}")
    dtype = _DTYPES[config.output.dtype]
    tensors = {ck: arrays[key].astype(dtype) for key, ck in mapping.mapped.items()}
    alphas = _layer_alphas(parts)
    for key, ck in mapping.mapped.items():
        if ck.role == "down":
            name = key.split(".", 1)[1].split(".lora_A", 1)[0]
            tensors[CanonicalKey(ck.component, ck.path, "alpha")] = np.array(alphas[ck.component, name], dtype=dtype)
    return tensors, dict(mapping.dialect)


def _layer_alphas(parts) -> dict[tuple[str, str], float]:
    """(component, module name) -> the lora_alpha its peft layer scales with (conv_alpha on LoCon convolutions,
    the file's own alphas after init_from)."""
    alphas = {}
    for component, model in parts.trained.items():
        for name, module in getattr(model, "module", model).named_modules():
            if isinstance(getattr(module, "lora_alpha", None), dict) and "default" in module.lora_alpha:
                alphas[component, name] = float(module.lora_alpha["default"])
    return alphas


def build_metadata(parts, config: TrainConfig, *, dataset, fit) -> AdapterMetadata:
    from datetime import datetime, timezone

    net, out, loop, optim = config.network, config.output, config.train, config.optim
    source = parts.source
    network_type = "dora" if net.use_dora else ("locon" if net.conv_rank else "lora")
    rank, alpha = net.rank, net.alpha
    denoiser = net.transformer_modules() if parts.is_flow else net.unet_modules()
    targets = sorted({*denoiser, *(net.text_encoder_modules() if config.trains_text_encoder() else [])})
    init = parts.init_adapter
    if init is not None:  # the file decided the modules, ranks and alphas
        network_type = "dora" if init.use_dora else "locon" if init.has_conv_kernels else "lora"
        rank, alpha = init.rank_alpha()
        targets = sorted({name for names in parts.target_modules.values() for name in names})
    side = config.data.resolution
    return AdapterMetadata(
        name=out.name, description=out.description, author=out.author, license=out.license, tags=out.tags,
        content_rating=out.content_rating, trigger_words=out.trigger_words,
        base=BaseInfo(architecture=parts.architecture.id, model_id=source.model_id,
                      model_name=Path(source.spec).name if source.path and not source.model_id else source.spec,
                      revision=source.revision, sha256=source.sha256, prediction_type=parts.prediction_type,
                      resolution=(parts.architecture.resolution, parts.architecture.resolution)),
        network=NetworkInfo(type=network_type, rank=rank, alpha=alpha,
                            conv_rank=net.conv_rank or None,
                            conv_alpha=(net.conv_alpha or float(net.conv_rank)) if net.conv_rank else None,
                            components=list(parts.trained), target_modules=targets),
        training=TrainingInfo(
            steps=fit.steps, epochs=fit.epochs, learning_rate=optim.lr,
            unet_lr=config.lr_for(parts.denoiser_name) if parts.denoiser_name in parts.trained else None,
            text_encoder_lr=config.lr_for("text_encoder") if set(parts.trained) - {parts.denoiser_name} else None,
            optimizer=optim.optimizer, scheduler=optim.scheduler, batch_size=loop.batch_size, seed=loop.seed,
            resolution=(side, side), dataset_size=len(dataset.items), dataset_hash=dataset.hash, tool="lorareg",
            tool_version=__version__, started_at=fit.started_at, finished_at=fit.finished_at,
            mixed_precision=loop.mixed_precision, noise_offset=loop.noise_offset or None,
            min_snr_gamma=loop.min_snr_gamma),
        provenance=Provenance(created_at=datetime.now(timezone.utc), tool="lorareg", tool_version=__version__,
                              operation="train",
                              params={"base": source.spec, "loss_final": fit.losses[-1]["loss"] if fit.losses else None,
                                      "grad_accumulation": optim.grad_accumulation,
                                      "warmup_steps": optim.warmup_steps, **flow_facts(parts, config)}),
    )


def flow_facts(parts, config: TrainConfig) -> dict[str, Any]:
    """How a FLUX / SD3 run drew its noise levels and conditioned the transformer (nothing for UNet runs)."""
    if not parts.is_flow:
        return {}
    from .flow import DEFAULT_SAMPLING

    flow = config.flow
    facts: dict[str, Any] = {"timestep_sampling": flow.timestep_sampling or DEFAULT_SAMPLING[parts.architecture.family],
                             "max_sequence_length": parts.text_max_length, "flow_shift": flow.shift}
    if facts["timestep_sampling"] == "logit_normal":
        facts.update(logit_mean=flow.logit_mean, logit_std=flow.logit_std)
    if parts.denoiser.config.get("guidance_embeds"):
        facts["guidance_scale"] = flow.guidance_scale
    return facts


def output_path(config: TrainConfig, fmt: str) -> Path:
    out = config.output
    if fmt == "kohya":
        return out.dir / f"{out.name}.safetensors"
    return out.dir / f"{out.name}-diffusers" / DIFFUSERS_WEIGHT_NAME


def export(parts, config: TrainConfig, *, metadata: AdapterMetadata, verify_base: str | None) -> list[ExportedFile]:
    """Write every configured format; each is verified before it replaces anything. ExportError on failure."""
    from ..atomic_write import new_temp_path
    from ..writer import write_adapter

    tensors, peft_dialect = canonical_tensors(parts, config)
    written = []
    for fmt in config.output.formats:
        target = output_path(config, fmt)
        target.parent.mkdir(parents=True, exist_ok=True)
        writer_format, dialect = ("peft", peft_dialect) if fmt == "diffusers" else ("kohya", kohya_dialect(parts))
        body = kohya_native(tensors) if fmt == "kohya" and parts.is_flow else tensors
        # a fresh name (not mkstemp's 0600 file) so the result gets the mode any new file would get; not
        # *.safetensors, so a killed run's leftover is no adapter, and the next write sweeps it
        tmp = new_temp_path(target)
        try:
            write_adapter(tmp, body, format=writer_format, dialect=dialect, metadata=metadata)
            report = _verified(tmp, target, verify_base)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        report.path = str(target)
        written.append(ExportedFile(format=fmt, path=target, report=report))
    return written


def kohya_native(tensors: dict[CanonicalKey, np.ndarray]) -> dict[CanonicalKey, np.ndarray]:
    """FLUX/SD3 canonical tensors (diffusers module paths) -> the fused modules of the original model."""
    from ..ops.convert import convert_tensors
    from ..ops.fused import reorder_scale_shift

    transformer = {ck.module for ck in tensors if ck.component == "transformer"}
    fused, _ = convert_tensors(reorder_scale_shift(tensors, transformer), to="kohya", fuse=True, show_progress=False)
    return fused


def kohya_dialect(parts) -> dict[str, str]:
    """SDXL kohya files use SGM block names (what A1111 / ComfyUI / sd-scripts write); the tiny SDXL has a
    different block count, so it keeps diffusers names. FLUX / SD3 use the original model's names."""
    if parts.is_flow:
        return {"transformer_names": parts.architecture.family}
    if parts.is_sdxl and not parts.source.spec.startswith("tiny:"):
        return {"unet_names": "sgm", "unet_levels": "3", "te_prefix": "lora_te1"}
    return {"te_prefix": "lora_te1"} if parts.is_sdxl else {}


def _verified(tmp: Path, target: Path, base: str | None):
    from ..verify import verify

    report = verify(tmp, base=base)
    if not report.ok:
        errors = [f for f in report.findings if f.severity == "error"]
        raise ExportError(f"the trained adapter failed verification ({errors[0].code}: {errors[0].message}; "
                          f"{len(errors)} errors); nothing was written", path=target,
                          hint="run with --debug and report it: a trainer bug")
    return report


def register(files: list[ExportedFile]) -> None:
    """Add each file to the local registry when that module exists; a registry problem never fails a run."""
    try:
        from ..registry import Registry
    except ImportError:
        return
    from ..errors import LoraregError

    try:
        with Registry.open() as registry:
            for f in files:
                try:
                    f.registry_id = registry.add(f.path, report=f.report).id
                except LoraregError as exc:
                    f.registry_error = exc.one_line()
    except LoraregError as exc:
        for f in files:
            f.registry_error = exc.one_line()
