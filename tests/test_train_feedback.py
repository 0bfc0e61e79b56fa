"""The trainer's feedback without training: labelled sample grids, the sample / validation / tracker / push config
fields, the held-out split, loss.png, and the one-line errors for trackers that are not installed and push targets
that are no repo ids. (Tiny runs that use all of it: test_train_feedback_run.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from loraregistry.train.config import SamplePrompt, from_dict
from loraregistry.train.data import Dataset, Item
from loraregistry.train.errors import ConfigError, DatasetError, MissingDependency
from loraregistry.train.feedback import loss_figure, plot_losses, tracker_names
from loraregistry.train.samples import _font, _wrap, compose_grid, read_cells, save_grid
from loraregistry.train.validation import split

from .test_train_config import _cli
from .test_train_support import tiny_settings

# --- labelled sample grids ---------------------------------------------------------------------------------------


def _solid(colour: tuple[int, int, int], side: int = 64) -> Image.Image:
    return Image.new("RGB", (side, side), colour)


def _ink(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Dark pixels in ``box``: drawn text."""
    return sum(image.crop(box).convert("L").histogram()[:128])


ROWS = [SamplePrompt(prompt="lrgshape, a red circle", negative_prompt="blurry", seeds=[1, 2, 3]),
        SamplePrompt(prompt="b", negative_prompt="", seeds=[7])]
COLOURS = [[(200, 0, 0), (0, 200, 0), (0, 0, 200)], [(200, 200, 0)]]


def test_grid_cells_hold_the_samples_and_the_labels_say_prompt_negative_seed_and_step(tmp_path):
    images = [[_solid(c) for c in row] for row in COLOURS]
    grid, cells = compose_grid(images, ROWS, step=120, side=64)
    assert [(c["row"], c["column"], c["seed"]) for c in cells] == [(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 7)]
    assert grid.width == 3 * 64
    for cell, colour in zip(cells, [c for row in COLOURS for c in row]):
        x0, y0, x1, y1 = cell["box"]
        assert (x1 - x0, y1 - y0) == (64, 64)
        assert [c for _, c in grid.crop(cell["box"]).getcolors()] == [colour]  # the sample, no label on it
        assert _ink(grid, (x0, y1, x1, y1 + 12)) > 0  # its seed, right under it
    first, second = cells[0]["box"], cells[3]["box"]
    assert _ink(grid, (0, 0, grid.width, first[1])) > 0  # step and row 0's prompt + negative prompt above row 0
    assert _ink(grid, (0, first[3] + 14, grid.width, second[1])) > 0  # row 1's prompt
    assert _ink(grid, (64, second[1], grid.width, second[3])) == 0  # row 1 has one seed: the rest is blank
    # what the grid shows, as data: in the PNG and in a .txt the Hub push reads the prompts from
    path = save_grid(grid, cells, 120, tmp_path / "samples" / "step-00000120.png")
    stored = read_cells(path)
    assert stored["step"] == 120 and stored["cells"] == cells
    assert cells[0]["negative_prompt"] == "blurry" and cells[3]["negative_prompt"] == ""
    assert path.with_suffix(".txt").read_text() == "lrgshape, a red circle | b\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-00000120.png", "step-00000120.txt"]


def test_a_negative_prompt_takes_room_and_one_the_pipeline_ignores_is_said_so():
    images = [[_solid(c) for c in COLOURS[0]]]
    plain, _ = compose_grid(images, [ROWS[0].model_copy(update={"negative_prompt": ""})], step=1, side=64)
    labelled, _ = compose_grid(images, ROWS[:1], step=1, side=64)
    ignored, cells = compose_grid(images, ROWS[:1], step=1, side=64, negative_used=False)
    assert labelled.height > plain.height  # a line for "negative: blurry"
    assert ignored.height > labelled.height  # ... and the note that it was not used
    assert cells[0]["negative_prompt"] == ""  # the images were made without it


@pytest.mark.parametrize("text, width, max_lines", [
    ("a short prompt", 200, 4),
    ("lrgshape, a red circle on a blue background, studio light, high detail, sharp focus " * 4, 120, 3),
    ("x" * 300, 60, 4),  # one word wider than the line
    ("", 50, 2),
])
def test_wrap_fits_the_width_and_the_line_budget(text, width, max_lines):
    font = _font(256)
    lines = _wrap(text, font, width, max_lines)
    assert 1 <= len(lines) <= max_lines
    assert all(font.getlength(line) <= width for line in lines)
    shown = "".join(lines).replace(" ", "").rstrip("…")
    assert "".join(text.split()).startswith(shown)
    assert lines[-1].endswith("…") == (len(shown) < len("".join(text.split())))


