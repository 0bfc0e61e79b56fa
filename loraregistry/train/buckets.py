"""Aspect-ratio buckets: train each image near its own shape at about ``resolution**2`` pixels.

Buckets are sides that are multiples of ``step``, from half to twice the resolution, with an area no larger than
the square's (kohya's scheme). An image goes to the bucket closest to its aspect ratio (in log space), is scaled
to cover it and center-cropped; the crop is recorded because SDXL conditions on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """How one image becomes a training tensor: the bucket (w, h), its scaled size and the crop's top-left."""

    bucket: tuple[int, int]
    scaled: tuple[int, int]
    crop: tuple[int, int]  # (top, left)


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    area = resolution * resolution
    low, high = max(step, resolution // 2 // step * step), resolution * 2
    sizes = set()
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def place(size: tuple[int, int], resolution: int, step: int, buckets: bool) -> Placement:
    width, height = size
    if buckets:
        ratio = math.log(width / height)
        bucket = min(bucket_sizes(resolution, step), key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))
    else:
        bucket = (resolution, resolution)
    scale = max(bucket[0] / width, bucket[1] / height)
    scaled = (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))
    crop = ((scaled[1] - bucket[1]) // 2, (scaled[0] - bucket[0]) // 2)
    return Placement(bucket=bucket, scaled=scaled, crop=crop)
