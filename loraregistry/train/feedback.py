"""What a run shows and leaves behind besides the adapter: a progress bar on stderr, ``loss.csv`` and
``validation.csv``, accelerate's trackers (TensorBoard, Weights & Biases, ...), and ``loss.png`` at the end
(matplotlib when installed, else a small line plot drawn with Pillow)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import MissingDependency

CSV_FIELDS = ("step", "epoch", "loss", "lr")
VALIDATION_FIELDS = ("step", "loss", "images", "draws")
TRACKERS_FOLDER = "trackers"  # accelerate's logging_dir: TensorBoard events in trackers/<output.name>/
_PACKAGES = {"comet_ml": "comet-ml"}  # tracker name -> what to pip install, where they differ


class CsvLog:
    """A CSV file of numbers, one row per event, flushed as it goes; a resumed run first drops the rows past its
    checkpoint so the file always describes the weights that exist."""

    def __init__(self, path: Path, fields: tuple[str, ...], *, resume_step: int | None = None) -> None:
        self.path = path
        rows = read_rows(path) if resume_step is not None and path.is_file() else []
        self.rows = [r for r in rows if r["step"] <= (resume_step or 0)]
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fields)
        self._writer.writeheader()
        for row in self.rows:
            self._writer.writerow(row)
        self._file.flush()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class LossLog(CsvLog):
    """``loss.csv``: step, epoch, loss, lr of every optimizer step."""

    def __init__(self, path: Path, *, resume_step: int | None = None) -> None:
        super().__init__(path, CSV_FIELDS, resume_step=resume_step)

    def add(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.append({"step": step, "epoch": epoch, "loss": loss, "lr": lr})


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one of our CSV files, numbers parsed (step, epoch, images and draws as int, the rest as float)."""
    whole = {"step", "epoch", "images", "draws"}
    with path.open(newline="") as f:
        return [{k: int(v) if k in whole else float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def read_losses(path: Path) -> list[dict[str, Any]]:
    return read_rows(path)


# --- trackers ---------------------------------------------------------------------------------------------------


def tracker_names(config: TrainConfig) -> list[str]:
    """The trackers this run logs to: ``output.trackers`` (each must be installed), or by default TensorBoard
    when it is installed. MissingDependency (one line, exit 2) before any model loads."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    requested = config.output.trackers
    if requested is None:
        return ["tensorboard"] if "tensorboard" in available else []
    missing = [name for name in requested if name not in available]
    if missing:
        name = missing[0]
        raise MissingDependency(f"output.trackers lists {name}, which is not installed",
                                hint=f"pip install {_PACKAGES.get(name, name)}, or remove {name} from "
                                     "output.trackers")
    return list(requested)


def accelerator_settings(config: TrainConfig) -> dict[str, Any]:
    """``Accelerator`` keyword arguments for the run's trackers."""
    from accelerate.utils import ProjectConfiguration

    run_dir = Path(config.output.dir)
    folders = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / TRACKERS_FOLDER))
    return {"log_with": tracker_names(config) or None, "project_config": folders}