# --- config ------------------------------------------------------------------------------------------------------


def test_sample_rows_fill_in_the_section_defaults(tmp_path):
    config = from_dict(tiny_settings(tmp_path, train={
        "sample_prompts": ["a", {"prompt": "b", "seeds": [5, 6]}, {"prompt": "c", "negative_prompt": ""}],
        "sample_negative_prompt": "blurry", "sample_seeds": [1, 2]}))
    rows = [(r.prompt, r.negative_prompt, r.seeds) for r in config.train.sample_rows()]
    assert rows == [("a", "blurry", [1, 2]), ("b", "blurry", [5, 6]), ("c", "", [1, 2])]


@pytest.mark.parametrize("section, values, message", [
    ("data", {"validation_split": 1.5}, "data.validation_split: takes a count of images"),
    ("data", {"validation_split": -2}, "data.validation_split: takes a count"),
    ("train", {"validate_every": 5}, "train.validate_every needs held-out images: set data.validation_split"),
    ("train", {"validation_draws": 0}, "train.validation_draws:"),
    ("train", {"sample_prompts": [{"prompt": "a", "seeds": []}]}, "train.sample_prompts.0.table.seeds:"),
    ("train", {"sample_prompts": [{"prompt": "a", "seed": 1}]},
     "train.sample_prompts.0.table.seed: unknown field; allowed: prompt, negative_prompt, seeds"),
    ("output", {"trackers": ["tensorboard", "tensorboard"]}, "output.trackers: lists a tracker twice"),
    ("output", {"trackers": ["neptune"]}, "output.trackers.0: Input should be 'tensorboard', 'wandb'"),
])
def test_feedback_fields_refuse_bad_values_in_one_line(tmp_path, section, values, message):
    with pytest.raises(ConfigError) as caught:
        from_dict(tiny_settings(tmp_path, **{section: values}))
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- the held-out split ------------------------------------------------------------------------------------------


def _dataset(count: int) -> Dataset:
    return Dataset(items=[Item(image=Path(f"/d/{n}.png"), caption=f"c{n}", repeats=1, sha256=f"{n:064x}",
                               size=(32, 32)) for n in range(count)], folder=Path("/d"))


@pytest.mark.parametrize("value, held", [(0, 0), (2, 2), (0.25, 3), (0.01, 1)])
def test_split_holds_out_a_count_or_a_fraction(tmp_path, value, held):
    config = from_dict(tiny_settings(tmp_path, data={"validation_split": value}))
    training, held_out = split(_dataset(12), config)
    assert len(training.items) == 12 - held
    assert (len(held_out.items) if held_out else 0) == held
    if held_out:
        assert not {i.sha256 for i in training.items} & {i.sha256 for i in held_out.items}


def test_split_follows_the_seed_and_the_images_not_their_order(tmp_path):
    def held(seed: int, reverse: bool = False) -> set[str]:
        config = from_dict(tiny_settings(tmp_path, data={"validation_split": 3}, train={"seed": seed}))
        dataset = _dataset(20)
        dataset.items.reverse() if reverse else None
        return {i.sha256 for i in split(dataset, config)[1].items}

    assert held(7) == held(7) == held(7, reverse=True)
    assert len({frozenset(held(seed)) for seed in range(6)}) > 1  # another seed, other images


def test_split_that_leaves_nothing_to_train_on_is_one_line(tmp_path):
    config = from_dict(tiny_settings(tmp_path, data={"validation_split": 4}))
    with pytest.raises(DatasetError, match="holds out 4 of 4 images, leaving none to train on"):
        split(_dataset(4), config)


# --- loss.png ----------------------------------------------------------------------------------------------------


ROWS_10 = [{"step": s, "epoch": 0, "loss": 1.0 / s, "lr": 1e-4 * s / 10} for s in range(1, 11)]
VALIDATION = [{"step": 5, "loss": 0.4, "images": 2, "draws": 4}, {"step": 10, "loss": 0.3, "images": 2, "draws": 4}]


