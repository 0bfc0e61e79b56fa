"""On-disk cache of latents and text conditioning, keyed by content hash.

A latent's key hashes the image bytes, its placement (bucket, scale, crop) and the VAE's weights key; a text
entry's key hashes the caption and the text encoders' weights keys. So a changed image or caption gets a new key
and is encoded again, and everything else is read back: nothing is keyed by path or time. Entries are small
safetensors files written atomically (temp file + rename), so concurrent processes can share a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_VERSION = "1"


@dataclass
class CacheStats:
    """What a run encoded and what it read back, per kind (latents / text)."""

    encoded: dict[str, int] = field(default_factory=lambda: {"latents": 0, "text": 0})
    reused: dict[str, int] = field(default_factory=lambda: {"latents": 0, "text": 0})


def default_cache_dir() -> Path:
    home = os.environ.get("LORAREG_HOME")
    if home:
        return Path(home).expanduser() / "cache" / "train"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lorareg", appauthor=False)) / "train"


def content_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()


class TensorCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats = CacheStats()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError):  # a damaged entry is encoded again
            return None
        self.stats.reused[kind] += 1
        return tensors

    def put(self, kind: str, key: str, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.encoded[kind] += 1
