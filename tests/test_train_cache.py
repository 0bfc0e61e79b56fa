"""The latent / text cache: reused when nothing changed, and a changed image or caption re-encodes only itself."""

from __future__ import annotations

import pytest

from .test_train_support import copy_dataset, one_thread, tiny_config  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def _prepare(config, parts):
    from loraregistry.train import TrainingSet, scan_dataset
    from loraregistry.train.cache import TensorCache

    cache = TensorCache(config.data.cache_dir)
    data = TrainingSet(scan_dataset(config.data), parts, config, cache)
    data.prepare()
    return cache.stats, data


def test_cache_is_reused_and_invalidated_by_content(tmp_path, one_thread):  # noqa: F811
    from PIL import Image

    from loraregistry.train import build_components

    copy_dataset(tmp_path / "data", 3)
    config = tiny_config(tmp_path)
    parts = build_components(config)

    first, data1 = _prepare(config, parts)
    assert (first.encoded, first.reused) == ({"latents": 3, "text": 4}, {"latents": 0, "text": 0})  # 3 captions + ""

    again, data2 = _prepare(config, parts)
    assert (again.encoded, again.reused) == ({"latents": 0, "text": 0}, {"latents": 3, "text": 4})
    assert all(a[0].equal(b[0]) and a[1].equal(b[1]) for a, b in zip(data1.latents, data2.latents))

    images = sorted((tmp_path / "data").glob("*.png"))
    with Image.open(images[0]) as im:  # new pixels, same file name and size
        im.rotate(90).save(images[0])
    images[1].with_suffix(".txt").write_text("lrgshape, a new caption")
    changed, data3 = _prepare(config, parts)
    assert changed.encoded == {"latents": 1, "text": 1}
    assert changed.reused == {"latents": 2, "text": 3}
    assert not data3.latents[0][0].equal(data1.latents[0][0]) and data3.latents[1][0].equal(data1.latents[1][0])

    resized = config.model_copy(update={"data": config.data.model_copy(update={"resolution": 48})})
    other_size, _ = _prepare(resized, parts)
    assert other_size.encoded == {"latents": 3, "text": 0}  # placement is part of the latent key, not the text's


def test_damaged_cache_entry_is_encoded_again(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import build_components

    copy_dataset(tmp_path / "data", 1)
    config = tiny_config(tmp_path)
    parts = build_components(config)
    _prepare(config, parts)
    for entry in (tmp_path / "cache" / "latents").rglob("*.safetensors"):
        entry.write_bytes(b"garbage")
    stats, _ = _prepare(config, parts)
    assert stats.encoded["latents"] == 1


def test_text_is_not_cached_when_a_text_encoder_trains(tmp_path, one_thread):  # noqa: F811
    from loraregistry.train import build_components

    copy_dataset(tmp_path / "data", 2)
    config = tiny_config(tmp_path, network={"components": ["unet", "text_encoder"]})
    stats, data = _prepare(config, build_components(config))
    assert stats.encoded["text"] == 0 and data.batch(0, 0, [0, 1]).text is None
