"""Find the training items: images with same-name captions, or an HF imagefolder ``metadata.jsonl``.

kohya's repeat folders are understood (``10_mychar/`` repeats its images 10 times). A missing caption or an
unreadable image is skipped and reported, or stops the run, as ``data.missing_caption`` / ``data.bad_image`` say;
an empty dataset always stops, with a message that says what was looked for. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import DataConfig
from .errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Item:
    """One distinct training image. ``size`` is (width, height) as stored."""

    image: Path
    caption: str
    repeats: int
    sha256: str
    size: tuple[int, int]


@dataclass
class Dataset:
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    folder: Path | None = None

    @property
    def hash(self) -> str:
        """sha256 over every item's relative path, image bytes hash, caption and repeats: the dataset's identity."""
        h = hashlib.sha256()
        for item in sorted(self.items, key=lambda i: str(i.image)):
            rel = item.image.relative_to(self.folder) if self.folder else item.image
            h.update(json.dumps([str(rel), item.sha256, item.caption, item.repeats]).encode())
        return h.hexdigest()

    def report(self) -> dict:
        return {"images": len(self.items), "samples_per_epoch": sum(i.repeats for i in self.items),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "dataset_hash": self.hash}


def scan_dataset(config: DataConfig) -> Dataset:
    folder = config.folder
    if not folder.is_dir():
        raise DatasetError("no such folder" if not folder.exists() else "not a folder", path=folder,
                           hint="data.folder takes a folder of images with same-name .txt captions")
    dataset = Dataset(items=[], folder=folder)
    if (folder / METADATA_FILE).is_file():
        _from_metadata(folder / METADATA_FILE, config, dataset)
    else:
        _from_folder(folder, config.repeats, config, dataset)
    if not dataset.items:
        if dataset.skipped:
            path, reason = dataset.skipped[0]
            raise DatasetError(f"every image was skipped ({len(dataset.skipped)}); first: {path}: {reason}",
                               path=folder)
        raise DatasetError(f"no images found (looked for {', '.join(IMAGE_SUFFIXES)} with "
                           f"{config.caption_extension} captions, or {METADATA_FILE})", path=folder)
    return dataset


def _from_folder(folder: Path, repeats: int, config: DataConfig, dataset: Dataset) -> None:
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            m = _REPEAT_FOLDER.match(path.name)
            _from_folder(path, int(m.group(1)) if m else repeats, config, dataset)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            caption_file = path.with_suffix(config.caption_extension)
            caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
            _add(path, caption, repeats, config, dataset, f"no caption file {caption_file.name}")


def _from_metadata(metadata: Path, config: DataConfig, dataset: Dataset) -> None:
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad(dataset, config.bad_image, where, f"not valid JSON ({exc.msg})")
            continue
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str):
            _bad(dataset, config.bad_image, where, "no file_name")
            continue
        text = row.get("text", row.get("caption"))
        caption = text.strip() if isinstance(text, str) else None
        _add(metadata.parent / name, caption, config.repeats, config, dataset, "no text (caption) in metadata.jsonl")


def _add(path: Path, caption: str | None, repeats: int, config: DataConfig, dataset: Dataset, why: str) -> None:
    if caption is None:
        if config.missing_caption != "empty":
            _bad(dataset, config.missing_caption, str(path), why)
            return
        caption = ""
    try:
        data = path.read_bytes()
        size = _image_size(path)
    except (OSError, ValueError) as exc:
        _bad(dataset, config.bad_image, str(path), f"unreadable image ({type(exc).__name__}: {exc})")
        return
    dataset.items.append(Item(image=path, caption=caption, repeats=repeats,
                              sha256=hashlib.sha256(data).hexdigest(), size=size))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode fully: a truncated file fails here, not in the middle of training
        return im.size


def _bad(dataset: Dataset, policy: str, where: str, reason: str) -> None:
    if policy == "stop":
        raise DatasetError(reason, path=where, hint="fix it, or set data.missing_caption / data.bad_image = \"skip\"")
    dataset.skipped.append((where, reason))
