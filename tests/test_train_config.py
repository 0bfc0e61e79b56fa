"""TrainConfig: TOML + overrides, one-line errors that name the field and the allowed values, templates, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loraregistry.train.config import TrainConfig, from_dict, parse_value, tomllib
from loraregistry.train.errors import ConfigError
from loraregistry.train.presets import PRESETS, template

MINIMAL = {"model": {"base": "tiny:sd1"}, "data": {"folder": "data"}, "train": {"steps": 3}}

# (case id, section -> fields merged into MINIMAL, phrases the one-line message must contain)
BAD_CONFIGS = [
    ("unknown-optimizer", {"optim": {"optimizer": "adam"}}, ["optim.optimizer", "'adamw', 'adamw8bit' or 'prodigy'"]),
    ("rank-zero", {"network": {"rank": 0}}, ["network.rank", "greater than or equal to 1"]),
    ("typo-field", {"network": {"rnk": 8}}, ["network.rnk", "unknown field", "rank, alpha"]),
    ("typo-section", {"netwrok": {"rank": 8}}, ["netwrok", "unknown field", "model, data, network"]),
    ("no-length", {"train": {"steps": None}}, ["train.steps or train.epochs"]),
    ("steps-and-epochs", {"train": {"steps": 3, "epochs": 2}}, ["train.steps or train.epochs"]),
    ("string-for-int", {"train": {"batch_size": "4"}}, ["train.batch_size", "valid integer", "'4'"]),
    ("precision", {"train": {"mixed_precision": "fp8"}}, ["train.mixed_precision", "'no', 'fp16' or 'bf16'"]),
    ("format", {"output": {"formats": ["ckpt"]}}, ["output.formats.0", "'kohya' or 'diffusers'"]),
    ("scheduler", {"optim": {"scheduler": "onecycle"}}, ["optim.scheduler", "'cosine'"]),
    ("component", {"network": {"components": ["vae"]}}, ["network.components.0", "'unet'"]),
    ("conv-alpha-alone", {"network": {"conv_alpha": 4.0}}, ["network.conv_alpha", "conv_rank"]),
    ("dropout-range", {"data": {"caption_dropout": 1.5}}, ["data.caption_dropout", "less than or equal to 1"]),
    ("resolution-multiple", {"data": {"resolution": 500}}, ["data.resolution", "multiple of 8"]),
    ("missing-base", {"model": {"base": None}}, ["model.base"]),
    ("architecture", {"model": {"architecture": "sd3"}}, ["model.architecture", "'sd1'"]),
    ("bad-name", {"output": {"name": "a/b"}}, ["output.name", "pattern"]),
]


def _merged(update: dict) -> dict:
    data = {k: dict(v) for k, v in MINIMAL.items()}
    for section, values in update.items():
        data.setdefault(section, {}).update(values)
        data[section] = {k: v for k, v in data[section].items() if v is not None}
    return data


@pytest.mark.parametrize("case, update, phrases", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_invalid_config_is_one_line_naming_field_and_allowed_values(case, update, phrases):
    with pytest.raises(ConfigError) as info:
        from_dict(_merged(update))
    message = info.value.one_line()
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message


def test_toml_paths_are_relative_to_the_file_and_overrides_to_cwd(tmp_path, monkeypatch):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "run.toml").write_text('[model]\nbase = "tiny:sd1"\n[data]\nfolder = "imgs"\n[train]\nsteps = 5\n')
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.load(config_dir / "run.toml", {"output.dir": "out", "train.steps": 9, "network.rank": 8})
    assert config.data.folder == config_dir / "imgs"
    assert config.output.dir == tmp_path / "out"
    assert (config.train.steps, config.network.rank) == (9, 8)


@pytest.mark.parametrize("text, value", [("8", 8), ("1e-4", 1e-4), ("true", True), ('["unet", "text_encoder"]',
                                         ["unet", "text_encoder"]), ("tiny:sd1", "tiny:sd1"), ('"x y"', "x y")])
def test_override_values_parse_as_toml(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("dotted, phrase", [("rank", "section.field"), ("network.rnk", "network has rank"),
                                            ("nope.rank", "section.field")])
def test_bad_override_names(dotted, phrase):
    with pytest.raises(ConfigError, match=phrase):
        TrainConfig.load(None, {dotted: 1})


def test_bad_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nbase = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.load(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        TrainConfig.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_template_loads_back(preset):
    config = from_dict(tomllib.loads(template(preset)))
    assert config.model.base == PRESETS[preset]["model"]["base"]
    if preset != "tiny":  # common practice: rank 16 / alpha 8, AdamW 1e-4, cosine with warmup
        assert (config.network.rank, config.network.alpha, config.optim.optimizer, config.optim.lr) == \
               (16, 8.0, "adamw", 1e-4)
        assert config.optim.scheduler == "cosine" and config.optim.warmup_steps > 0


@pytest.mark.parametrize("name", ["train-tiny.toml", "train-sd15.toml", "train-sdxl.toml"])
def test_example_configs_load(name):
    path = Path(__file__).resolve().parent.parent / "examples" / name
    config = TrainConfig.load(path)
    assert config.output.trigger_words


def _cli(*args: str) -> tuple[int, str, str]:
    code = (
        "import sys\n"
        "from loraregistry.cli import cli, main\n"
        "cli.lazy_commands.setdefault('train', 'loraregistry.cli.train_cmd:train')\n"
        f"rc = main({list(args)!r})\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'peft', 'transformers', 'accelerate') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, result.stdout, result.stderr


def test_cli_init_writes_a_template_without_importing_torch(tmp_path):
    target = tmp_path / "run.toml"
    rc, out, err = _cli("train", "init", str(target), "--preset", "sdxl")
    assert rc == 0, err
    assert "HEAVY []" in out
    assert TrainConfig.load(target).model.base == "stabilityai/stable-diffusion-xl-base-1.0"
    rc, _, err = _cli("train", "init", str(target))
    assert rc == 2 and "already exists" in err and err.count("\n") == 1


def test_cli_config_error_is_one_line_exit_2_and_torch_free(tmp_path):
    rc, out, err = _cli("train", "--base", "tiny:sd1", "--data", str(tmp_path), "--set", "train.steps=0")
    assert rc == 2
    assert err.startswith("lorareg: error: config: train.steps:") and err.count("\n") == 1
    assert "HEAVY []" in out


def test_cli_help_lists_the_options():
    rc, out, _ = _cli("train", "--help")
    assert rc == 0 and "--resume" in out and "--set" in out and "accelerate launch" in out
    assert "HEAVY []" in out
