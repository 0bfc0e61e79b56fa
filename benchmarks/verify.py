"""verify speed, measured in one run: against a diffusers load check, over many files, the tensor scan, a header at
the entry cap.

    .venv/bin/python benchmarks/verify.py [--rank 16] [--files 100] [--repeat 5] [--scan-rank 64] [--cap 100000]

Writes an SD1 kohya LoRA (every default target: 192 UNet + 72 text-encoder modules, fp16, rank ``--rank``) and
times, as whole processes (Python start-up and imports included; the package's bytecode compiled first, as an
installed package has it):

* ``lorareg verify --no-tensors --json FILE`` (header + fingerprint) and ``lorareg verify --json FILE`` (+ tensor
  scan), best of ``--repeat``, with the peak RSS of each, and whether the scan imported numpy (small files: no,
  the scan's pass one runs on the standard library; its in-process speed is printed next to numpy's);
* the reference, once: a process that builds the SD1 UNet and CLIP text encoder from
  ``loraregistry/architectures/configs/sd1.json`` on the meta device, puts them in a ``StableDiffusionPipeline``
  and calls ``load_lora_weights`` on the same file (the cheapest way to learn from diffusers whether an adapter
  loads), checking that all 264 modules were patched;
* ``lorareg verify`` over ``--files`` such files in one call (files/s, with and without the scan);
* the tensor scan in-process on a warm SDXL file (every default target, rank ``--scan-rank``), in GB/s, next
  to the exact float pass (float32 blocks, sums of squares, Grams) the scan now runs only where its bound asks;
* ``verify(tensors=False)`` in-process on a header of ``--cap`` entries (lorareg's cap) whose kohya keys name no
  module: the cost per unknown key.

Prints the ratios against the targets (<= 90 ms, >= 50x the reference, <= 60 MB; <= 150 ms with the scan; >= 300
files/s; >= 1 GB/s). Nothing asserts a time; the machine may be shared: run it a few times and compare the spread.
"""

from __future__ import annotations

import os
import sys

# benchmarks/inspect.py shadows the stdlib module `inspect`: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from loraregistry.architectures import fingerprint, kohya_default_targets  # noqa: E402
from loraregistry.safetensors_io import write_safetensors  # noqa: E402

KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
CLEAN_METADATA = {"modelspec.trigger_phrase": "sks", "modelspec.license": "openrail++"}

# The reference process: build the base from configs, load the LoRA with diffusers, count the patched modules.
REFERENCE = r"""
import json, sys, time
start = time.perf_counter()
import diffusers
from loraregistry.architectures.build import build_architecture
imported = time.perf_counter()
parts = build_architecture("sd1", device="meta")
built = time.perf_counter()
pipe = diffusers.StableDiffusionPipeline(vae=None, text_encoder=parts["text_encoder"], tokenizer=None,
                                         unet=parts["unet"], scheduler=diffusers.DDPMScheduler(), safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False)
pipe.load_lora_weights(sys.argv[1], adapter_name="bench")
loaded = time.perf_counter()
patched = sum(1 for c in ("unet", "text_encoder") for _, m in getattr(pipe, c).named_modules()
              if hasattr(m, "lora_A") and "bench" in m.lora_A)
print(json.dumps({"patched": patched, "import_s": imported - start, "build_s": built - imported,
                  "load_s": loaded - built}))
"""


