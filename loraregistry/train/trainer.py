"""``Trainer.fit()``: the loop, under accelerate.

One process by default; ``accelerate launch -m loraregistry.train ...`` runs one per GPU (DDP), each taking every
n-th batch of the same epoch plan. Gradient accumulation is explicit (``no_sync`` on all but the last micro-batch),
and the lr schedule steps once per optimizer step, so a schedule means the same thing on 1 or 8 GPUs.
Every random draw of the loop comes from state a checkpoint saves, which is what makes a resumed run end with the
same adapter as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import checkpoint
from .batches import TrainingSet
from .checkpoint import Position
from .config import TrainConfig
from .feedback import VALIDATION_FIELDS, CsvLog, LossLog, ProgressBar, Trackers, plot_losses
from .optim import build_optimizer, build_scheduler, parameter_groups
from .step import train_step

# Test hook: after this optimizer step the process stops making progress (so a test can SIGKILL it at a known
# point). Never set in normal use.
HANG_AFTER_STEP_ENV = "LORAREG_TEST_HANG_AFTER_STEP"


@dataclass
class FitResult:
    steps: int
    epochs: int
    losses: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime
    resumed_from: Path | None = None
    samples: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step, logging included
    validation: list[dict[str, Any]] = field(default_factory=list)  # validation.csv's rows: step, loss, images, draws


class Trainer:
    def __init__(self, config: TrainConfig, parts, training_set: TrainingSet, *, run_dir: Path, accelerator,
                 quiet: bool = False, validator=None) -> None:
        """``validator``: a ``validation.Validator`` over held-out images (prepared), or None."""
        self.config = config
        self.validator = validator
        self.parts = parts
        self.data = training_set
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.quiet = quiet
        self._plans: dict[int, list[list[int]]] = {}

    # --- sizes ------------------------------------------------------------------------------------------------

    def total_steps(self) -> int:
        loop = self.config.train
        if loop.steps is not None:
            return loop.steps
        per_epoch = math.ceil(self.data.batches_per_epoch() / self.accelerator.num_processes)
        return math.ceil(loop.epochs * per_epoch / self.config.optim.grad_accumulation)

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self._plans = {epoch: self.data.epoch_batches(epoch)}  # keep one: epochs are consumed in order
        return self._plans[epoch]

    # --- the loop ---------------------------------------------------------------------------------------------

    def fit(self, *, resume: str | None = None) -> FitResult:
        import torch
        from accelerate.utils import set_seed

        acc, config, parts = self.accelerator, self.config, self.parts
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        total = self.total_steps()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._set_up_models()
        optimizer = build_optimizer(config, parameter_groups(config, parts.trained))
        scheduler = build_scheduler(config, optimizer, total)
        names = list(parts.trained)
        prepared = acc.prepare(*parts.trained.values(), optimizer)
        parts.trained = dict(zip(names, prepared[:-1]))
        optimizer = prepared[-1]
        params = [p for group in optimizer.param_groups for p in group["params"]]

        set_seed(config.train.seed)
        generator = torch.Generator().manual_seed(config.train.seed + acc.process_index)
        position, resumed_from = Position(step=0, epoch=0, batch_index=0), None
        config_json = config.model_dump(mode="json")
        if resume:
            resumed_from = checkpoint.resolve(self.run_dir, resume)
            position = checkpoint.load(resumed_from, models=parts.trained, optimizer=optimizer, scheduler=scheduler,
                                       generator=generator, config_json=config_json)
        main = acc.is_main_process
        resume_step = position.step if resume else None
        log = LossLog(self.run_dir / "loss.csv", resume_step=resume_step) if main else None
        validation_log = (CsvLog(self.run_dir / "validation.csv", VALIDATION_FIELDS, resume_step=resume_step)
                          if main and self.validator is not None else None)
        trackers = Trackers(acc, config, resume_step=resume_step)
        bar = ProgressBar(total, start=position.step, quiet=self.quiet or not main)
        samples: list[Path] = []
        step_seconds: list[float] = []
        hang_after = int(os.environ.get(HANG_AFTER_STEP_ENV, "0") or 0)
        for model in parts.trained.values():
            model.train()
        try:
            while position.step < total:
                tick = time.perf_counter()
                loss = self._optimizer_step(position, optimizer, scheduler, params, generator)
                position.step += 1
                lr = scheduler.get_last_lr()[0]
                if main:
                    log.add(position.step, position.epoch, loss, lr)
                    bar.update(position.step, loss)
                if position.step % config.train.log_every == 0 or position.step == total:
                    trackers.log({"train/loss": loss, "train/lr": lr}, position.step)
                step_seconds.append(time.perf_counter() - tick)
                if self._validate_now(position.step, total):
                    self._validate(position.step, validation_log, trackers, bar)
                self._maybe_checkpoint(position, total, optimizer, scheduler, generator, config_json)
                if config.train.sample_every and position.step % config.train.sample_every == 0:
                    samples += self._samples(position.step, trackers)
                if hang_after and position.step == hang_after:
                    while True:  # see HANG_AFTER_STEP_ENV
                        time.sleep(1)
            if config.train.sample_prompts and (not samples or config.train.sample_every == 0
                                                or total % config.train.sample_every):
                samples += self._samples(total, trackers)
        finally:
            bar.close()
            trackers.close()
            for csv_log in (log, validation_log):
                if csv_log is not None:
                    csv_log.close()
        losses = log.rows if log is not None else []
        validation = validation_log.rows if validation_log is not None else []
        if main:
            plot_losses(losses, self.run_dir / "loss.png", validation)
        per_epoch = max(1, len(self._plan(0)))
        consumed = position.epoch * per_epoch + position.batch_index
        return FitResult(steps=total, epochs=max(1, math.ceil(consumed / per_epoch)), losses=losses,
                         started_at=started, finished_at=datetime.now(timezone.utc), resumed_from=resumed_from,
                         samples=samples, seconds=time.perf_counter() - clock, step_seconds=step_seconds,
                         validation=validation)

    def _optimizer_step(self, position: Position, optimizer, scheduler, params, generator) -> float:
        acc, config = self.accelerator, self.config
        accum = config.optim.grad_accumulation
        losses = []
        for micro in range(accum):
            batch = self._next_batch(position)
            with contextlib.ExitStack() as stack:
                if micro < accum - 1 and acc.num_processes > 1:
                    for model in self.parts.trained.values():
                        stack.enter_context(acc.no_sync(model))
                with acc.autocast():
                    loss = train_step(batch, self.parts, config, generator)
                acc.backward(loss / accum)
            losses.append(loss.detach())
        if config.optim.max_grad_norm:
            acc.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        import torch

        mean = torch.stack(losses).mean()
        return float(acc.gather(mean[None]).mean()) if acc.num_processes > 1 else float(mean)

    def _next_batch(self, position: Position):
        acc = self.accelerator
        plan = self._plan(position.epoch)
        if position.batch_index >= len(plan):
            position.epoch, position.batch_index = position.epoch + 1, 0
            plan = self._plan(position.epoch)
        index = position.batch_index
        indices = plan[(index + acc.process_index) % len(plan)]
        position.batch_index += acc.num_processes
        return self.data.batch(position.epoch, index + acc.process_index, indices)

    # --- side outputs ------------------------------------------------------------------------------------------

    def _maybe_checkpoint(self, position: Position, total: int, optimizer, scheduler, generator, config_json) -> None:
        every = self.config.train.checkpoint_every
        if not every or position.step % every or position.step >= total:
            return
        if self.accelerator.is_main_process:
            checkpoint.save(self.run_dir, position, models=self.parts.trained, optimizer=optimizer,
                            scheduler=scheduler, generator=generator, config_json=config_json,
                            keep=self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _samples(self, step: int, trackers: Trackers) -> list[Path]:
        if not self.config.train.sample_prompts or not self.accelerator.is_main_process:
            return []
        from .samples import render_grid

        grid = render_grid(self.parts, self.config, self.run_dir / "samples" / f"step-{step:08d}.png", step=step)
        trackers.log_image("samples", grid.image, step)
        return [grid.path]

    def _validate_now(self, step: int, total: int) -> bool:
        every = self.config.train.validate_every
        return self.validator is not None and (step == total or bool(every and step % every == 0))

    def _validate(self, step: int, log: CsvLog | None, trackers: Trackers, bar: ProgressBar) -> None:
        """Every process takes part (the loss is reduced across them); the main one records it."""
        result = self.validator.loss(self.accelerator)
        if log is not None:
            log.append({"step": step, "loss": result.loss, "images": result.images, "draws": result.draws})
            bar.validation(result.loss)
        trackers.log({"validation/loss": result.loss}, step)

    def _set_up_models(self) -> None:
        import torch
        from diffusers.training_utils import cast_training_params

        if self.config.train.mixed_precision != "no":
            cast_training_params(list(self.parts.trained.values()), dtype=torch.float32)
        if self.config.train.gradient_checkpointing:
            for name, model in self.parts.trained.items():
                if name in ("unet", "transformer"):  # diffusers models
                    model.enable_gradient_checkpointing()
                else:  # transformers renamed it in v5; keep working with v4
                    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
