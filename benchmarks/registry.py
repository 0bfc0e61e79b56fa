"""Registry speed at 1,000 adapters: ``add`` and ``scan`` against hashing the same files, and ``search``.

    .venv/bin/python benchmarks/registry.py [--files 1000] [--rank 1] [--repeat 5]

Writes ``--files`` distinct SD1 kohya adapters (every default target, fp16, rank ``--rank``: about 1.2 MB each at
rank 1) to a temporary folder, then times, in this one process, with the page cache warm:

* the reference: ``hashes.hash_file`` of every file (sha256, AutoV3, CRC32, AutoV1/2, BLAKE3 where installed:
  what the registry records, one read per file);
* ``Registry.add_many`` of every file into a fresh registry (header, metadata, the store's copy, the index row):
  what ``lorareg registry add FILE...`` runs, the target; and ``Registry.add`` one file at a time into another;
* ``Registry.scan`` of the folder into another fresh registry, without verify (indexed in place, no copy) and
  with it;
* ``Registry.search`` over the 1,000 entries: a word of the names (FTS), an architecture, a trigger word, a tag,
  and no filter (every entry), best of ``--repeat``.

Prints each time and the ratios (targets: add <= 2x hashing, search <= 50 ms). Nothing here asserts a time.
``--jobs`` is passed to ``add_many`` and ``scan`` (default: the cores idle when each starts, as the CLI does).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The repo root instead of this folder: benchmarks/inspect.py would shadow the standard library's inspect.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from loraregistry.architectures import fingerprint, kohya_default_targets  # noqa: E402
from loraregistry.hashes import hash_file  # noqa: E402
from loraregistry.registry import Registry  # noqa: E402
from loraregistry.safetensors_io import write_safetensors  # noqa: E402

TAGS = ("style", "character", "concept", "clothing", "pose")


def write_files(folder: Path, count: int, rank: int) -> list[Path]:
    """``count`` distinct SD1 kohya adapters: one set of factors, a different alpha and name per file."""
    rng = np.random.default_rng(0)
    fp = fingerprint("sd1")
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te"}
    tensors: dict[str, np.ndarray] = {}
    for component, kohya in prefix.items():
        for path in kohya_default_targets("sd1", component):
            spec = fp.lookup(component, path)
            name = f"{kohya}_{path.replace('.', '_')}"
            kernel = tuple(spec.kernel or ())
            tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, spec.in_features, *kernel)) * 0.05
                                                   ).astype(np.float16)
            tensors[f"{name}.lora_up.weight"] = (rng.standard_normal(
                (spec.out_features, rank, *((1, 1) if kernel else ()))) * 0.01).astype(np.float16)
    alpha_keys = [k.replace(".lora_down.weight", ".alpha") for k in tensors if k.endswith(".lora_down.weight")]
    paths = []
    for i in range(count):
        for key in alpha_keys:
            tensors[key] = np.array(1 + i / count, np.float16)
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                    "ss_base_model_version": "sd_v1", "modelspec.title": f"adapter {i:04d} {TAGS[i % 5]}",
                    "modelspec.trigger_phrase": f"trig{i:04d}", "modelspec.tags": TAGS[i % 5],
                    "modelspec.license": "mit"}
        path = folder / f"{i // 100:02d}" / f"lora_{i:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, metadata)
        paths.append(path)
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(fn, repeat: int) -> float:
    return min(timed(fn) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=None, help="worker processes for add_many and scan")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lorareg-bench-registry-") as tmp:
        root = Path(tmp)
        paths = write_files(root / "loras", args.files, args.rank)
        size = sum(p.stat().st_size for p in paths)
        for p in paths:  # warm the page cache: every phase below reads warm files
            p.read_bytes()
        hashing = timed(lambda: [hash_file(p) for p in paths])
        with Registry.open(root / "reg-add-many") as reg:
            add_many = timed(lambda: reg.add_many(paths, jobs=args.jobs))
            entries = len(reg.list())
        with Registry.open(root / "reg-add") as reg:
            add = timed(lambda: [reg.add(p) for p in paths])
        with Registry.open(root / "reg-scan") as reg:
            scan = timed(lambda: reg.scan([root / "loras"], verify_files=False, jobs=args.jobs))
        with Registry.open(root / "reg-scan-verify") as reg:
            scan_verify = timed(lambda: reg.scan([root / "loras"], verify_files=True, jobs=args.jobs))
            queries = {
                "word (FTS)": lambda: reg.search("adapter"),
                "architecture": lambda: reg.search(architecture="sd1"),
                "trigger word": lambda: reg.search(trigger=f"trig{args.files // 2:04d}"),
                "tag": lambda: reg.search(tag="style"),
                "no filter": lambda: reg.search(),
            }
            searches = {name: (best(fn, args.repeat), len(fn())) for name, fn in queries.items()}
    n = args.files
    print(f"{n} adapters, {size / n / 1e6:.2f} MB each ({size / 1e9:.2f} GB), page cache warm; "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} usable CPUs")
    print(f"reference: hash_file of every file : {hashing:7.2f} s  ({size / hashing / 1e9:.2f} GB/s)")
    print(f"Registry.add_many of every file    : {add_many:7.2f} s  ratio {add_many / hashing:5.2f}x hashing  "
          f"(target <= 2x; `lorareg registry add`); {entries} entries")
    print(f"Registry.add, one file at a time   : {add:7.2f} s  ratio {add / hashing:5.2f}x hashing")
    print(f"Registry.scan, no verify (in place): {scan:7.2f} s  ratio {scan / hashing:5.2f}x hashing")
    print(f"Registry.scan with verify          : {scan_verify:7.2f} s  ratio {scan_verify / hashing:5.2f}x hashing")
    for name, (seconds, hits) in searches.items():
        print(f"search, {name:27}: {seconds * 1e3:7.1f} ms  ({hits} hits; target <= 50 ms)")


if __name__ == "__main__":
    main()
