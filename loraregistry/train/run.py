"""``train(config)``: the whole run, start to finish, as one library call the CLI renders.

config -> dataset scan (fails fast, before any model loads) -> ``build_components`` -> cached latents and text ->
``Trainer.fit`` -> export (verified) -> local registry -> Hub (``output.push_to``). The run folder (``output.dir``)
holds the adapters, ``checkpoints/``, ``samples/``, ``loss.csv``, ``validation.csv`` (with held-out images),
``loss.png``, ``trackers/`` (TensorBoard events) and ``run.json`` (this result as data).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batches import TrainingSet
from .cache import CacheStats, TensorCache, default_cache_dir
from .components import Components, build_components
from .config import TrainConfig
from .data import scan_dataset
from .export import ExportedFile, build_metadata, export, register
from .feedback import accelerator_settings
from .push import PushOutcome, check_target, push_after_training
from .tiny import is_tiny, tiny_pipeline_from_spec
from .trainer import FitResult, Trainer
from .validation import Validator, split


@dataclass
class TrainResult:
    run_dir: Path
    fit: FitResult
    outputs: list[ExportedFile] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    cache: CacheStats = field(default_factory=CacheStats)
    architecture: str = ""
    verify_base: str | None = None  # what the outputs were verified against (`lorareg verify --base`)
    push: PushOutcome | None = None  # output.push_to: what the push did

    def to_dict(self) -> dict[str, Any]:
        losses = self.fit.losses
        return {
            "run_dir": str(self.run_dir), "architecture": self.architecture, "steps": self.fit.steps,
            "epochs": self.fit.epochs, "seconds": round(self.fit.seconds, 2),
            "loss_first": losses[0]["loss"] if losses else None, "loss_last": losses[-1]["loss"] if losses else None,
            "resumed_from": str(self.fit.resumed_from) if self.fit.resumed_from else None,
            "samples": [str(p) for p in self.fit.samples], "dataset": self.dataset,
            "validation": self.fit.validation, "push": self.push.to_dict() if self.push else None,
            "cache": {"encoded": self.cache.encoded, "reused": self.cache.reused}, "verify_base": self.verify_base,
            "outputs": [{"format": f.format, "path": str(f.path), "ok": f.report.ok if f.report else None,
                         "findings": [x.code for x in f.report.findings] if f.report else [],
                         "registry_id": f.registry_id, "registry_error": f.registry_error} for f in self.outputs],
        }


def train(config: TrainConfig, *, resume: str | None = None, quiet: bool = False) -> TrainResult:
    check_target(config)
    dataset, held_out = split(scan_dataset(config.data), config)
    accelerator = make_accelerator(config)
    run_dir = config.output.dir
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = build_components(config)
    parts.pipeline.to(accelerator.device)
    parts.pipeline.set_progress_bar_config(disable=True)
    cache_root = config.data.cache_dir or default_cache_dir()
    cache = TensorCache(cache_root)
    training_set = TrainingSet(dataset, parts, config, cache)
    validator = Validator(held_out, parts, config, cache) if held_out else None
    with accelerator.main_process_first():
        training_set.prepare()
        if validator is not None:
            validator.prepare()
    _cast_frozen_weights(parts, config)
    fit = Trainer(config, parts, training_set, run_dir=run_dir, accelerator=accelerator, quiet=quiet,
                  validator=validator).fit(resume=resume)
    result = TrainResult(run_dir=run_dir, fit=fit, cache=cache.stats, architecture=parts.architecture.id,
                         dataset={**dataset.report(), "validation_images": len(held_out.items) if held_out else 0})
    if accelerator.is_main_process:
        metadata = build_metadata(parts, config, dataset=dataset, fit=fit)
        result.verify_base = verify_base(parts, cache_root)
        result.outputs = export(parts, config, metadata=metadata, verify_base=result.verify_base)
        if config.output.add_to_registry:
            register(result.outputs)
        (run_dir / "run.json").write_text(json.dumps({"config": config.model_dump(mode="json"), **result.to_dict()},
                                                     indent=2, sort_keys=True, default=str))
        if config.output.push_to:
            result.push = push_after_training(run_dir, config)
    accelerator.wait_for_everyone()
    return result


def make_accelerator(config: TrainConfig):
    """An Accelerator for this run. accelerate keeps its settings in a process-wide singleton that refuses a
    second precision; a library caller may train twice in one process, so a single-process state is reset
    (a launched multi-process state is left alone: it belongs to ``accelerate launch``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(mixed_precision=config.train.mixed_precision, **accelerator_settings(config))
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=config.train.mixed_precision, **accelerator_settings(config))


def _cast_frozen_weights(parts: Components, config: TrainConfig) -> None:
    """Under mixed precision the frozen UNet / text encoders run in half precision (the VAE, used only for
    caching and samples, stays float32); the LoRA parameters are cast back to float32 by the trainer. A denoiser
    already stored in float8 (``model.fp8_base``, done when the base was built) is left as it is."""
    import torch

    if config.train.mixed_precision == "no":
        return
    dtype = torch.float16 if config.train.mixed_precision == "fp16" else torch.bfloat16
    for name in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(parts.pipeline, name, None)
        if module is not None and name not in parts.fp8_stored:
            module.to(dtype=dtype)


def verify_base(parts: Components, cache_root: Path) -> str:
    """What export verifies against: the base's own folder or file; for ``tiny:`` bases, a saved copy of the
    same seeded pipeline (tiny shapes fit no shipped fingerprint)."""
    if not is_tiny(parts.source.spec):
        return str(parts.source.path) if parts.source.path else parts.architecture.id
    folder = cache_root / "tiny-bases" / parts.source.spec.removeprefix("tiny:")
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
        tiny_pipeline_from_spec(parts.source.spec).save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return str(folder)
