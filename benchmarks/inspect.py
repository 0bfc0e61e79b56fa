"""Header-level inspect throughput: lorareg against safetensors.safe_open, measured in the same run.

    .venv/bin/python benchmarks/inspect.py [--files 200] [--rank 16] [--rounds 20]

Writes N SD1-shaped kohya adapters (every default UNet attention/ff module plus the text encoder) to a
temporary folder, then times, in this one process:
  * reference: safetensors.safe_open(framework="numpy") + metadata() + keys() for each file;
  * lorareg header: safetensors_io.read_header (validated) for each file;
  * lorareg inspect: inspection.inspect_adapter(hashes=False) (header, canonical keys, modules, metadata);
and prints files/s and the ratios. The three are timed in turn, ``--rounds`` times (the order turning each round),
and each keeps its best round: on a machine shared with other work, the readers are compared at their least
disturbed. Nothing here asserts a time.
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib module `inspect`; keep its folder off the import path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from loraregistry.inspection import inspect_adapter  # noqa: E402
from loraregistry.safetensors_io import read_header, write_safetensors  # noqa: E402

ATTN = [f"attn{i}_to_{p}" for i in (1, 2) for p in ("q", "k", "v", "out_0")] + ["ff_net_0_proj", "ff_net_2"]


def sd1_like_modules() -> list[tuple[str, int, int]]:
    mods = []
    for block, ch in ((0, 320), (1, 640), (2, 1280)):
        for a in range(2):
            for name in ATTN:
                mods.append((f"lora_unet_down_blocks_{block}_attentions_{a}_transformer_blocks_0_{name}", ch, ch))
    for layer in range(12):
        for name in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj"):
            mods.append((f"lora_te_text_model_encoder_layers_{layer}_{name}", 768, 768))
    return mods


def write_files(folder: Path, count: int, rank: int) -> list[Path]:
    rng = np.random.default_rng(0)
    tensors = {}
    for name, fin, fout in sd1_like_modules():
        tensors[f"{name}.lora_down.weight"] = rng.standard_normal((rank, fin)).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = rng.standard_normal((fout, rank)).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(rank / 2, dtype=np.float16)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2),
            "ss_base_model_version": "sd_v1", "ss_v2": "False"}
    first = folder / "a0.safetensors"
    write_safetensors(first, tensors, meta)
    paths = [first]
    blob = first.read_bytes()
    for i in range(1, count):
        p = folder / f"a{i}.safetensors"
        p.write_bytes(blob)
        paths.append(p)
    return paths


def timed(fn, paths) -> float:
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return time.perf_counter() - start


def reference(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        f.metadata()
        list(f.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20, help="each reader's best of this many passes over the files")
    args = parser.parse_args()
    readers = (reference, read_header, lambda p: inspect_adapter(p, hashes=False))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp), args.files, args.rank)
        for fn in readers:  # warm caches
            fn(paths[0])
        best = [float("inf")] * len(readers)
        for round_ in range(args.rounds):  # the order turns each round: no reader always follows the same one
            for i in [(round_ + k) % len(readers) for k in range(len(readers))]:
                best[i] = min(best[i], timed(readers[i], paths))
        t_ref, t_hdr, t_insp = best
        size = paths[0].stat().st_size
        tensors = len(read_header(paths[0]).tensors)
    n = len(paths)
    print(f"files: {n} ({size} bytes each, {tensors} tensors, rank {args.rank}); best of {args.rounds} rounds")
    print(f"safetensors.safe_open metadata+keys : {n / t_ref:10.0f} files/s")
    print(f"lorareg read_header (validated)     : {n / t_hdr:10.0f} files/s   ratio vs reference {t_ref / t_hdr:5.2f}x")
    print(f"lorareg inspect (no hashes)         : {n / t_insp:10.0f} files/s   ratio vs reference {t_ref / t_insp:5.2f}x")


if __name__ == "__main__":
    main()
