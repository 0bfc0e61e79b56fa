"""What a run shows and leaves behind besides the adapter: a progress bar on stderr, ``loss.csv``, TensorBoard
scalars when ``tensorboard`` is installed, and ``loss.png`` at the end (matplotlib when installed, else a small
line plot drawn with Pillow)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

CSV_FIELDS = ("step", "epoch", "loss", "lr")


class LossLog:
    """``loss.csv``, one row per optimizer step, flushed as it goes; a resumed run first drops the rows past its
    checkpoint so the file always describes the weights that exist."""

    def __init__(self, path: Path, *, resume_step: int | None = None) -> None:
        self.path = path
        rows = read_losses(path) if resume_step is not None and path.is_file() else []
        self.rows = [r for r in rows if r["step"] <= (resume_step or 0)]
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        self._writer.writeheader()
        for row in self.rows:
            self._writer.writerow(row)
        self._file.flush()

    def add(self, step: int, epoch: int, loss: float, lr: float) -> None:
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_losses(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return [{"step": int(r["step"]), "epoch": int(r["epoch"]), "loss": float(r["loss"]), "lr": float(r["lr"])}
                for r in csv.DictReader(f)]


class TensorBoard:
    """Scalars to ``tensorboard/`` when the package is installed; silently nothing otherwise."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(str(folder))

    def add(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar:
    """rich progress on stderr: step, loss, it/s, ETA. Quiet runs show nothing."""

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
            TextColumn("{task.fields[speed]} it/s"), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", speed="-")
        self.progress.start()

    def update(self, step: int, loss: float) -> None:
        if self.progress is None:
            return
        task = self.progress.tasks[0]
        speed = f"{task.speed:.2f}" if task.speed else "-"
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", speed=speed)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def plot_losses(rows: list[dict[str, Any]], path: Path) -> Path | None:
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _pil_plot(steps, losses, path)
        return path
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, linewidth=0.8, alpha=0.5, label="loss")
    ax.plot(steps, smooth(losses), linewidth=1.6, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for n, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** n))
    return out


def _pil_plot(steps: list[int], losses: list[float], path: Path, size: tuple[int, int] = (600, 300)) -> None:
    from PIL import Image, ImageDraw

    width, height = size
    pad = 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    lo, hi = min(losses), max(losses)
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
    draw.text((pad, 8), f"loss  {hi:.4f} (top) .. {lo:.4f} (bottom)", fill="black")
    draw.text((pad, height - pad + 8), f"step {steps[0]} .. {steps[-1]}", fill="black")
    image.save(path)
