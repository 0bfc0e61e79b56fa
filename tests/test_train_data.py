"""Dataset scanning (captions, metadata.jsonl, repeat folders, bad items), buckets and caption augmentation."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from loraregistry.train.buckets import bucket_sizes, place
from loraregistry.train.captions import augment, caption_rng
from loraregistry.train.config import DataConfig
from loraregistry.train.data import scan_dataset
from loraregistry.train.errors import DatasetError

from .test_train_support import EXAMPLE_DATASET, copy_dataset


def _config(folder, **fields) -> DataConfig:
    return DataConfig(folder=folder, **fields)


def test_images_with_captions_and_dataset_hash(tmp_path):
    copy_dataset(tmp_path, 3)
    dataset = scan_dataset(_config(tmp_path))
    assert [i.image.name for i in dataset.items] == sorted(p.name for p in tmp_path.glob("*.png"))
    assert dataset.items[0].caption.startswith("lrgshape, ")
    assert dataset.items[0].size == (64, 64) and dataset.skipped == []
    before = dataset.hash
    assert scan_dataset(_config(tmp_path)).hash == before  # stable
    caption = tmp_path / dataset.items[1].image.with_suffix(".txt").name
    caption.write_text("lrgshape, changed")
    assert scan_dataset(_config(tmp_path)).hash != before  # a caption is part of the identity


def test_kohya_repeat_folders(tmp_path):
    copy_dataset(tmp_path / "10_shapes", 2)
    copy_dataset(tmp_path / "plain", 1)
    dataset = scan_dataset(_config(tmp_path, repeats=3))
    assert sorted(i.repeats for i in dataset.items) == [3, 10, 10]
    assert dataset.report()["samples_per_epoch"] == 23


def test_metadata_jsonl(tmp_path):
    for n, image in enumerate(sorted(EXAMPLE_DATASET.glob("*.png"))[:3]):
        shutil.copy(image, tmp_path / f"img{n}.png")
    rows = [{"file_name": "img0.png", "text": "lrgshape, zero"}, {"file_name": "img1.png", "caption": "one"},
            {"file_name": "img2.png"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n{broken\n")
    dataset = scan_dataset(_config(tmp_path))
    assert [(i.image.name, i.caption) for i in dataset.items] == [("img0.png", "lrgshape, zero"), ("img1.png", "one")]
    reasons = [r for _, r in dataset.skipped]
    assert any("no text" in r for r in reasons) and any("not valid JSON" in r for r in reasons)


# (case id, how to damage a 2-image copy, config fields, expected: "skip" reason or "stop" message)
BAD_ITEMS = [
    ("missing-caption-skip", "drop_caption", {}, ("skip", "no caption file")),
    ("missing-caption-stop", "drop_caption", {"missing_caption": "stop"}, ("stop", "no caption file")),
    ("missing-caption-empty", "drop_caption", {"missing_caption": "empty"}, ("empty", "")),
    ("unreadable-skip", "corrupt_image", {}, ("skip", "unreadable image")),
    ("unreadable-stop", "corrupt_image", {"bad_image": "stop"}, ("stop", "unreadable image")),
    ("truncated-skip", "truncate_image", {}, ("skip", "unreadable image")),
]


@pytest.mark.parametrize("case, damage, fields, expected", BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
def test_bad_items_are_skipped_with_a_report_or_stop_with_one_line(tmp_path, case, damage, fields, expected):
    copy_dataset(tmp_path, 2)
    victim = min(tmp_path.glob("*.png"))
    if damage == "drop_caption":
        victim.with_suffix(".txt").unlink()
    elif damage == "corrupt_image":
        victim.write_bytes(b"not an image at all")
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    policy, phrase = expected
    if policy == "stop":
        with pytest.raises(DatasetError) as info:
            scan_dataset(_config(tmp_path, **fields))
        assert phrase in info.value.one_line() and victim.name in info.value.one_line()
        assert "\n" not in info.value.one_line()
        return
    dataset = scan_dataset(_config(tmp_path, **fields))
    if policy == "empty":
        assert len(dataset.items) == 2 and dataset.items[0].caption == ""
    else:
        assert len(dataset.items) == 1
        assert dataset.skipped[0][0].endswith(victim.name) and phrase in dataset.skipped[0][1]


@pytest.mark.parametrize("setup, phrase", [("nothing", "no images found"), ("all-bad", "every image was skipped"),
                                           ("no-folder", "no such folder")])
def test_empty_dataset_stops_with_a_clear_message(tmp_path, setup, phrase):
    folder = tmp_path / "data"
    if setup != "no-folder":
        folder.mkdir()
    if setup == "all-bad":
        (folder / "a.png").write_bytes(b"junk")
        (folder / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match=phrase):
        scan_dataset(_config(folder))


def test_buckets_keep_area_and_aspect():
    sizes = bucket_sizes(512, 64)
    assert (512, 512) in sizes and all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)
    wide = place((1024, 512), 512, 64, True)
    assert wide.bucket[0] > wide.bucket[1]
    assert wide.scaled[0] >= wide.bucket[0] and wide.scaled[1] >= wide.bucket[1]
    square = place((96, 64), 64, 16, False)
    assert square.bucket == (64, 64) and square.crop == (0, 16)


def test_caption_shuffle_keeps_tokens_and_is_seeded():
    config = DataConfig(folder=Path("."), shuffle_captions=True, keep_tokens=1)
    caption = "lrgshape, a, b, c, d, e"
    first = augment(caption, config, caption_rng(1, 0, 0))
    assert first.startswith("lrgshape, ") and sorted(first.split(", ")) == sorted(caption.split(", "))
    assert augment(caption, config, caption_rng(1, 0, 0)) == first  # same seed, epoch, position
    variants = {augment(caption, config, caption_rng(1, e, 0)) for e in range(20)}
    assert len(variants) > 1
    dropped = DataConfig(folder=Path("."), caption_dropout=1.0)
    assert augment(caption, dropped, random.Random(0)) == ""
