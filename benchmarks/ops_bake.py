"""Bake peak memory against loading the whole checkpoint, measured in the same run.

    .venv/bin/python benchmarks/ops_bake.py [--mb 400] [--rank 16] [--keep]

Writes an SD1-shaped fp16 single-file checkpoint (original key names; modules from the shipped sd1
fingerprint, text encoder first, then UNet modules until the size reaches --mb) and a kohya LoRA of rank
--rank on every attention/MLP module it holds, to a temporary folder. Then, each in a fresh subprocess,
reports the peak RSS above the RSS after imports (Linux VmHWM, reset by /proc/self/clear_refs) of:
  * reference: safetensors_io.load_tensors(checkpoint), i.e. the whole checkpoint in memory;
  * lorareg bake: ops.bake.bake(lora:0.8 -> checkpoint), streamed one tensor at a time;
and prints the ratio and the bake throughput. The folder is removed unless --keep. Nothing here asserts.
"""

from __future__ import annotations

import os
import sys

# benchmarks/inspect.py shadows the stdlib module `inspect`; keep this folder off the import path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# Peak RSS of the task alone: the kernel's high-water mark (VmHWM) is reset after the imports (clear_refs 5),
# since a forked child otherwise starts with its parent's ru_maxrss.
CHILD = """
import json, sys, time
from pathlib import Path
task, folder = sys.argv[1], Path(sys.argv[2])
from loraregistry.ops.bake import bake
from loraregistry.ops.merge import MergeInput
from loraregistry.safetensors_io import load_tensors

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
start = time.perf_counter()
if task == "load":
    tensors = load_tensors(folder / "base.safetensors")
elif task == "bake":
    bake([MergeInput(folder / "lora.safetensors", 0.8)], base=folder / "base.safetensors",
         output=folder / "baked.safetensors")
print(json.dumps({"peak": status("VmHWM") - before, "seconds": time.perf_counter() - start}))
"""


def sd1_modules(limit_bytes: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(checkpoint key, kohya name, shape) of sd1 fingerprint modules, text encoder first, until limit_bytes."""
    from loraregistry.architectures import fingerprint
    from loraregistry.canonical import ModuleKey
    from loraregistry.formats.sgm import diffusers_to_sgm

    fp = fingerprint("sd1")
    rows, total = [], 0
    for component in ("text_encoder", "unet"):
        for path in fp.paths(component):
            shape = fp.modules[ModuleKey(component, path)].weight_shape
            if component == "unet":
                key = f"model.diffusion_model.{diffusers_to_sgm(path, levels=4)}.weight"
                name = "lora_unet_" + path.replace(".", "_")
            else:
                key = f"cond_stage_model.transformer.{path}.weight"
                name = "lora_te_" + path.replace(".", "_")
            rows.append((key, name, shape))
            total += 2 * int(np.prod(shape))
            if total >= limit_bytes:
                return rows
    return rows


def write_inputs(folder: Path, mb: int, rank: int) -> tuple[int, int, int]:
    from loraregistry.safetensors_io import write_safetensors

    rng = np.random.default_rng(0)
    rows = sd1_modules(mb * 1_000_000)
    base = {key: rng.standard_normal(shape, dtype=np.float32).astype(np.float16) for key, _, shape in rows}
    write_safetensors(folder / "base.safetensors", base)
    largest = max(a.nbytes for a in base.values())
    del base
    lora = {}
    targets = [r for r in rows if ".attentions." in r[0] or "transformer_blocks" in r[0] or "self_attn" in r[0]
               or ".mlp." in r[0]]
    for _, name, shape in targets:
        kernel = shape[2:]
        lora[f"{name}.lora_down.weight"] = (0.01 * rng.standard_normal((rank, shape[1], *kernel))).astype(np.float16)
        lora[f"{name}.lora_up.weight"] = (0.01 * rng.standard_normal((shape[0], rank, *[1] * len(kernel)))).astype(
            np.float16)
        lora[f"{name}.alpha"] = np.array(rank, dtype=np.float32)
    write_safetensors(folder / "lora.safetensors", lora)
    return (folder / "base.safetensors").stat().st_size, largest, len(targets)


def child(task: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, task, str(folder)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=400, help="checkpoint size in MB (default 400)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lorareg-bench-bake-"))
    try:
        t0 = time.perf_counter()
        size, largest, modules = write_inputs(folder, args.mb, args.rank)
        print(f"checkpoint: {size / 1e6:.0f} MB fp16, largest tensor {largest / 1e6:.1f} MB; lora rank {args.rank} "
              f"on {modules} modules; written in {time.perf_counter() - t0:.1f} s  ({folder})")
        load = child("load", folder)
        baked = child("bake", folder)
        load_mb, bake_mb = load["peak"] / 1e6, baked["peak"] / 1e6
        print(f"reference load_tensors(checkpoint): peak +{load_mb:.0f} MB  ({load['seconds']:.2f} s)")
        print(f"lorareg bake (streamed):             peak +{bake_mb:.0f} MB  ({baked['seconds']:.2f} s, "
              f"{size / 1e6 / baked['seconds']:.0f} MB/s)")
        print(f"ratio load / bake: {load_mb / max(bake_mb, 1e-9):.1f}x less memory; bake peak = "
              f"{bake_mb * 1e6 / largest:.1f} x the largest tensor")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
