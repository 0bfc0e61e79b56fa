"""Tiny SD1 runs (CPU, 32 px, a few steps) with the trainer's feedback on: validation loss on held-out images
(fixed draws, shared across processes, no effect on training), labelled sample grids, accelerate's TensorBoard
tracker, loss.png, and --push-to through the hub code against the test Hub server (a failed push leaves the
adapter and prints a command that pushes it)."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
from pathlib import Path

import pytest

from loraregistry.safetensors_io import load_tensors
from loraregistry.train.feedback import read_rows
from loraregistry.train.samples import read_cells

from .test_hub import hf_env, hub  # noqa: F401 - fixtures: the real huggingface_hub client, a Hub server on 127.0.0.1
from .test_train_support import (  # noqa: F401 - fixture
    copy_dataset, one_thread, tiny_config, tiny_settings, torch_one_thread)

pytestmark = pytest.mark.slow

SAMPLES = {"sample_prompts": ["lrgshape, a", {"prompt": "lrgshape, b", "negative_prompt": "ugly", "seeds": [5]}],
           "sample_seeds": [1, 2], "sample_steps": 2}


def _has_tensorboard() -> bool:
    from accelerate.tracking import get_available_trackers

    return "tensorboard" in {str(t) for t in get_available_trackers()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run: 4 images, 1 held out, validation every 2 of 4 steps, a labelled grid at the end, TensorBoard
    when installed."""
    from loraregistry.train import train

    tmp = tmp_path_factory.mktemp("feedback")
    with torch_one_thread():
        config = tiny_config(tmp, data={"validation_split": 1},
                             train={"steps": 4, "validate_every": 2, **SAMPLES},
                             output={"formats": ["kohya"], "add_to_registry": False,
                                     "trackers": ["tensorboard"] if _has_tensorboard() else []})
        yield train(config, quiet=True)


def test_validation_rows_in_csv_result_and_run_json(run):
    rows = read_rows(run.run_dir / "validation.csv")
    assert [(r["step"], r["images"], r["draws"]) for r in rows] == [(2, 1, 4), (4, 1, 4)]
    assert rows == run.fit.validation
    assert all(0 < r["loss"] < 10 for r in rows) and rows[0]["loss"] != rows[1]["loss"]
    summary = json.loads((run.run_dir / "run.json").read_text())
    assert summary["validation"] == rows
    assert (summary["dataset"]["images"], summary["dataset"]["validation_images"]) == (3, 1)  # trained on 3


def test_the_sample_grid_is_labelled_with_prompt_negative_prompt_seed_and_step(run):
    (grid,) = run.fit.samples
    assert grid.name == "step-00000004.png"
    stored = read_cells(grid)
    assert stored["step"] == 4
    assert [(c["prompt"], c["negative_prompt"], c["seed"]) for c in stored["cells"]] == [
        ("lrgshape, a", "", 1), ("lrgshape, a", "", 2), ("lrgshape, b", "ugly", 5)]
    assert grid.with_suffix(".txt").read_text() == "lrgshape, a | lrgshape, b\n"
    with_loss = run.run_dir / "loss.png"
    assert with_loss.is_file() and with_loss.stat().st_size > 10_000  # matplotlib's figure, not a blank


def test_tensorboard_gets_scalars_validation_and_the_sample_grid(run):
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed (pip install 'loraregistry[tensorboard]')")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.run_dir / "trackers" / "t"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    losses = read_rows(run.run_dir / "loss.csv")
    scalars = events.Scalars("train/loss")  # stored as float32
    assert [e.step for e in scalars] == [1, 2, 3, 4]
    assert [e.value for e in scalars] == pytest.approx([r["loss"] for r in losses], rel=1e-6)
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    validation = events.Scalars("validation/loss")
    assert [e.step for e in validation] == [2, 4]
    assert [e.value for e in validation] == pytest.approx([r["loss"] for r in run.fit.validation], rel=1e-6)
    (image,) = events.Images("samples")
    with Image.open(run.fit.samples[0]) as grid:
        assert (image.step, image.width, image.height) == (4, grid.width, grid.height)


class _Rank:
    """What ``Validator.loss`` uses of an Accelerator, as process ``index`` of ``count``; ``reduce`` adds the totals
    that the other ranks left in ``shared``."""

    device = __import__("torch").device("cpu")

    def __init__(self, index: int, count: int, shared: list) -> None:
        self.process_index, self.num_processes, self.shared = index, count, shared

    def autocast(self):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction: str):
        assert reduction == "sum"
        self.shared.append(tensor.clone())
        return sum(self.shared[1:], self.shared[0]) if len(self.shared) == self.num_processes else tensor


