"""Loading the base offline and checking what it is: folders, single files, the HF cache, tiny specs."""

from __future__ import annotations

import numpy as np
import pytest

from loraregistry.safetensors_io import write_safetensors
from loraregistry.train.errors import BaseModelError, ConfigError

from .test_train_support import one_thread, tiny_config  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch, expected, prediction", [
    ("sd1", "sd1", "epsilon"), ("sd2", "sd2-512", "epsilon"), ("sd2-v", "sd2-768-v", "v"), ("sdxl", "sdxl-base", "epsilon"),
])
def test_architecture_and_prediction_type_from_a_diffusers_folder(tmp_path, one_thread, arch, expected,  # noqa: F811
                                                                  prediction):
    from loraregistry.train import build_components
    from loraregistry.train.tiny import tiny_pipeline

    folder = tmp_path / "base"
    tiny_pipeline(arch).save_pretrained(folder)
    parts = build_components(tiny_config(tmp_path, model={"base": str(folder)}))
    assert (parts.architecture.id, parts.prediction_type) == (expected, prediction)
    assert parts.noise_scheduler.config.prediction_type == ("v_prediction" if prediction == "v" else "epsilon")
    assert parts.source.path == folder.resolve() and parts.trained["unet"] is parts.unet


@pytest.mark.parametrize("model, error, phrase", [
    ({"base": "tiny:sd1", "architecture": "sdxl-base"}, BaseModelError, "model.architecture is sdxl-base"),
    ({"base": "tiny:sd3"}, ConfigError, "unknown tiny arch"),
    ({"base": "someone/not-downloaded"}, BaseModelError, "hf download someone/not-downloaded"),
    ({"base": "./missing-folder"}, BaseModelError, "no such file or folder"),
])
def test_bad_bases_are_one_line(tmp_path, one_thread, model, error, phrase):  # noqa: F811
    from loraregistry.train import build_components

    with pytest.raises(error) as info:
        build_components(tiny_config(tmp_path, model=model))
    assert phrase in info.value.one_line() and "\n" not in info.value.one_line()


def test_text_encoder_component_the_base_lacks(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import build_components

    with pytest.raises(ConfigError, match="text_encoder_2 but a sd1 base has none"):
        build_components(tiny_config(tmp_path, network={"components": ["unet", "text_encoder_2"]}))


def test_folder_that_is_not_a_pipeline(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import build_components

    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no model_index.json"):
        build_components(tiny_config(tmp_path, model={"base": str(tmp_path / "empty")}))


def test_single_file_without_configs_says_what_to_do_offline(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import build_components

    checkpoint = tmp_path / "model.safetensors"
    write_safetensors(checkpoint, {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 3, 3), np.float16)})
    with pytest.raises(BaseModelError) as info:
        build_components(tiny_config(tmp_path, model={"base": str(checkpoint)}))
    assert "offline" in info.value.one_line() and "model.single_file_config" in info.value.one_line()


def test_unet_targets_that_match_nothing(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import build_components

    with pytest.raises(ConfigError, match="matches no Linear/Conv2d module"):
        build_components(tiny_config(tmp_path, network={"unet_targets": ["nope"]}))