def write_kohya(path: Path, arch: str, rank: int, seed: int) -> Path:
    """A kohya LoRA over every default target of ``arch``, small random fp16 factors, alpha = rank / 2."""
    rng = np.random.default_rng(seed)
    fp = fingerprint(arch)
    tensors: dict[str, np.ndarray] = {}
    for component in fp.components:
        if component not in KOHYA_PREFIX:
            continue
        for module_path in kohya_default_targets(arch, component):
            spec = fp.lookup(component, module_path)
            name = f"{KOHYA_PREFIX[component]}_{module_path.replace('.', '_')}"
            kernel = tuple(spec.kernel or ())
            tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, spec.in_features, *kernel)) * 0.05
                                                   ).astype(np.float16)
            tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((spec.out_features, rank, *((1, 1) if kernel
                                                 else ()))) * 0.01).astype(np.float16)
            tensors[f"{name}.alpha"] = np.array(rank / 2, np.float16)
    write_safetensors(path, tensors, {**CLEAN_METADATA, "ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)})
    return path


def _lorareg() -> list[str]:
    script = Path(sys.executable).with_name("lorareg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "loraregistry"]


ENV = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run(cmd: list[str]) -> float:
    """Wall seconds of one process; a failing command stops the benchmark (exit 1, a verdict, is no failure)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def best(cmd: list[str], repeat: int) -> tuple[float, float]:
    times = [run(cmd) for _ in range(repeat)]
    return min(times), max(times)


# The CLI's entry point, reporting its peak resident memory (VmHWM) at exit. (A child's ru_maxrss can carry the
# parent's peak over from before exec: this benchmark's own numpy would count.)
PEAK = r"""
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("PEAK_KB " + line.split()[1] + "\n")
atexit.register(_peak)
from loraregistry.cli import main
sys.exit(main(sys.argv[1:]))
"""


def peak_rss_mb(args: list[str]) -> float | None:
    """Peak RSS of ``lorareg ARGS`` in MB (None where /proc is missing)."""
    done = subprocess.run([sys.executable, "-c", PEAK, *args], env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KB ")]
    return int(lines[-1].split()[1]) / 1024 if lines else None


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def compile_bytecode() -> None:
    """Write the package's .pyc files, as an install does (PYTHONDONTWRITEBYTECODE would leave every run compiling)."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "loraregistry")], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def write_cap_header(path: Path, entries: int) -> Path:
    """A valid file of ``entries`` tiny tensors whose kohya keys name no module (three spellings a hostile or
    broken file may use), written directly: one F16 value each, laid out back to back."""
    styles = ("lora_unet_foo_bar_{i}_baz_qux.lora_down.weight",
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q_x_{i}_more_words.lora_up.weight",
              "lora_te_text_model_encoder_layers_{i}_self_attn_q_proj_zz.alpha")
    header = {styles[i % 3].format(i=i): {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]}
              for i in range(entries)}
    from loraregistry.safetensors_io import encode_header

    path.write_bytes(encode_header(header, None) + bytes(2 * entries))
    return path


def cap_speed(path: Path, entries: int) -> float:
    """Seconds for an in-process header-level verify of the cap-sized header (imports and fingerprints warm)."""
    from loraregistry.verify import verify

    start = time.perf_counter()
    report = verify(path, tensors=False)
    elapsed = time.perf_counter() - start
    if not report.findings:
        raise SystemExit("the cap-sized header got no finding: its keys should be unknown")
    return elapsed


def reference(path: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", REFERENCE, str(path)], env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the diffusers reference failed: {done.stderr[-3000:]}")
    phases = json.loads(done.stdout.strip().splitlines()[-1])
    return elapsed, phases


def scan_speed(path: Path, repeat: int) -> tuple[float, float, int]:
    """(scan GB/s, exact float pass GB/s, bytes), best of ``repeat`` after a warm-up read."""
    from loraregistry.adapter import AdapterFile
    from loraregistry.verify import health
    from loraregistry.verify.shapes import factor_problems

    adapter = AdapterFile.open(path)
    deltas = {k: factor_problems(m)[0] for k, m in adapter.modules.items()}
    size = adapter.header.data_size

    def scan() -> None:
        result = health.scan(adapter.path, adapter.header, adapter.modules, deltas)
        [m.exceeds(health.EXTREME_DELTA_RMS) for m in result.modules.values()]

    def exact() -> None:
        result = health.scan(adapter.path, adapter.header, adapter.modules, deltas)
        [s.sumsq for s in result.tensors.values()]  # one float pass per tensor, Grams included
        [m.delta_norm for m in result.modules.values()]

    scan()  # warm: page cache and imports
    timings = {}
    for name, fn in (("scan", scan), ("exact", exact)):
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        timings[name] = min(runs)
    return size / timings["scan"] / 1e9, size / timings["exact"] / 1e9, size


# Whether a whole-process `verify --json` of the file loaded numpy (the scan's pass one runs without it on small files).
NUMPY_LOADED = r"""
import sys
from loraregistry.cli import main
main(sys.argv[1:])
sys.stderr.write("NUMPY_LOADED " + str("numpy" in sys.modules) + "\n")
"""


def numpy_loaded(args: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-c", NUMPY_LOADED, *args], env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    return any(line == "NUMPY_LOADED True" for line in done.stderr.splitlines())


def stdlib_pass_one_speed(path: Path, repeat: int) -> tuple[float, float]:
    """(stdlib pass one GB/s, numpy pass one GB/s) on ``path``, warm, best of ``repeat`` (numpy already loaded here:
    its import is what the whole-process line saves)."""
    from loraregistry.safetensors_io import read_header
    from loraregistry.verify import health

    header = read_header(path)
    speeds = []
    for stdlib in (True, False):
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            health.scan(path, header, {}, {}, stdlib=stdlib)
            runs.append(time.perf_counter() - start)
        speeds.append(header.data_size / min(runs) / 1e9)
    return speeds[0], speeds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scan-rank", type=int, default=64)
    parser.add_argument("--cap", type=int, default=100_000, help="entries of the unknown-key header (0: skip)")
    args = parser.parse_args()
    lorareg = _lorareg()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="lorareg-bench-") as tmp:
        folder = Path(tmp)
        one = write_kohya(folder / "sd1.safetensors", "sd1", args.rank, seed=0)
        size_mb = one.stat().st_size / 1e6
        run([*lorareg, "verify", str(one)])  # warm the page cache
        header_s, header_max = best([*lorareg, "verify", "--no-tensors", "--json", str(one)], args.repeat)
        full_s, full_max = best([*lorareg, "verify", "--json", str(one)], args.repeat)
        header_rss = peak_rss_mb(["verify", "--no-tensors", "--json", str(one)])
        full_rss = peak_rss_mb(["verify", "--json", str(one)])
        full_numpy = numpy_loaded(["verify", "--json", str(one)])
        stdlib_gbs, numpy_gbs = stdlib_pass_one_speed(one, args.repeat)
        ref_s, phases = reference(one)
        if phases["patched"] != 264:
            raise SystemExit(f"the reference patched {phases['patched']} of 264 modules")

        many = folder / "many"
        many.mkdir()
        blob = one.read_bytes()
        for i in range(args.files):  # same tensors; distinct files on disk
            (many / f"a{i:03d}.safetensors").write_bytes(blob)
        run([*lorareg, "verify", "-q", str(many)])
        many_header, _ = best([*lorareg, "verify", "-q", "--no-tensors", str(many)], max(2, args.repeat // 2))
        many_full, _ = best([*lorareg, "verify", "-q", str(many)], max(2, args.repeat // 2))
        shutil.rmtree(many)

        big = write_kohya(folder / "sdxl.safetensors", "sdxl-base", args.scan_rank, seed=1)
        scan_gbs, exact_gbs, scan_bytes = scan_speed(big, args.repeat)
        cap_s = cap_speed(write_cap_header(folder / "cap.safetensors", args.cap), args.cap) if args.cap else None

    print(f"adapter: SD1 kohya, 264 modules, rank {args.rank}, {size_mb:.1f} MB; {os.cpu_count()} CPUs")
    print(f"lorareg verify --no-tensors --json (whole process): {header_s * 1e3:6.0f} ms  (max {header_max * 1e3:.0f};"
          f" target <= 90 ms), peak RSS {_mb(header_rss)} MB (target <= 60)")
    print(f"lorareg verify --json, tensor scan (whole process) : {full_s * 1e3:6.0f} ms  (max {full_max * 1e3:.0f};"
          f" target <= 150 ms), peak RSS {_mb(full_rss)} MB, numpy imported: {'yes' if full_numpy else 'no'}")
    print(f"  its pass one on the standard library     : {stdlib_gbs:7.2f} GB/s in-process (numpy's: "
          f"{numpy_gbs:.2f} GB/s, once its import is paid)")
    print(f"diffusers load check on a meta-device base (whole process): {ref_s:6.2f} s  (import {phases['import_s']:.1f}"
          f" s, build from config {phases['build_s']:.1f} s, load_lora_weights {phases['load_s']:.1f} s; "
          f"{phases['patched']} modules patched)")
    print(f"  ratio, header + fingerprint               : {ref_s / header_s:7.0f}x faster  (target >= 50x)")
    print(f"  ratio, with the tensor scan               : {ref_s / full_s:7.0f}x faster")
    print(f"{args.files} files in one call, --no-tensors       : {args.files / many_header:7.0f} files/s "
          f"({many_header:.2f} s; target >= 300/s)")
    print(f"{args.files} files in one call, tensor scan        : {args.files / many_full:7.0f} files/s "
          f"({many_full:.2f} s, {args.files * len(blob) / many_full / 1e9:.2f} GB/s)")
    print(f"tensor scan, warm (SDXL rank {args.scan_rank}, {scan_bytes / 1e6:.0f} MB): {scan_gbs:7.2f} GB/s "
          f"(target >= 1); exact float pass {exact_gbs:.2f} GB/s ({scan_gbs / exact_gbs:.1f}x)")
    if cap_s is not None:
        print(f"header of {args.cap:,} unknown kohya keys, verify in-process: {cap_s:6.2f} s "
              f"({cap_s / args.cap * 1e6:.0f} us per key)")


if __name__ == "__main__":
    main()