def test_validation_is_fixed_shared_across_processes_and_leaves_training_unchanged(tmp_path, one_thread):  # noqa: F811
    from accelerate import Accelerator

    from loraregistry.train import Trainer, TrainingSet, build_components, scan_dataset
    from loraregistry.train.cache import TensorCache
    from loraregistry.train.validation import Validator, split

    copy_dataset(tmp_path / "data", 5)
    config = tiny_config(tmp_path, data={"validation_split": 2}, train={"steps": 3, "validate_every": 1})
    training, held_out = split(scan_dataset(config.data), config)
    cache = TensorCache(config.data.cache_dir)
    fits, validators = [], []
    for name, validate in (("with", True), ("without", False)):
        parts = build_components(config)
        data = TrainingSet(training, parts, config, cache)
        data.prepare()
        validator = Validator(held_out, parts, config, cache)
        validator.prepare()
        if validate:
            before = validator.loss(Accelerator())
        trainer = Trainer(config, parts, data, run_dir=tmp_path / name, accelerator=Accelerator(), quiet=True,
                          validator=validator if validate else None)
        fits.append(trainer.fit())
        validators.append(validator)
    with_validation, without = fits
    assert [r["step"] for r in with_validation.validation] == [1, 2, 3] and without.validation == []
    # taking the validation loss changes nothing in training: same losses, same adapter state
    assert with_validation.losses == without.losses
    state = [_lora_state(v.parts) for v in validators]
    assert state[0].keys() == state[1].keys() and all(state[0][k].equal(state[1][k]) for k in state[0])
    # the same draws every time: recomputed on the final weights, the last value comes back exactly
    after = validators[0].loss(Accelerator())
    assert after.loss == with_validation.validation[-1]["loss"] == validators[1].loss(Accelerator()).loss
    assert after.loss != before.loss  # ... and it moves with the weights
    # two processes, each taking every other image, reduce to the one-process value
    shared: list = []
    totals = [validators[0].loss(_Rank(rank, 2, shared)).loss for rank in (1, 0)]
    assert totals[1] == pytest.approx(after.loss, rel=1e-12)
    assert (after.images, after.draws) == (2, 4)


def _lora_state(parts) -> dict:
    return {f"{c}.{k}": v.detach().clone() for c, m in parts.trained.items()
            for k, v in m.state_dict().items() if "lora_" in k}


def test_push_to_failure_keeps_the_adapter_and_prints_a_retry_command_that_pushes(tmp_path, hub, capsys):  # noqa: F811
    from loraregistry.cli import main

    settings = tiny_settings(tmp_path, data={"validation_split": 1},
                             train={"steps": 2, "sample_prompts": ["lrgshape, a"], "sample_steps": 2},
                             output={"formats": ["kohya"], "add_to_registry": False, "trackers": []})
    config = tmp_path / "run.toml"
    _write_toml(config, settings)
    hub.state.forbid_writes = True  # the Hub refuses the push (403)
    code = main(["train", "--config", str(config), "--quiet", "--threads", "1", "--push-to", "alice/tiny-lora",
                 "--push-endpoint", hub.endpoint])
    out, err = capsys.readouterr()
    adapter = tmp_path / "out" / "t.safetensors"
    assert code == 2, err
    assert f"kohya: {adapter} verified ok" in out  # the run's outputs are reported ...
    error = err.strip().splitlines()[-1]
    assert error.startswith("lorareg: error: push to alice/tiny-lora failed: ")  # ... then the push failure, one line
    retry = error.split("push it again with: ", 1)[1].rstrip(")")
    assert retry == (f"lorareg train push {tmp_path / 'out'} --repo alice/tiny-lora --endpoint {hub.endpoint}")
    assert f"the trained adapter is in place at {adapter}" in error
    trained = adapter.read_bytes()
    record = json.loads((tmp_path / "out" / "run.json").read_text())["push"]
    assert record["ok"] is False and record["retry"] == retry and hub.state.commits == []

    hub.state.forbid_writes = False  # the Hub is back: the printed command pushes the run
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "out", moved)  # and the run folder may have moved in between
    assert main(shlex.split(retry.replace(str(tmp_path / "out"), str(moved)))[1:]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"pushed {moved} to alice/tiny-lora at ")
    (commit,) = hub.state.commits
    assert hub.state.read("alice/tiny-lora", "t.safetensors") == trained
    grid = hub.state.read("alice/tiny-lora", "samples/step-00000002.png")
    assert grid == (moved / "samples" / "step-00000002.png").read_bytes()
    assert hub.state.read("alice/tiny-lora", "figures/loss.png") == (moved / "loss.png").read_bytes()
    card = hub.state.read("alice/tiny-lora", "README.md").decode()
    assert "- text: lrgshape, a" in card and "url: samples/step-00000002.png" in card  # the sample widget
    assert "## Training" in card and "](./figures/loss.png)" in card
    assert "learning rate per optimizer step; 2 steps; validation loss on 1 held-out images:" in card
    record = json.loads(hub.state.read("alice/tiny-lora", "lorareg.json"))
    assert record["training"]["steps"] == 2 and record["name"] == "t"
    assert load_tensors(moved / "t.safetensors").keys()  # still there, unchanged
    assert (moved / "t.safetensors").read_bytes() == trained

    # with the Hub up, the run pushes when it ends and says where
    code = main(["train", "--config", str(config), "--quiet", "--threads", "1", "--output", str(tmp_path / "again"),
                 "--push-to", "alice/tiny-lora-2", "--push-endpoint", hub.endpoint])
    out, err = capsys.readouterr()
    assert code == 0, err
    pushed = json.loads((tmp_path / "again" / "run.json").read_text())["push"]
    assert pushed["ok"] is True and pushed["commit"] == hub.state.commits[-1] != commit
    assert f"pushed to alice/tiny-lora-2 at {pushed['commit'][:12]} (t.safetensors, lorareg.json, " in out
    assert hub.state.read("alice/tiny-lora-2", "t.safetensors") == (tmp_path / "again" / "t.safetensors").read_bytes()


def _write_toml(path: Path, settings: dict) -> Path:
    from loraregistry.train.presets import toml_value

    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path
