"""Issue 15's loose ends: kohya ``ss_*`` keys of FLUX.1 / SD3 exports as sd-scripts writes them, and resume safety
(a checkpoint is refused, in one line naming the setting, when ``[flow]``, the base or its LoRA layers changed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraregistry.schema import import_metadata, project_metadata
from loraregistry.schema.metadata import AdapterMetadata

# architecture -> (ss_base_model_version, ss_network_module) as sd-scripts' train_network.py writes them:
# flux_utils.MODEL_VERSION_FLUX_V1, sd3_utils.analyze_state_dict_state's model_type, --network_module
SD_SCRIPTS = {
    "flux1-dev": ("flux1", "networks.lora_flux"),
    "sd3-medium": ("medium", "networks.lora_sd3"),
    "sd35-large": ("5-large", "networks.lora_sd3"),
    "sd35-medium": ("5-medium", "networks.lora_sd3"),
    "sdxl-base": ("sdxl_base_v1-0", "networks.lora"),
    "sd1": ("sd_v1", "networks.lora"),
}


def _record(arch: str, network_type: str = "lora", **extra) -> AdapterMetadata:
    return AdapterMetadata.model_validate({"base": {"architecture": arch},
                                           "network": {"type": network_type, "rank": 4, "alpha": 2.0}, **extra})


@pytest.mark.parametrize(("arch", "version", "module"), [(a, *v) for a, v in SD_SCRIPTS.items()])
def test_declared_architecture_projects_sd_scripts_version_and_network_module(arch, version, module):
    projected = project_metadata(_record(arch))
    assert (projected["ss_base_model_version"], projected["ss_network_module"]) == (version, module)
    assert projected["ss_v2"] == "False"
    back = import_metadata({k: v for k, v in projected.items() if k.startswith("ss_")}).metadata
    assert (back.base.architecture, back.network.type) == (arch, "lora")


@pytest.mark.parametrize(("value", "arch"), [("medium", "sd3-medium"), ("5-large", "sd35-large"),
                                             ("5-medium", "sd35-medium"), ("3-medium", "sd3-medium"),
                                             ("3-5-large", "sd35-large"), ("3-5-medium", "sd35-medium"),
                                             ("sd3.5-large", "sd35-large"), ("flux1", "flux1-dev")])
def test_sd_scripts_sd3_versions_old_and_new_are_read(value, arch):
    imported = import_metadata({"ss_base_model_version": value, "ss_network_module": "networks.lora_sd3"})
    assert imported.metadata.base.architecture == arch and not imported.warnings


def test_an_inferred_flux_architecture_writes_no_flux_network_module():
    """Nothing inferred lands in foreign keys: the family-specific module name needs a declared architecture."""
    projected = project_metadata(_record("flux1-dev", inferred=["base.architecture"]))
    assert "ss_base_model_version" not in projected and projected["ss_network_module"] == "networks.lora"


@pytest.mark.parametrize(("network_type", "module"), [("dora", "lycoris.kohya"), ("locon", "networks.lora_flux")])
def test_other_network_types_of_flux(network_type, module):
    assert project_metadata(_record("flux1-dev", network_type))["ss_network_module"] == module


# --- resume safety ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_checkpointed_run(tmp_path_factory):
    """Two tiny FLUX.1-dev steps with a checkpoint after the first, through the CLI (kohya export)."""
    from loraregistry.cli import cli, main

    from .test_train_resume import _write_toml
    from .test_train_support import copy_dataset, tiny_settings

    cli.lazy_commands.setdefault("train", "loraregistry.cli.train_cmd:train")
    tmp = tmp_path_factory.mktemp("flux-resume")
    copy_dataset(tmp / "data", 2)
    settings = tiny_settings(tmp, "flux1-dev", train={"steps": 2, "checkpoint_every": 1, "batch_size": 2},
                             output={"dir": str(tmp / "run"), "formats": ["kohya"], "add_to_registry": False})
    settings["data"]["folder"] = str(tmp / "data")
    config = _write_toml(tmp / "run.toml", settings)
    assert main(["train", "--config", str(config), "-q"]) == 0
    return config, tmp / "run"


def test_the_flux_kohya_export_carries_sd_scripts_keys(flux_checkpointed_run):
    from loraregistry.safetensors_io import read_header

    _, run = flux_checkpointed_run
    metadata = read_header(next(run.glob("*.safetensors"))).metadata
    assert (metadata["ss_base_model_version"], metadata["ss_network_module"]) == ("flux1", "networks.lora_flux")


CHANGED = [  # --set value -> the setting the refusal names
    ("flow.shift=3.0", "flow.shift"),
    ("flow.timestep_sampling=\"logit_normal\"", "flow.timestep_sampling"),
    ("flow.guidance_scale=1.0", "flow.guidance_scale"),
    ("model.base=\"tiny:flux1-schnell\"", "model.base"),
]


@pytest.mark.parametrize(("override", "setting"), CHANGED, ids=[c[1] for c in CHANGED])
def test_resume_with_a_changed_flow_setting_or_base_is_one_line_exit_2(flux_checkpointed_run, capsys, override,
                                                                       setting):
    from loraregistry.cli import main

    config, run = flux_checkpointed_run
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--set", override, "--resume", "latest", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"was made with a different {setting} (" in err and str(run / "checkpoints") in err


def test_resume_with_the_same_settings_still_runs(flux_checkpointed_run):
    from loraregistry.cli import main

    config, _ = flux_checkpointed_run
    assert main(["train", "--config", str(config), "--resume", "latest", "-q"]) == 0


def test_a_checkpoint_from_before_the_flow_section_resumes(tmp_path):
    """A saved config without ``flow`` (written before the section existed) is no changed setting."""
    from loraregistry.train.checkpoint import _check_compatible

    current = {"model": {"base": "tiny:sd1"}, "flow": {"shift": None}}
    _check_compatible(tmp_path, {"model": {"base": "tiny:sd1"}}, current)


def test_lora_layers_that_do_not_fit_are_refused_before_anything_is_restored(tmp_path):
    import torch

    from loraregistry.train.checkpoint import Position, load, save
    from loraregistry.train.errors import CheckpointError

    from .test_train_resume import _tiny_training_state

    models, optimizer, scheduler, generator = _tiny_training_state()
    folder = save(tmp_path, Position(step=1, epoch=0, batch_index=0), models=models, optimizer=optimizer,
                  scheduler=scheduler, generator=generator, config_json={}, keep=2)
    other = {"unet": torch.nn.Linear(4, 5)}
    before = other["unet"].weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        load(folder, models=other, optimizer=torch.optim.AdamW(other["unet"].parameters()), scheduler=scheduler,
             generator=generator, config_json={})
    message = info.value.one_line()
    assert "\n" not in message and "do not fit the model being trained" in message and "unet/bias" in message
    assert torch.equal(other["unet"].weight, before)



# --- benchmarks/train.py ------------------------------------------------------------------------------------


def test_the_cuda_benchmark_without_cuda_is_one_line_exit_2():
    """Only the refusal is tested: the benchmark itself never runs in CI."""
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "train.py"), "--family", "flux", "--device",
                           "cuda"], capture_output=True, text=True, timeout=120, check=False, cwd=root,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[transformers]")]
    assert done.returncode == 2 and done.stdout == ""
    assert lines == ["benchmarks/train.py: --device cuda but torch finds no CUDA device; run it on a GPU machine or "
                     "use --device cpu"]
