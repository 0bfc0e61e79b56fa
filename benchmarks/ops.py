"""Benchmarks of the adapter operations: whole processes, as ratios against references measured in the same run.

    python benchmarks/ops.py                  # the full SDXL-shaped adapter: 986 modules (a few minutes)
    python benchmarks/ops.py --modules 120    # every k-th module: a quicker look
    python benchmarks/ops.py --dense-shapes 0 --no-merge
    python benchmarks/ops.py --only merge     # the merge benchmark alone (target 4)
    python benchmarks/ops.py --family flux    # a FLUX.1 kohya LoRA: 376 modules, rank 32 -> 8

* resize (issue 14, target 1): an SDXL-shaped kohya LoRA (every default kohya target of the UNet and both text
  encoders: 986 modules, rank 64, alpha 32, random fp16, 456 MB), rank 64 -> 16. Whole processes, alternated
  ``--repeat`` times so that machine load hits both alike:
    - ``lorareg resize IN -o OUT --rank 16 --json`` (reads, hashes the input for provenance, resizes, writes,
      verifies, records);
    - ``benchmarks/resize_sketch.py``, the bare numpy Gram/Cholesky factor-space method (no checks, no record).
  Prints wall and CPU seconds (medians), peak RSS, and the ratio lorareg / sketch (target <= 1.4x, CPU ratio
  beside it because lorareg hashes the input on a second thread), twice: COLD, without a registry (the input is
  read and hashed for its provenance record), and WARM, with the input folder scanned into a registry
  beforehand (``lorareg registry scan --no-verify``, a temporary ``LORAREG_HOME``): its sha256 and AutoV3 then
  come from the registry's hash cache, as for a user whose LoRA folder the registry indexes. Errors: lorareg's
  per-module errors against the sketch's (same ranks, same error), and on one module per distinct shape a dense
  float64 SVD of the input's delta: lorareg's stored fp16 output must reach that optimum within fp16 storage.
  kohya-style: kohya's resize_lora.py does a dense SVD per module; here a numpy float32 dense SVD (thin, which is
  cheaper than kohya's full one) timed on one module of each distinct shape and EXTRAPOLATED to every module by
  shape counts (labelled as such); its truncation error is printed beside lorareg's on the same modules (equal
  error: both are the Eckart-Young optimum). Peak memory is compared with 0.3 x 3.9 GB (kohya's peak on the SDXL
  file, measured for issue 14).
  ``--family flux`` (issue 15): a FLUX.1 kohya LoRA on real shapes from the flux1-dev fingerprint, every module
  kohya's lora_flux trains (19 double + 38 single blocks with fused qkv / linear1, 304 modules) plus CLIP-L (72),
  rank 32 -> 8, against the same references (target >= 300x kohya-style at one thread).
* merge (target 4): two SDXL-shaped adapters (rank 16 and 8, every module) merged exactly,
  ``lorareg merge A B -o M`` against ``cat A B > out`` on a warm page cache, same run; COLD and WARM as for
  resize (the parents hashed, or their hashes from a registry that scanned them).

One BLAS thread everywhere (OPENBLAS_NUM_THREADS etc. default to 1; set them to override). Nothing here asserts:
timings move with the machine, the ratios are what count.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Run as a script, this folder would come first on sys.path, and benchmarks/inspect.py would shadow the
# standard library's inspect: put the repository root there instead.
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from loraregistry.architectures import fingerprint, kohya_default_targets  # noqa: E402
from loraregistry.canonical import CanonicalKey  # noqa: E402

# family -> (fingerprint, components, rank in, rank out, kohya dialect)
ARCHES = {
    "sdxl": ("sdxl-base", ("unet", "text_encoder", "text_encoder_2"), 64, 16, {"unet_names": "sgm"}),
    # kohya lora_flux names: fused img_attn.qkv / txt_attn.qkv / linear1 (one module each, as kohya trains them)
    "flux": ("flux1-dev", ("transformer", "text_encoder"), 32, 8, {"transformer_names": "flux"}),
}
KOHYA_PEAK_BYTES = 3.9e9  # kohya resize_lora.py on the full file, one thread (issue 14)
RESIZE_TARGET, MEMORY_TARGET, MERGE_TARGET, KOHYA_TARGET = 1.4, 0.3, 2.0, 300


def target_shapes(arch: str, limit: int | None) -> list[tuple[str, str, int, int, tuple[int, ...]]]:
    """(component, path, out, in, kernel) of every default kohya target of ``arch`` (SDXL: 986; FLUX.1: 304 fused
    transformer modules + 72 CLIP-L), shapes from the fingerprint (a fused module: its targets' rows stacked);
    ``limit``: about that many, every k-th."""
    from loraregistry.ops.targets import fused_path_of

    name, components = ARCHES[arch][0], ARCHES[arch][1]
    fp = fingerprint(name)
    shapes: dict[tuple[str, str], list[int | tuple[int, ...]]] = {}
    for component in components:
        for path in kohya_default_targets(name, component):
            spec = fp.lookup(component, path)
            fused = fused_path_of(path) if component == "transformer" and ARCHES[arch][4].get("transformer_names") \
                == "flux" else None
            key = (component, fused or path)
            if key in shapes:  # another target of a fused module: its rows stack
                shapes[key][0] += spec.out_features
            else:
                shapes[key] = [spec.out_features, spec.in_features, tuple(spec.kernel or ())]
    found = [(c, p, out, inn, kernel) for (c, p), (out, inn, kernel) in shapes.items()]
    if limit:
        found = found[:: max(1, len(found) // limit)][:limit]
    return found


def random_adapter(rank: int, *, arch: str = "sdxl", seed: int = 0,
                   limit: int | None = None) -> dict[CanonicalKey, np.ndarray]:
    """Random fp16 kohya-shaped LoRA (down N(0, 0.05), up N(0, 0.01), alpha rank/2) on ``arch``'s kohya targets."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for component, path, out, inn, kernel in target_shapes(arch, limit):
        down = rng.standard_normal((rank, inn, *kernel), dtype=np.float32) * 0.05
        up = rng.standard_normal((out, rank, *([1] * len(kernel))), dtype=np.float32) * 0.01
        tensors[CanonicalKey(component, path, "down")] = down.astype(np.float16)
        tensors[CanonicalKey(component, path, "up")] = up.astype(np.float16)
        tensors[CanonicalKey(component, path, "alpha")] = np.array(rank / 2, dtype=np.float16)
    return tensors


def write_kohya(path: Path, tensors: dict[CanonicalKey, np.ndarray], arch: str = "sdxl") -> Path:
    from loraregistry.writer import write_adapter

    write_adapter(path, tensors, format="kohya", dialect=ARCHES[arch][4])
    return path


# A child's ru_maxrss counts what its parent had resident at the fork (this benchmark holds the 456 MB adapter it
# wrote), so every command is started by a fresh, nearly empty interpreter, which reports the command's own wall,
# CPU and peak RSS (its floor: the launcher's ~10 MB) into the file named by its first argument.
LAUNCH = r"""
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak": usage.ru_maxrss * 1024,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run(args: list[str], stdout: Path | None = None, home: Path | None = None) -> dict[str, float]:
    """One whole process: wall seconds, CPU seconds (user + system) and peak RSS bytes, from wait4 in a launcher
    (``LAUNCH``). ``home``: its ``LORAREG_HOME`` (the registry it sees, or a missing folder for none)."""
    env = {**os.environ, "LORAREG_HOME": str(home)} if home is not None else None
    with tempfile.TemporaryDirectory(prefix="lorareg-bench-run-") as scratch:
        measured = Path(scratch) / "measured.json"
        with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
            done = subprocess.run([sys.executable, "-c", LAUNCH, str(measured), *args], stdout=out,
                                  stderr=subprocess.PIPE, cwd=ROOT, env=env)
        result = json.loads(measured.read_text()) if measured.exists() else {"code": done.returncode}
    if done.returncode != 0 or result["code"] != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return {key: result[key] for key in ("wall", "cpu", "peak")}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _say(text: str) -> None:
    print(text, flush=True)


# --- resize -------------------------------------------------------------------------------------------------

# lorareg resize's steps one after another in a fresh process, CPU seconds each (the CLI overlaps the parent's
# hashing with the maths on a second thread; here it runs alone so that its cost shows).
PHASES = """
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
steps, last = {}, cpu()
def step(name):
    global last
    now = cpu(); steps[name] = round(now - last, 3); last = now
from loraregistry.adapter import AdapterFile
from loraregistry.ops import io
from loraregistry.ops.resize import ResizeSettings, resize_tensors
from loraregistry.ops.targets import base_shapes
import loraregistry.schema, loraregistry.verify
from loraregistry.registry import hash_cache
from loraregistry.schema import Parent  # the record's models load on first use: here, not in the hashing step
step("imports")
adapter = AdapterFile.open(sys.argv[1])
tensors = io.load_canonical(adapter, copy=False)
step("open + read + module checks")
new, rows = resize_tensors(tensors, ResizeSettings(rank=int(sys.argv[3])), shapes=base_shapes(adapter, None))
step("resize maths")
parent = io.parent_record(adapter)
step("input sha256 + AutoV3 (hashed, or from the registry's cache; a thread in the CLI)")
record = io.op_metadata(adapter.metadata, operation="resize", params={}, parents=[parent])
io.write_op_output(sys.argv[2], new, format=adapter.format, dialect=adapter.mapping.dialect, metadata=record,
                   header=io.carried_header(adapter), force=True)
step("write + record + verify + output hashes")
print(json.dumps(steps))
"""


# The two ways lorareg runs: name -> what it means (printed beside its ratio).
MODES = {"cold": "COLD (no registry: the inputs read and hashed for provenance)",
         "warm": "WARM (inputs scanned into a registry beforehand: their hashes from its cache)"}


def registry_homes(folder: Path, inputs: Path) -> dict[str, Path]:
    """``LORAREG_HOME`` per mode: COLD names a folder that does not exist (no registry: lorareg hashes its inputs,
    and creates none); WARM a registry that has scanned ``inputs`` (``registry scan --no-verify``), created here."""
    homes = {"cold": folder / "no-registry", "warm": folder / f"registry-{inputs.name}"}
    scanned = run([sys.executable, "-m", "loraregistry", "registry", "scan", str(inputs), "--no-verify", "--json"],
                  home=homes["warm"])
    _say(f"  WARM set-up: `lorareg registry scan --no-verify` of the input folder, {scanned['wall']:.2f} s (once, "
         f"not part of any timing below)")
    return homes


def bench_resize(folder: Path, arch: str, limit: int | None, repeat: int, dense_shapes: int | None) -> dict:
    _, _, rank_in, rank_out, _ = ARCHES[arch]
    tensors = random_adapter(rank_in, arch=arch, limit=limit)
    modules = len(tensors) // 3
    inputs = folder / "resize-inputs"
    inputs.mkdir()
    src = write_kohya(inputs / f"{arch}_r{rank_in}.safetensors", tensors, arch)
    _say(f"resize: {modules} {arch} modules, rank {rank_in} -> {rank_out}, "
         f"{src.stat().st_size / 1e6:.0f} MB fp16 input")
    homes = registry_homes(folder, inputs)
    lorareg = [sys.executable, "-m", "loraregistry", "resize", str(src), "-o", str(folder / "lorareg.safetensors"),
               "--rank", str(rank_out), "--json"]
    sketch = [sys.executable, str(ROOT / "benchmarks" / "resize_sketch.py"), str(src),
              str(folder / "sketch.safetensors"), str(rank_out), "--errors", str(folder / "sketch_errors.npy")]
    commands = [(mode, lorareg, homes[mode]) for mode in MODES] + [("sketch", sketch, None)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in commands}
    run(sketch)  # warm the page cache and the bytecode caches: both then read from memory
    for i in range(repeat):
        for name, args, home in commands if i % 2 == 0 else commands[::-1]:
            result = run(args, stdout=folder / f"{name}.out", home=home)
            runs[name].append(result)
            _say(f"  round {i + 1}/{repeat}: {name:8s} {result['wall']:6.2f} s wall  {result['cpu']:6.2f} s CPU  "
                 f"peak {result['peak'] / 1e6:5.0f} MB")
    summary = json.loads((folder / "cold.out").read_text())
    ours = np.array([m["rel_error"] for m in summary["per_module"]])
    theirs = np.load(folder / "sketch_errors.npy")
    report = {
        "arch": arch, "rank_in": rank_in, "rank_out": rank_out, "modules": modules,
        **{f"{name}_wall_s": _median(r, "wall") for name, r in runs.items()},
        **{f"{name}_cpu_s": _median(r, "cpu") for name, r in runs.items()},
        **{f"{name}_peak_bytes": max(x["peak"] for x in r) for name, r in runs.items()},
        "max_error_difference_vs_sketch": float(np.max(np.abs(np.sort(ours) - np.sort(theirs)))),
        "ranks_after": summary["rank_after"],
    }
    for mode in MODES:
        phases = subprocess.run([sys.executable, "-c", PHASES, str(src), str(folder / "phases.safetensors"),
                                 str(rank_out)], capture_output=True, text=True, cwd=ROOT, check=True,
                                env={**os.environ, "LORAREG_HOME": str(homes[mode])})
        report[f"{mode}_phases_cpu_s"] = json.loads(phases.stdout.strip().splitlines()[-1])
    report.update(_optimum_check(src, folder / "lorareg.safetensors", rank_out))
    if dense_shapes != 0:
        errors = {m["module"]: m["rel_error"] for m in summary["per_module"]}
        report.update(_kohya_extrapolated(tensors, rank_out, dense_shapes, errors))
    return report


def _optimum_check(src: Path, out: Path, rank: int) -> dict:
    """One module per distinct shape: the dense float64 SVD optimum against lorareg's stored (fp16) output."""
    from loraregistry.adapter import AdapterFile
    from loraregistry.ops.common import by_module
    from loraregistry.ops.delta import module_delta
    from loraregistry.ops.io import load_canonical

    before = by_module(load_canonical(AdapterFile.open(src)))
    after = by_module(load_canonical(AdapterFile.open(out)))
    seen, worst = set(), 0.0
    for module, roles in before.items():
        shape = (roles["up"].shape[0], roles["down"].shape[1])
        if shape in seen:
            continue
        seen.add(shape)
        delta = module_delta(roles)
        s = np.linalg.svd(delta.reshape(delta.shape[0], -1), compute_uv=False)
        norm = float(np.linalg.norm(s))
        optimum = float(np.sqrt(np.sum(s[rank:] ** 2))) / norm
        achieved = float(np.linalg.norm(module_delta(after[module]) - delta)) / norm
        worst = max(worst, (achieved - optimum) / optimum)
    return {"optimum_checked_modules": len(seen), "max_excess_over_optimum": worst}


def _kohya_extrapolated(tensors: dict[CanonicalKey, np.ndarray], rank: int, limit: int | None,
                        lorareg_errors: dict[str, float]) -> dict:
    """kohya-style dense float32 SVD + truncation, timed on one module per distinct shape, times its count; the
    largest difference between its truncation error and lorareg's on those modules (equal error)."""
    from loraregistry.ops.common import by_module

    modules = by_module(tensors)

    def shape_of(roles) -> tuple[int, int]:
        return roles["up"].shape[0], int(np.prod(roles["down"].shape[1:]))

    shapes = Counter(shape_of(r) for r in modules.values())
    chosen = sorted(shapes, key=lambda s: -shapes[s])[:limit] if limit else list(shapes)
    covered = sum(shapes[s] for s in chosen)
    _say(f"kohya-style dense SVD: timing one module of each of {len(chosen)} shapes ({covered} of "
         f"{len(modules)} modules), then extrapolating")
    measured = total = worst = 0.0
    for shape in chosen:
        module, roles = next((m, r) for m, r in modules.items() if shape_of(r) == shape)
        start = time.perf_counter()
        weight = roles["up"].astype(np.float32).reshape(shape[0], -1) @ \
            roles["down"].astype(np.float32).reshape(-1, shape[1])
        u, s, vh = np.linalg.svd(weight, full_matrices=False)
        _ = (u[:, :rank] * s[:rank]).astype(np.float16), vh[:rank].astype(np.float16)
        seconds = time.perf_counter() - start
        error = float(np.sqrt(np.sum(s[rank:].astype(np.float64) ** 2) / np.sum(s.astype(np.float64) ** 2)))
        worst = max(worst, abs(error - lorareg_errors[str(module)]))
        measured += seconds
        total += seconds * shapes[shape]
        _say(f"  {shape[0]:5d} x {shape[1]:5d}: {seconds:6.2f} s x {shapes[shape]} modules; relative error "
             f"{error:.6f} (lorareg {lorareg_errors[str(module)]:.6f})")
    return {"kohya_measured_s": measured, "kohya_extrapolated_s": total * len(modules) / covered,
            "kohya_shapes": len(chosen), "kohya_error_difference": worst}


def print_resize(r: dict) -> None:
    _say(f"resize {r['arch']} {r['modules']} modules, rank {r['rank_in']} -> {r['rank_out']}: sketch "
         f"{r['sketch_wall_s']:.2f} s wall / {r['sketch_cpu_s']:.2f} s CPU (medians)")
    for mode, meaning in MODES.items():
        wall, cpu = r[f"{mode}_wall_s"] / r["sketch_wall_s"], r[f"{mode}_cpu_s"] / r["sketch_cpu_s"]
        _say(f"  {meaning}: lorareg {r[f'{mode}_wall_s']:.2f} s wall / {r[f'{mode}_cpu_s']:.2f} s CPU -> "
             f"lorareg / sketch {wall:.2f}x wall, {cpu:.2f}x CPU (target <= {RESIZE_TARGET}x)")
    for mode in MODES:
        phases = ", ".join(f"{name} {seconds:.2f}" for name, seconds in r[f"{mode}_phases_cpu_s"].items())
        _say(f"  lorareg's steps {mode.upper()}, CPU s (one fresh process, serial): {phases}")
    hashing = next((v for k, v in r["cold_phases_cpu_s"].items() if k.startswith("input sha256")), 0.0)
    _say(f"  COLD without the input's provenance hashes (sha256 + AutoV3, which the sketch does not compute): "
         f"{(r['cold_cpu_s'] - hashing) / r['sketch_cpu_s']:.2f}x CPU")
    peak = max(r[f"{mode}_peak_bytes"] for mode in MODES)
    against = (f" = {peak / KOHYA_PEAK_BYTES:.2f}x kohya's 3.9 GB on this file (target <= "
               f"{MEMORY_TARGET}x)") if r["arch"] == "sdxl" and r["modules"] == 986 else ""
    _say(f"  peak RSS: lorareg {peak / 1e6:.0f} MB (COLD or WARM, the larger){against}; "
         f"sketch {r['sketch_peak_bytes'] / 1e6:.0f} MB")
    _say(f"  errors: max |lorareg - sketch| per module {r['max_error_difference_vs_sketch']:.1e}; stored fp16 output "
         f"vs dense float64 SVD optimum on {r['optimum_checked_modules']} modules (one per shape): "
         f"max excess {r['max_excess_over_optimum']:.1e} of the optimum; ranks after {r['ranks_after']}")
    if "kohya_extrapolated_s" in r:
        k = r["kohya_extrapolated_s"]
        _say(f"  kohya-style dense SVD, EXTRAPOLATED from {r['kohya_shapes']} shapes ({r['kohya_measured_s']:.1f} s "
             f"measured): {k:.0f} s -> lorareg {k / r['cold_wall_s']:.0f}x faster COLD, {k / r['warm_wall_s']:.0f}x "
             f"WARM (target >= {KOHYA_TARGET}x), "
             f"sketch {k / r['sketch_wall_s']:.0f}x; at equal error (largest difference on the timed modules "
             f"{r['kohya_error_difference']:.1e})")


# --- merge --------------------------------------------------------------------------------------------------


# ``lorareg merge`` as the CLI runs it, with wall-clock timers around its steps (merge is mostly I/O: wall, not
# CPU): the modules it imports first (imported up front here, so that no step pays for them), then each step; the
# parents' hashes run on a thread beside the maths. Prints one JSON line of seconds.
MERGE_STEPS = r"""
import functools, json, os, sys, threading, time
started = time.perf_counter()
seconds, lock = {}, threading.Lock()
def timed(owner, name, label):
    real = getattr(owner, name)
    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapper)
import loraregistry.cli, loraregistry.ops.merge, loraregistry.verify, loraregistry.verify.context, loraregistry.schema
import loraregistry.writer, loraregistry.registry.hash_cache, loraregistry.verify.checks.tensors
from loraregistry.schema import AdapterMetadata, Parent  # the record's models load on first use
from loraregistry import adapter, verify, writer
from loraregistry.ops import io, merge, outfile, written_verify
from loraregistry.registry import hash_cache
seconds["imports"] = time.perf_counter() - started
steps = [
        (adapter.AdapterFile, "open", "open inputs (headers)"),
        (verify.context.Context, "build", "detect architecture"),
        (io, "load_canonical", "map inputs + module checks"),
        (merge, "merge_modules", "merge maths"),
        (io, "parent_record", "parents' sha256 + AutoV3 (thread)"),
        (io, "write_op_output", "write_op_output"),
        (writer, "adapter_layout", "  key layout"),
        (outfile.Layout, "header", "  header + record"),
        (outfile.OutputFile, "write_data", "  write the data (its AutoV3 on a thread meanwhile)"),
        (outfile.OutputFile, "data_sha256", "  then wait for the AutoV3"),
        (os, "fsync", "  fsync (the file on a thread, then the folder)"),
        (written_verify, "verify_written", "  verify the output (the whole-file sha256 and fsync on threads meanwhile)"),
        (outfile.OutputFile, "sha256", "  then wait for the whole-file sha256 and fsync"),
        (hash_cache, "remember", "  remember in the hash cache")]
for owner, name, label in steps:
    timed(owner, name, label)
code = loraregistry.cli.main(sys.argv[1:])
seconds["total in Python"] = time.perf_counter() - started
order = ["imports", *(label for _, _, label in steps), "total in Python"]
print(json.dumps({k: round(seconds[k], 3) for k in order if k in seconds}))
sys.exit(code)
"""


def bench_merge(folder: Path, limit: int | None, repeat: int) -> dict:
    """Two exact merges against ``cat A B > out``, alternated, each COLD and WARM: weights 0.8 and 0.5 (each
    parent's ``up`` scaled: arithmetic on half the bytes) and 1 and 1 (one common scale: every tensor byte streamed
    as stored)."""
    inputs = folder / "merge-inputs"
    inputs.mkdir()
    a = write_kohya(inputs / "a.safetensors", random_adapter(16, seed=1, limit=limit))
    b = write_kohya(inputs / "b.safetensors", random_adapter(8, seed=2, limit=limit))
    mb = (a.stat().st_size + b.stat().st_size) / 1e6
    _say(f"merge: 2 SDXL-shaped adapters (rank 16 + 8, alpha rank/2), {mb:.0f} MB of inputs")
    homes = registry_homes(folder, inputs)
    merges = {"weighted": [f"{a}:0.8", f"{b}:0.5"], "unweighted": [str(a), str(b)]}
    commands = [(f"{name} {mode}", [sys.executable, "-m", "loraregistry", "merge", *parents, "-o",
                                    str(folder / f"{name}.safetensors")], homes[mode])
                for name, parents in merges.items() for mode in MODES]
    commands.append(("cat", ["sh", "-c", f"cat '{a}' '{b}' > '{folder / 'cat.bin'}'"], None))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in commands}
    run(commands[-1][1])  # warm the page cache
    for i in range(repeat):
        for name, args, home in commands if i % 2 == 0 else commands[::-1]:
            result = run(args, home=home)
            runs[name].append(result)
            _say(f"  round {i + 1}/{repeat}: {name:16s} {result['wall']:6.2f} s wall  {result['cpu']:6.2f} s CPU  "
                 f"peak {result['peak'] / 1e6:5.0f} MB")
    steps = {}
    for mode in MODES:  # where an unweighted merge's time goes, one fresh process each
        process = run([sys.executable, "-c", MERGE_STEPS, "merge", *merges["unweighted"], "-o",
                       str(folder / "steps.safetensors")], stdout=folder / "steps.out", home=homes[mode])
        steps[mode] = json.loads((folder / "steps.out").read_text().strip().splitlines()[-1])
        steps[mode]["whole process"] = round(process["wall"], 3)
    python = min(run([sys.executable, "-c", "pass"])["wall"] for _ in range(3))
    return {"mb": mb, **{f"{name}_wall_s": _median(r, "wall") for name, r in runs.items()},
            **{f"{name}_cpu_s": _median(r, "cpu") for name, r in runs.items()}, "steps": steps,
            "python_start_s": python}


