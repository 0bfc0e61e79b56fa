"""Scan time of `lorareg registry scan` for N small adapters: cold (every file read, hashed, verified, loader
verdicts), warm (nothing changed) and after renaming every file (hashes from the cache).

    python benchmarks/registry_scan.py [N] [--no-verify] [--jobs=J]

Prints seconds per phase; the files are tiny SD1 LoRAs (rank 2, a few modules), so the cold time is dominated
by per-file work (open, parse, verify), not by reading bytes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# the repo root instead of this folder: benchmarks/inspect.py would shadow the standard library's inspect
sys.path[0] = str(Path(__file__).resolve().parents[1])

from loraregistry.registry import Registry  # noqa: E402
from tests.adapters import lora_tensors, write_adapter  # noqa: E402


def main() -> None:
    count = int(next((a for a in sys.argv[1:] if a.isdigit()), "1000"))
    verify_files = "--no-verify" not in sys.argv
    jobs = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--jobs=")), None)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "loras"
        for i in range(count):
            folder = lib / f"{i // 100:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            write_adapter(folder / f"lora_{i:04d}.safetensors", lora_tensors("sd1", seed=i))
        with Registry.open(Path(tmp) / "reg") as reg:
            t = time.perf_counter()
            cold = reg.scan([lib], verify_files=verify_files, jobs=jobs)
            cold_s = time.perf_counter() - t
            t = time.perf_counter()
            warm = reg.scan([lib], verify_files=verify_files, jobs=jobs)
            warm_s = time.perf_counter() - t
            for path in sorted(lib.rglob("*.safetensors")):
                os.rename(path, path.with_name("renamed_" + path.name))
            t = time.perf_counter()
            moved = reg.scan([lib], verify_files=verify_files, jobs=jobs)
            moved_s = time.perf_counter() - t
    print(f"{count} files, verify={'on' if verify_files else 'off'}, jobs={jobs or 'auto'} "
          f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} usable CPUs)")
    print(f"cold:    {cold_s:7.3f} s  (read {cold.hashed})")
    print(f"warm:    {warm_s:7.3f} s  (unchanged {warm.unchanged}, read {warm.hashed})")
    print(f"renamed: {moved_s:7.3f} s  (from cache {moved.cached}, moved {len(moved.moved)}, read {moved.hashed})")


if __name__ == "__main__":
    main()
