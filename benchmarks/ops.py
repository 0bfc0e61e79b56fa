"""Benchmarks of the adapter operations, as ratios against references measured in the same run.

    python benchmarks/ops.py                 # everything (the dense reference takes minutes)
    python benchmarks/ops.py --modules 120   # a quicker run on every 6th module

* resize: an SDXL-shaped adapter (every kohya-default SDXL UNet attention and feed-forward module, rank 64,
  random fp16), rank 64 -> 16. lorareg's factor-space SVD (QR of the factors + SVD of the 64 x 64 core)
  against the per-module dense SVD of ``up @ down`` that kohya's ``resize_lora.py`` does (implemented here
  in numpy, fp32 like kohya on CPU). Both must reach the same error; target: >= 10x faster.
* merge: two such adapters merged exactly (factor concatenation), MB of parent tensors per second, in
  memory and end to end (files, verify, atomic write).
* bake: peak memory of baking into a checkpoint; a slot for ``ops.bake`` (``bench_bake``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One BLAS thread for both methods: a like-for-like comparison that shared or busy machines do not skew
# (set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS yourself to override).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Run as a script, this folder would come first on sys.path, and benchmarks/inspect.py would shadow the
# standard library's inspect: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from loraregistry.architectures import fingerprint, kohya_default_targets  # noqa: E402
from loraregistry.canonical import CanonicalKey  # noqa: E402
from loraregistry.ops.common import by_module  # noqa: E402
from loraregistry.ops.delta import module_delta  # noqa: E402
from loraregistry.ops.merge import merge_modules  # noqa: E402
from loraregistry.ops.resize import ResizeSettings, resize_tensors  # noqa: E402


def sdxl_adapter(rank: int, *, seed: int = 0, limit: int | None = None) -> dict[CanonicalKey, np.ndarray]:
    """Random fp16 kohya-shaped LoRA on every SDXL UNet attention/ff module (``limit``: every k-th one)."""
    rng = np.random.default_rng(seed)
    fp = fingerprint("sdxl-base")
    paths = kohya_default_targets("sdxl-base", "unet")
    if limit:
        paths = paths[:: max(1, len(paths) // limit)][:limit]
    tensors = {}
    for path in paths:
        spec = fp.lookup("unet", path)
        kernel = spec.kernel or ()
        down = rng.normal(0, 0.05, (rank, spec.in_features, *kernel))
        up = rng.normal(0, 0.01, (spec.out_features, rank, *([1] * len(kernel))))
        tensors[CanonicalKey("unet", path, "down")] = down.astype(np.float16)
        tensors[CanonicalKey("unet", path, "up")] = up.astype(np.float16)
        tensors[CanonicalKey("unet", path, "alpha")] = np.array(rank / 2, dtype=np.float16)
    return tensors


def kohya_dense_resize(roles, new_rank: int) -> float:
    """The reference for one module: dense W = up @ down (fp32), SVD, keep ``new_rank`` (kohya's
    resize_lora.py). Returns the relative Frobenius error."""
    up = roles["up"].astype(np.float32).reshape(roles["up"].shape[0], -1)
    down = roles["down"].astype(np.float32).reshape(roles["down"].shape[0], -1)
    weight = up @ down
    u, s, vh = np.linalg.svd(weight, full_matrices=False)
    approx = (u[:, :new_rank] * s[:new_rank]) @ vh[:new_rank]
    return float(np.linalg.norm(weight - approx) / np.linalg.norm(weight))


def bench_resize(limit: int | None) -> dict[str, float]:
    """Both methods module by module, alternating, so that machine load hits them alike."""
    tensors = sdxl_adapter(64, limit=limit)
    settings = ResizeSettings(rank=16)
    factor_s = dense_s = worst = 0.0
    modules = by_module(tensors)
    for module, roles in modules.items():
        one = {CanonicalKey(module.component, module.path, r): v for r, v in roles.items()}
        start = time.perf_counter()
        _, rows = resize_tensors(one, settings, dtype=np.float16, show_progress=False)
        factor_s += time.perf_counter() - start
        start = time.perf_counter()
        dense_error = kohya_dense_resize(roles, 16)
        dense_s += time.perf_counter() - start
        worst = max(worst, abs(rows[0].rel_error - dense_error) / dense_error)
    return {"modules": len(modules), "factor_space_s": factor_s, "dense_svd_s": dense_s,
            "speedup": dense_s / factor_s, "max_rel_error_mismatch": worst}


def bench_merge(limit: int | None) -> dict[str, float]:
    a, b = sdxl_adapter(64, seed=1, limit=limit), sdxl_adapter(32, seed=2, limit=limit)
    mb = sum(t.nbytes for t in (*a.values(), *b.values())) / 1e6
    start = time.perf_counter()
    merged, _ = merge_modules([(a, 0.8), (b, 0.5)], dtype=np.float16, show_progress=False)
    in_memory_s = time.perf_counter() - start
    module = next(iter(by_module(merged)))  # spot check: exact
    pick = {k.role: v for k, v in merged.items() if k.module == module}
    expected = sum(w * module_delta({k.role: v for k, v in t.items() if k.module == module})
                   for t, w in ((a, 0.8), (b, 0.5)))
    spot = float(np.linalg.norm(module_delta(pick) - expected) / np.linalg.norm(expected))
    end_to_end_s = _merge_files(a, b)
    return {"parent_mb": mb, "in_memory_mb_s": mb / in_memory_s, "end_to_end_mb_s": mb / end_to_end_s,
            "spot_rel_error_fp16": spot}


def _merge_files(a, b) -> float:
    import loraregistry.verify  # noqa: F401 - import cost is not merge cost
    from loraregistry.ops.merge import MergeInput, merge
    from loraregistry.writer import write_adapter

    with tempfile.TemporaryDirectory() as folder:
        pa, pb, out = (Path(folder) / n for n in ("a.safetensors", "b.safetensors", "m.safetensors"))
        write_adapter(pa, a, format="kohya", dialect={"unet_names": "sgm"})
        write_adapter(pb, b, format="kohya", dialect={"unet_names": "sgm"})
        start = time.perf_counter()
        merge([MergeInput(pa, 0.8), MergeInput(pb, 0.5)], out, force=True, show_progress=False)
        return time.perf_counter() - start


def bench_bake(limit: int | None) -> dict[str, float] | None:
    """Slot for ``ops.bake``: peak memory of a streaming bake against loading the whole checkpoint."""
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=None, help="use about this many modules (default: all 722)")
    args = parser.parse_args(argv)
    resize = bench_resize(args.modules)
    print(f"resize rank 64 -> 16, {resize['modules']} SDXL modules: factor-space {resize['factor_space_s']:.2f} s, "
          f"dense SVD (kohya) {resize['dense_svd_s']:.2f} s -> {resize['speedup']:.1f}x faster "
          f"(max relative difference of the errors {resize['max_rel_error_mismatch']:.1e})")
    merged = bench_merge(args.modules)
    print(f"merge 2 adapters ({merged['parent_mb']:.0f} MB of tensors): {merged['in_memory_mb_s']:.0f} MB/s in memory, "
          f"{merged['end_to_end_mb_s']:.0f} MB/s end to end (read, merge, write, verify); "
          f"fp16 storage error {merged['spot_rel_error_fp16']:.1e}")
    bake = bench_bake(args.modules)
    if bake is not None:
        print("bake:", bake)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