def print_merge(m: dict) -> None:
    _say(f"merge, {m['mb']:.0f} MB of inputs: cat {m['cat_wall_s']:.2f} s wall / {m['cat_cpu_s']:.2f} s CPU (medians)")
    for name, what in (("weighted", "A:0.8 B:0.5"), ("unweighted", "A B (bytes as stored)")):
        for mode, meaning in MODES.items():
            wall = m[f"{name} {mode}_wall_s"]
            _say(f"  {what}, {meaning}: lorareg {wall:.2f} s wall / {m[f'{name} {mode}_cpu_s']:.2f} s CPU "
                 f"({m['mb'] / wall:.0f} MB/s) -> {wall / m['cat_wall_s']:.1f}x cat (target <= {MERGE_TARGET}x)")
    _say(f"  where an unweighted merge's time goes, wall s (one fresh process each; Python itself starts in "
         f"{m['python_start_s']:.2f} s; whole process - total in Python = start + exit):")
    for mode, steps in m["steps"].items():
        _say(f"    {mode.upper()}: " + ", ".join(f"{name.strip()} {value:.2f}" for name, value in steps.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", "--arch", dest="arch", choices=sorted(ARCHES), default="sdxl",
                        help="the adapter to resize: SDXL (rank 64 -> 16) or FLUX.1 kohya (rank 32 -> 8)")
    parser.add_argument("--modules", type=int, default=None, help="about this many modules (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each whole process (medians reported)")
    parser.add_argument("--dense-shapes", type=int, default=None,
                        help="kohya-style dense SVD on this many distinct shapes (default: all; 0 skips it)")
    parser.add_argument("--no-merge", action="store_true", help="skip the merge benchmark")
    parser.add_argument("--only", choices=("resize", "merge"), help="run only this benchmark")
    parser.add_argument("--keep", type=Path, default=None, help="keep the files in this folder")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="lorareg-bench-", dir=args.keep))
    _say(f"threads: OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; load average "
         f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    try:
        resize = None if args.only == "merge" else bench_resize(folder, args.arch, args.modules, args.repeat,
                                                                 args.dense_shapes)
        merged = None if args.no_merge or args.only == "resize" else bench_merge(folder, args.modules, args.repeat)
        _say(f"--- results (load average {os.getloadavg()[0]:.1f} at the end) ---")
        if resize:
            print_resize(resize)
        if merged:
            print_merge(merged)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
