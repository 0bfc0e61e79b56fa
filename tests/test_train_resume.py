"""A run killed with SIGKILL and resumed from its latest checkpoint ends with the same adapter, bit for bit, as a
run that was never interrupted (CPU, tiny SD1, one thread). Everything random is in play: LoRA dropout (global
torch RNG), caption shuffle and dropout (per-position seeds), noise and timesteps (the trainer's generator)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraregistry.safetensors_io import load_tensors
from loraregistry.train.checkpoint import resolve
from loraregistry.train.feedback import read_losses
from loraregistry.train.presets import toml_value
from loraregistry.train.trainer import HANG_AFTER_STEP_ENV

from .test_train_support import copy_dataset, tiny_settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _write_toml(path: Path, settings: dict) -> Path:
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def _command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "loraregistry.train", "--config", str(config), "--quiet", *extra]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _settings(tmp_path: Path, out: str) -> dict:
    return tiny_settings(
        tmp_path,
        data={"shuffle_captions": True, "caption_dropout": 0.25},
        network={"dropout": 0.1},
        optim={"scheduler": "cosine", "warmup_steps": 2},
        train={"steps": 8, "checkpoint_every": 2, "keep_checkpoints": 2},
        output={"dir": str(tmp_path / out), "formats": ["kohya"], "add_to_registry": False},
    )


def _wait_for_step(csv: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before step {step}: {proc.stderr.read()}")
        if csv.is_file() and any(r["step"] == step for r in read_losses(csv)):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def test_sigkill_then_resume_ends_with_the_same_adapter(tmp_path):
    copy_dataset(tmp_path / "data", 4)
    straight = _write_toml(tmp_path / "straight.toml", _settings(tmp_path, "straight"))
    killed = _write_toml(tmp_path / "killed.toml", _settings(tmp_path, "killed"))

    # The run to be killed stops making progress after step 5 (one past the step-4 checkpoint, so resuming has
    # to throw that step away and redo it); it is then killed without any chance to clean up.
    proc = subprocess.Popen(_command(killed), cwd=ROOT, env=_env(**{HANG_AFTER_STEP_ENV: "5"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(tmp_path / "killed" / "loss.csv", 5, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert resolve(tmp_path / "killed", "latest").name == "step-00000004"
    assert not (tmp_path / "killed" / "t.safetensors").exists()

    resumed = subprocess.run(_command(killed, "--resume", "latest", "--json"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    full = subprocess.run(_command(straight), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert full.returncode == 0, full.stderr

    a = load_tensors(tmp_path / "straight" / "t.safetensors")
    b = load_tensors(tmp_path / "killed" / "t.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), [k for k in a if not (a[k] == b[k]).all()][:3]
    losses_a = read_losses(tmp_path / "straight" / "loss.csv")
    losses_b = read_losses(tmp_path / "killed" / "loss.csv")
    assert [r["step"] for r in losses_b] == list(range(1, 9))  # the killed run's step-5 row was dropped, then redone
    assert losses_a == losses_b
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004", "step-00000006"]  # keep_checkpoints = 2, no temp folders left


def test_resume_refuses_a_changed_network_and_a_missing_checkpoint(tmp_path):
    from loraregistry.cli import cli, main

    cli.lazy_commands.setdefault("train", "loraregistry.cli.train_cmd:train")
    copy_dataset(tmp_path / "data", 2)
    settings = _settings(tmp_path, "run")
    settings["train"].update(steps=2, checkpoint_every=1)
    config = _write_toml(tmp_path / "run.toml", settings)
    assert main(["train", "--config", str(config), "--resume", "latest", "-q"]) == 2  # nothing to resume yet
    assert main(["train", "--config", str(config), "-q"]) == 0
    assert main(["train", "--config", str(config), "--set", "network.rank=8", "--resume", "latest", "-q"]) == 2


# --- what a checkpoint may hold ----------------------------------------------------------------------


def make_marker(marker: str) -> None:
    Path(marker).touch()


class _RunsCode:
    """Unpickling this calls make_marker: a file that exists proves loading ran code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (make_marker, (str(self.marker),))


def _tiny_training_state():
    import functools

    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # diffusers' schedulers are LambdaLR over functools.partial: the same state_dict shape
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lambda step, k: 1 / (1 + k * step), k=2))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {"unet": model}, optimizer, scheduler, torch.Generator().manual_seed(7)


def _draws(generator) -> tuple:
    import random

    import numpy as np
    import torch

    return (random.random(), float(np.random.random()), float(torch.rand(1)), float(torch.rand(1, generator=generator)))


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_and_every_rng(tmp_path):
    import torch

    from loraregistry.train.checkpoint import Position, load, save

    models, optimizer, scheduler, generator = _tiny_training_state()
    folder = save(tmp_path, Position(step=3, epoch=1, batch_index=2), models=models, optimizer=optimizer,
                  scheduler=scheduler, generator=generator, config_json={"model": "m"}, keep=2)
    expected = _draws(generator)
    weights = {k: v.clone() for k, v in models["unet"].state_dict().items()}
    step_state = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    fresh_models, fresh_optimizer, fresh_scheduler, fresh_generator = _tiny_training_state()
    with torch.no_grad():
        fresh_models["unet"].weight.add_(1.0)
    _draws(fresh_generator)  # move every RNG on
    position = load(folder, models=fresh_models, optimizer=fresh_optimizer, scheduler=fresh_scheduler,
                    generator=fresh_generator, config_json={"model": "m"})
    assert position == Position(step=3, epoch=1, batch_index=2)
    assert _draws(fresh_generator) == expected
    assert all(torch.equal(fresh_models["unet"].state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], step_state)
    assert fresh_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]


@pytest.mark.parametrize("file", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path, file):
    import torch

    from loraregistry.train.checkpoint import Position, load, save
    from loraregistry.train.errors import CheckpointError

    models, optimizer, scheduler, generator = _tiny_training_state()
    folder = save(tmp_path, Position(step=1, epoch=0, batch_index=0), models=models, optimizer=optimizer,
                  scheduler=scheduler, generator=generator, config_json={}, keep=2)
    marker = tmp_path / "code-ran"
    torch.save({"state": {}, "payload": _RunsCode(marker)}, folder / file)
    before = models["unet"].weight.detach().clone()
    with torch.no_grad():
        models["unet"].weight.add_(1.0)
    changed = models["unet"].weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        load(folder, models=models, optimizer=optimizer, scheduler=scheduler, generator=generator, config_json={})
    message = info.value.one_line()
    assert "\n" not in message and str(folder / file) in message
    assert "pickled object outside the allowed types (tests.test_train_resume.make_marker)" in message
    assert not marker.exists()
    assert torch.equal(models["unet"].weight, changed) and not torch.equal(changed, before)  # nothing restored


def test_train_resume_from_a_tampered_checkpoint_is_a_one_line_exit_2(tmp_path, capsys):
    import torch

    from loraregistry.cli import cli, main

    cli.lazy_commands.setdefault("train", "loraregistry.cli.train_cmd:train")
    copy_dataset(tmp_path / "data", 2)
    settings = _settings(tmp_path, "run")
    settings["train"].update(steps=2, checkpoint_every=1)
    config = _write_toml(tmp_path / "run.toml", settings)
    assert main(["train", "--config", str(config), "-q"]) == 0
    latest = resolve(tmp_path / "run", "latest")
    marker = tmp_path / "code-ran"
    torch.save({"payload": _RunsCode(marker)}, latest / "optimizer.pt")
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--resume", "latest", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimizer.pt" in err and "outside the allowed types" in err
    assert not marker.exists()