def flat_config(config: TrainConfig) -> dict[str, str | int | float | bool]:
    """The config as ``section.field`` -> scalar: trackers store hyperparameters flat (lists as JSON text)."""
    out: dict[str, str | int | float | bool] = {}
    for section, values in config.model_dump(mode="json").items():
        for name, value in values.items():
            if value is not None:
                out[f"{section}.{name}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


class Trackers:
    """accelerate's trackers for one ``fit``: started with the config, given scalars and sample grids, finished at
    the end. Not ``Accelerator.end_training``: that also tears down the process group, which export still needs."""

    def __init__(self, accelerator, config: TrainConfig, *, resume_step: int | None = None) -> None:
        self.accelerator = accelerator
        self.owned = bool(accelerator.log_with) and not accelerator.trackers  # else: the caller's, already started
        if self.owned:
            self._start(config, resume_step)
        self.active = bool(accelerator.trackers)

    def _start(self, config: TrainConfig, resume_step: int | None) -> None:
        accelerator = self.accelerator
        init_kwargs: dict[str, dict[str, Any]] = {}
        if resume_step:  # TensorBoard drops the events a killed run wrote past its checkpoint
            init_kwargs["tensorboard"] = {"purge_step": resume_step + 1}
        init_kwargs["wandb"] = {"name": config.output.name}
        accelerator.init_trackers(config.output.name, config=flat_config(config),
                                  init_kwargs={k: v for k, v in init_kwargs.items()
                                               if k in {str(t) for t in accelerator.log_with}})

    def log(self, values: dict[str, float], step: int) -> None:
        if self.active:
            self.accelerator.log(values, step=step)

    def log_image(self, name: str, image, step: int) -> None:
        """One PIL image, to every tracker that takes images, in the form each one's ``log_images`` expects."""
        if not self.active or not self.accelerator.is_main_process:
            return
        import numpy as np

        pixels = np.asarray(image.convert("RGB"))
        for tracker in self.accelerator.trackers:
            if not hasattr(tracker, "log_images"):
                continue
            if tracker.name == "tensorboard":
                tracker.log_images({name: pixels[None]}, step=step, dataformats="NHWC")
            elif tracker.name == "aim":
                tracker.log_images({name: pixels}, step=step)
            else:  # wandb, clearml, swanlab, ...: a list of images per key
                tracker.log_images({name: [pixels]}, step=step)

    def close(self) -> None:
        if self.owned:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()  # a later fit on the same Accelerator starts them again
        self.active = self.owned = False


# --- progress ---------------------------------------------------------------------------------------------------


class ProgressBar:
    """rich progress on stderr: step, loss, validation loss, it/s, ETA. Quiet runs show nothing."""

    def __init__(self, total: int, *, start: int = 0, quiet: bool = False) -> None:
        self.progress = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[validation]}"), TextColumn("{task.fields[speed]} it/s"), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", speed="-",
                                           validation="")
        self.progress.start()

    def update(self, step: int, loss: float) -> None:
        if self.progress is None:
            return
        task = self.progress.tasks[0]
        speed = f"{task.speed:.2f}" if task.speed else "-"
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", speed=speed)

    def validation(self, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, validation=f"val {loss:.4f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# --- loss.png ---------------------------------------------------------------------------------------------------


def plot_losses(rows: list[dict[str, Any]], path: Path, validation: list[dict[str, Any]] = ()) -> Path | None:
    """``loss.png``: training loss (raw and smoothed), validation points and the learning rate; written under a
    temporary name and renamed, so it is never half a picture."""
    if not rows:
        return None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            figure = loss_figure(rows, validation)
        except ImportError:
            _pil_plot(rows, validation, tmp)
        else:
            figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def loss_figure(rows: list[dict[str, Any]], validation: list[dict[str, Any]] = ()):
    """The matplotlib Figure of ``loss.png`` (ImportError without matplotlib). Built without pyplot: no global
    figure state, no GUI backend."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    figure = Figure(figsize=(7.5, 4.2), dpi=100, layout="tight")
    ax = figure.add_subplot()
    ax.plot(steps, losses, color="tab:blue", linewidth=0.8, alpha=0.35, label="training loss")
    ax.plot(steps, smooth(losses), color="tab:blue", linewidth=1.8, label="training loss, smoothed (EMA 0.9)")
    if validation:
        ax.plot([v["step"] for v in validation], [v["loss"] for v in validation], color="tab:orange", marker="o",
                markersize=4, linewidth=1.2, label="validation loss (held-out images)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_xlim(min(steps[0], 0), max(steps[-1], 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [r["lr"] for r in rows], color="tab:gray", linestyle="--", linewidth=1.0,
                 label="learning rate")
    lr_axis.set_ylabel("learning rate")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_axis.set_ylim(0, max(max(r["lr"] for r in rows) * 1.15, 1e-12))
    handles, labels = ax.get_legend_handles_labels()
    lr_handles, lr_labels = lr_axis.get_legend_handles_labels()
    # on the twin axis, which is drawn last: no line crosses the legend
    lr_axis.legend(handles + lr_handles, labels + lr_labels, loc="upper right", fontsize="small", framealpha=0.9)
    title = f"{len(rows)} steps, final loss {smooth(losses)[-1]:.4f} (smoothed)"
    if validation:
        title += f", validation {validation[-1]['loss']:.4f}"
    ax.set_title(title, fontsize="medium")
    return figure


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for n, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def _pil_plot(rows: list[dict[str, Any]], validation: list[dict[str, Any]], path: Path,
              size: tuple[int, int] = (600, 300)) -> None:
    from PIL import Image, ImageDraw

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    width, height = size
    pad = 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    everything = losses + [v["loss"] for v in validation]
    lo, hi = min(everything), max(everything)
    span_y = (hi - lo) or 1.0
    span_x = (steps[-1] - steps[0]) or 1

    def xy(step: int, loss: float) -> tuple[float, float]:
        return (pad + (step - steps[0]) / span_x * (width - 2 * pad),
                height - pad - (loss - lo) / span_y * (height - 2 * pad))

    draw.rectangle((pad, pad, width - pad, height - pad), outline="black")
    for series, colour in ((losses, (160, 180, 230)), (smooth(losses), (20, 60, 200))):
        points = [xy(s, v) for s, v in zip(steps, series)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    for v in validation:
        x, y = xy(v["step"], v["loss"])
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(230, 120, 20))
    draw.text((pad, 8), f"loss  {hi:.4f} (top) .. {lo:.4f} (bottom); orange: validation", fill="black")
    draw.text((pad, height - pad + 8), f"step {steps[0]} .. {steps[-1]}", fill="black")
    image.save(path, format="png")