def test_loss_figure_has_labelled_axes_smoothed_loss_validation_points_and_lr_on_a_second_axis():
    pytest.importorskip("matplotlib")
    figure = loss_figure(ROWS_10, VALIDATION)
    loss_axis, lr_axis = figure.axes
    assert (loss_axis.get_xlabel(), loss_axis.get_ylabel(), lr_axis.get_ylabel()) == (
        "optimizer step", "loss", "learning rate")
    lines = {line.get_label(): line for line in loss_axis.get_lines()}
    assert list(lines["training loss"].get_ydata()) == [r["loss"] for r in ROWS_10]
    smoothed = list(lines["training loss, smoothed (EMA 0.9)"].get_ydata())
    assert smoothed[0] == 1.0 and all(a > b for a, b in zip(smoothed, smoothed[1:]))
    validation = lines["validation loss (held-out images)"]
    assert (list(validation.get_xdata()), list(validation.get_ydata())) == ([5, 10], [0.4, 0.3])
    assert validation.get_marker() == "o"
    (lr,) = lr_axis.get_lines()
    assert list(lr.get_ydata()) == [r["lr"] for r in ROWS_10]
    legend = [t.get_text() for t in lr_axis.get_legend().get_texts()]
    assert legend == ["training loss", "training loss, smoothed (EMA 0.9)", "validation loss (held-out images)",
                      "learning rate"]
    assert "validation 0.3000" in loss_axis.get_title()


@pytest.mark.parametrize("matplotlib", [True, False])
def test_plot_losses_writes_a_png_with_or_without_matplotlib(tmp_path, monkeypatch, matplotlib):
    if not matplotlib:
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails: the Pillow fallback draws
    path = plot_losses(ROWS_10, tmp_path / "loss.png", VALIDATION)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 600
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    assert plot_losses([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


# --- the model card's figures ------------------------------------------------------------------------------------


def test_card_shows_figures_with_captions_as_literal_text():
    from loraregistry.architectures import resolve
    from loraregistry.hub.card import CardInput, Figure, build_card
    from loraregistry.schema import AdapterMetadata

    caption = "Loss [click](http://x.invalid) <img src=x> `code` *bold* | 2 steps (validation 0.5)"
    card = build_card(CardInput(repo_id="alice/a", filename="a.safetensors", sha256="0" * 64,
                                metadata=AdapterMetadata(name="a", base={"architecture": "sd1"}),
                                architecture=resolve("sd1"), figures=[Figure("figures/loss.png", caption)]))
    training = card.split("## Training", 1)[1]
    escaped = ("Loss \\[click\\]\\(http://x.invalid\\) \\<img src=x\\> \\`code\\` \\*bold\\* \\| 2 steps "
               "\\(validation 0.5\\)")
    assert training.strip().splitlines() == [f"![{escaped}](./figures/loss.png)", "", escaped, "<!-- lorareg:end -->"]
    assert "## Training" not in build_card(CardInput(repo_id="alice/a", filename="a.safetensors", sha256="0" * 64,
                                                     metadata=AdapterMetadata(name="a"), architecture=None))


# --- trackers and push target: fail before any model loads -------------------------------------------------------


def test_tracker_names_are_the_installed_ones_asked_for(tmp_path):
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    default = from_dict(tiny_settings(tmp_path))
    assert tracker_names(default) == (["tensorboard"] if "tensorboard" in available else [])
    assert tracker_names(from_dict(tiny_settings(tmp_path, output={"trackers": []}))) == []
    missing = next(n for n in ("comet_ml", "wandb", "aim", "clearml") if n not in available)
    with pytest.raises(MissingDependency) as caught:
        tracker_names(from_dict(tiny_settings(tmp_path, output={"trackers": [missing]})))
    package = "comet-ml" if missing == "comet_ml" else missing
    assert str(caught.value) == (f"output.trackers lists {missing}, which is not installed (pip install {package}, "
                                 f"or remove {missing} from output.trackers)")


def test_cli_missing_tracker_and_bad_push_repo_are_one_line_exit_2(tmp_path):
    from accelerate.tracking import get_available_trackers

    missing = next(n for n in ("comet_ml", "wandb", "aim", "clearml")
                   if n not in {str(t) for t in get_available_trackers()})
    settings = tiny_settings(tmp_path)
    base = ["train", "--base", "tiny:sd1", "--data", settings["data"]["folder"], "--output", str(tmp_path / "out"),
            "--steps", "2"]
    rc, out, err = _cli(*base, "--set", f'output.trackers=["{missing}"]')
    assert rc == 2 and err.count("\n") == 1, err
    assert f"lorareg: error: output.trackers lists {missing}, which is not installed" in err
    rc, out, err = _cli(*base, "--push-to", "not a repo")
    assert rc == 2 and err.count("\n") == 1, err
    assert "lorareg: error: output.push_to: 'not a repo' is not a Hub repo id" in err
    assert "HEAVY []" in out  # refused before torch was imported
    assert not (tmp_path / "out").exists()
