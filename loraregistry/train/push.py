"""``--push-to REPO``: a finished run to a Hub repo, through ``loraregistry.hub.push``.

What is pushed comes from the run folder alone: ``run.json``'s config (which formats were written, under what
name) and step count, the adapter file of the first format in ``output.formats``, the final step's sample grid (its
prompts in the same-name ``.txt``) and ``loss.png``; hub.push verifies the adapter again (against the base the run
verified with) and writes a model card that shows the samples and the plot. So the push at the end of training and
``lorareg train push RUN`` (the command a failed push prints) are one code path. A failed push never touches the
trained adapter: it stays where export put it, registered, and the failure names the command that retries.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FileAccessError, LoraregError
from .config import TrainConfig
from .errors import ConfigError, TrainError

RUN_FILE = "run.json"


class PushFailed(TrainError):
    """Training finished and its outputs are in place, but the push to the Hub did not happen."""


@dataclass
class PushOutcome:
    repo_id: str
    retry: str  # a shell command that pushes the run again
    result: Any = None  # hub.PushResult when it worked
    error: LoraregError | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"repo_id": self.repo_id, "ok": False, "error": self.error.one_line(), "retry": self.retry}
        r = self.result
        return {"repo_id": self.repo_id, "ok": True, "endpoint": r.endpoint, "commit": r.commit,
                "commit_url": r.commit_url, "files": r.files}

    def failure(self, adapter: Path | None) -> PushFailed:
        where = f"the trained adapter is in place at {adapter}" if adapter else "the run's outputs are in place"
        failed = PushFailed(f"push to {self.repo_id} failed: {self.error.one_line()}",
                            hint=f"{where}; push it again with: {self.retry}")
        failed.exit_code = self.error.exit_code
        return failed


def check_target(config: TrainConfig) -> None:
    """Before training starts: an ``output.push_to`` that is no repo id fails now, not hours later."""
    if config.output.push_to is None:
        return
    from ..hub.uri import check_repo_id

    try:
        check_repo_id(config.output.push_to)
    except LoraregError as exc:
        raise ConfigError(f"output.push_to: {exc.one_line()}") from None


def retry_command(run_dir: Path, repo_id: str, *, endpoint: str | None = None, private: bool = False) -> str:
    words = ["lorareg", "train", "push", str(run_dir), "--repo", repo_id]
    if endpoint:
        words += ["--endpoint", endpoint]
    if private:
        words.append("--private")
    return shlex.join(words)


def push_after_training(run_dir: Path, config: TrainConfig, *, token: str | None = None) -> PushOutcome:
    """Push the run in ``run_dir`` to ``output.push_to``; a hub failure is returned (with the retry command), not
    raised, and both outcomes are recorded in ``run.json``."""
    out = config.output
    outcome = PushOutcome(repo_id=out.push_to, retry=retry_command(run_dir, out.push_to, endpoint=out.push_endpoint,
                                                                    private=out.push_private))
    try:
        outcome.result = push_run(run_dir, out.push_to, endpoint=out.push_endpoint, token=token,
                                  private=out.push_private)
    except LoraregError as exc:
        outcome.error = exc
    _record(run_dir, outcome)
    return outcome


def push_run(run_dir: Path, repo_id: str, *, endpoint: str | None = None, token: str | None = None,
             private: bool = False, base: str | None = None):
    """Push a finished run folder: its adapter, last sample grid and loss plot, in one commit. hub.PushResult."""
    from ..hub import push

    run_dir = Path(run_dir)
    record = read_run(run_dir)
    config = run_config(run_dir, record)
    adapter = adapter_path(run_dir, config)
    if adapter is None:
        raise FileAccessError("holds none of the adapter files this run wrote "
                              f"({', '.join(config.output.formats)} as {config.output.name!r})", path=run_dir,
                              hint="push the adapter file itself with `lorareg push FILE --repo REPO`")
    steps = record.get("steps")
    # the grid of the final step (the trainer always renders one when prompts are set); named from the step count,
    # so a grid an earlier, longer run left in the folder is never taken for this run's
    final_grid = run_dir / "samples" / f"step-{steps:08d}.png" if isinstance(steps, int) else None
    grids = [final_grid] if final_grid is not None and final_grid.is_file() else []
    plot = run_dir / "loss.png"
    figures = [(plot, loss_caption(run_dir))] if plot.is_file() else []
    verify_base = record.get("verify_base")
    message = f"Upload {adapter.name} trained with lorareg" + (f" ({steps} steps)" if isinstance(steps, int) else "")
    return push(adapter, repo_id, private=private, endpoint=endpoint, token=token, samples=grids,
                figures=figures, base=base or (verify_base if isinstance(verify_base, str) else None),
                commit_message=message)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    hint = "give the output folder of a finished `lorareg train` run"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileAccessError("no such file: not a finished training run", path=path, hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileAccessError(f"unreadable ({type(exc).__name__}: {exc})", path=path, hint=hint) from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise FileAccessError("holds no training config", path=path, hint=hint)
    return record


def run_config(run_dir: Path, record: dict[str, Any]) -> TrainConfig:
    """The run's config, its output folder being ``run_dir`` (the folder may have moved since)."""
    from .config import from_dict

    data = dict(record["config"])
    data["output"] = {**(data.get("output") or {}), "dir": str(run_dir)}
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=run_dir / RUN_FILE, hint="a run.json from another lorareg version?") \
            from None


def adapter_path(run_dir: Path, config: TrainConfig) -> Path | None:
    """The file of the first output format that exists: what the run names its adapter, never a path read from a
    file."""
    from .export import output_path

    for fmt in config.output.formats:
        path = output_path(config, fmt)
        if path.is_file():
            return path
    return None


def loss_caption(run_dir: Path) -> str:
    from .feedback import read_rows

    text = "Training loss (raw and smoothed) and learning rate per optimizer step"
    try:
        losses = read_rows(run_dir / "loss.csv")
        validation = read_rows(run_dir / "validation.csv") if (run_dir / "validation.csv").is_file() else []
    except (OSError, ValueError, KeyError):
        return text + "."
    if losses:
        text += f"; {len(losses)} steps"
    if validation:
        first, last = validation[0], validation[-1]
        text += (f"; validation loss on {last['images']} held-out images: {first['loss']:.4f} (step {first['step']})"
                 f" -> {last['loss']:.4f} (step {last['step']})")
    return text + "."


def _record(run_dir: Path, outcome: PushOutcome) -> None:
    """Add the push to ``run.json`` (rewritten whole under a temporary name)."""
    import os

    path = run_dir / RUN_FILE
    record = read_run(run_dir)
    record["push"] = outcome.to_dict()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
