#!/usr/bin/env python
"""Training step time of ``lorareg train`` against a bare diffusers + peft loop, same model and batch, same run.

    python benchmarks/train.py                                   # CPU, tiny SD1 (32 px): overhead ratio, target <= 1.2x
    python benchmarks/train.py --arch tiny-sdxl --resolution 64
    python benchmarks/train.py --device cuda --arch sd15         # full-size SD1.5, random weights, 512 px
    python benchmarks/train.py --device cuda --arch sdxl         # full-size SDXL, random weights, 1024 px
    python benchmarks/train.py --busy                            # `lorareg train` 60 tiny steps next to a busy core
    python benchmarks/train.py --family flux                     # CPU, tiny FLUX.1-dev transformer (sd35: SD3.5)
    python benchmarks/train.py --family flux --device cuda       # FLUX.1-dev at full size, bf16, 1024 px
    python benchmarks/train.py --family sd35 --device cuda --arch sd35-medium --gradient-checkpointing --fp8-base

The bare loop is what the diffusers LoRA example scripts do per step (``unet.add_adapter(LoraConfig)``, AdamW,
autocast, ``loss.backward()``, clip, step, ``loss.item()`` for logging), given the same cached latents and text
embeddings that lorareg trains from, so the ratio is lorareg's overhead: accelerate, batch assembly, the step
function, loss CSV and progress. Both sides use the same seeds, rank, targets, precision and batch, and run
alternately (best of ``--rounds``). Full-size models are built from the shipped public configs with random
weights: nothing is downloaded. On CUDA it also prints peak memory (targets: >= 1.0x throughput, <= 1.0x memory).
FLUX.1 / SD3.5 (``--family flux|sd35``, ``train_flow.py``) train the transformer alone from random cached latents
and embeddings, the same code on CPU (tiny) and CUDA (full size, bf16 by default). Never run in CI.
"""

from __future__ import annotations

import os
import sys

# this folder holds benchmarks/inspect.py, which would shadow the stdlib module torch imports: put the repo first
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(_HERE).parent

def _sibling(name: str):
    """A module of this folder, loaded by path (the folder itself must stay off sys.path: see above)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


train_flow = _sibling("train_flow")
FLOW_ARCHES = train_flow.FLOW_ARCHES

ARCHES = {  # name -> (tiny arch or shipped config name, default resolution); FLUX / SD3.5: train_flow.FLOW_ARCHES
    "tiny-sd1": ("sd1", 32), "tiny-sdxl": ("sdxl", 32), "sd15": ("sd1", 512), "sdxl": ("sdxl-base", 1024),
}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# --family -> (--arch on the CPU, --arch on CUDA)
FAMILY_DEFAULTS = {"sd1": ("tiny-sd1", "sd15"), "sdxl": ("tiny-sdxl", "sdxl"), **train_flow.FAMILY_ARCHES}
# The SD / SDXL VAE (public config values); SDXL only changes the scaling factor.
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  layers_per_block=2, norm_num_groups=32, sample_size=512)


def full_size_pipeline(arch: str, device: str):
    """SD1.5 or SDXL base at full size from the shipped configs, random weights, built on ``device``."""
    import json

    import diffusers
    import torch
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler

    from loraregistry.train.tiny import tiny_tokenizer

    spec = json.loads((ROOT / "loraregistry" / "architectures" / "configs" / f"{arch}.json").read_text())
    parts = {}
    torch.manual_seed(0)
    with torch.device(device):
        for name, comp in spec["components"].items():
            if comp["library"] == "diffusers":
                parts[name] = getattr(diffusers, comp["class"]).from_config(comp["config"])
            else:
                parts[name] = getattr(transformers, comp["class"])(transformers.CLIPTextConfig(**comp["config"]))
        parts["vae"] = AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025 if arch == "sdxl-base" else 0.18215)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    if arch == "sdxl-base":
        return diffusers.StableDiffusionXLPipeline(tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(),
                                                   scheduler=scheduler, **parts)
    return diffusers.StableDiffusionPipeline(tokenizer=tiny_tokenizer(), scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False, **parts)


def make_pipeline(args):
    from loraregistry.train.tiny import tiny_pipeline

    arch = ARCHES[args.arch][0]
    return tiny_pipeline(arch) if args.arch.startswith("tiny") else full_size_pipeline(arch, args.device)


def make_dataset(folder: Path, count: int, side: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{n:02d}.png")
        (folder / f"{n:02d}.txt").write_text(f"lrgshape, sample {n}")
    return folder


def make_config(args, work: Path):
    from loraregistry.train.config import from_dict

    return from_dict({
        "model": {"base": f"benchmark:{args.arch}"},
        "data": {"folder": str(args.data_dir), "resolution": args.resolution, "buckets": False,
                 "cache_dir": str(work / "cache")},
        "network": {"rank": args.rank, "alpha": float(args.rank), "unet_targets": TARGETS},
        "optim": {"lr": 1e-4, "scheduler": "constant", "max_grad_norm": 1.0},
        "train": {"steps": args.warmup + args.steps, "batch_size": args.batch, "seed": 0,
                  "mixed_precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing},
        "output": {"dir": str(work / "out"), "add_to_registry": False},
    })


class Memory:
    """Peak CUDA memory of one side's steps (None on the CPU)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def reset(self) -> None:
        reset_memory(self.device)

    def peak(self) -> float | None:
        return peak_memory(self.device)


def peak_memory(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def reset_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_lorareg(args, work: Path) -> tuple[list[float], float | None]:
    """Steps through ``Trainer.fit`` exactly as ``lorareg train`` runs them."""
    from loraregistry.train import Trainer, TrainingSet, build_components, scan_dataset
    from loraregistry.train.cache import TensorCache
    from loraregistry.train.run import _cast_frozen_weights, make_accelerator

    config = make_config(args, work)
    accelerator = make_accelerator(config)
    parts = build_components(config, pipeline=make_pipeline(args))
    parts.pipeline.to(accelerator.device)
    data = TrainingSet(scan_dataset(config.data), parts, config, TensorCache(config.data.cache_dir))
    data.prepare()
    args.batch_tensors = data.batch(0, 0, list(range(args.batch)))  # the bare loop trains on the same tensors
    _cast_frozen_weights(parts, config)
    reset_memory(args.device)
    fit = Trainer(config, parts, data, run_dir=work / "run", accelerator=accelerator, quiet=True).fit()
    memory = peak_memory(args.device)
    accelerator.free_memory()  # accelerate keeps the prepared UNet: it would count in the bare side's peak
    del parts, data, fit.losses, accelerator
    return fit.step_seconds[args.warmup:], memory


def run_bare(args, work: Path) -> tuple[list[float], float | None]:
    """The diffusers example-script step on the same pipeline, rank, targets and cached tensors."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    pipe = make_pipeline(args)  # same seeds, so the same weights lorareg's side trained
    device = torch.device(args.device)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    batch = args.batch_tensors
    pipe.to(device)
    unet, vae = pipe.unet, pipe.vae
    unet.requires_grad_(False)
    if args.precision != "no":
        unet.to(dtype=dtype)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights=True, target_modules=TARGETS))
    if args.precision != "no":
        cast_training_params(unet, dtype=torch.float32)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    lr_scheduler = get_scheduler("constant", optimizer)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(0)
    mean, std = batch.latent_mean.to(device), batch.latent_std.to(device)
    hidden = batch.text.hidden.to(device)
    cond = {}
    if batch.text.pooled is not None:
        cond = {"added_cond_kwargs": {"text_embeds": batch.text.pooled.to(device),
                                      "time_ids": batch.time_ids.to(device)}}
    unet.train()
    times = []
    reset_memory(args.device)
    for _ in range(args.warmup + args.steps):
        tick = time.perf_counter()
        latents = (mean + std * torch.randn(mean.shape, generator=gen).to(device)) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=gen).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "no"):
            pred = unet(noisy, t, hidden, **cond).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the example scripts log it every step (and it syncs the device)
        times.append(time.perf_counter() - tick)
    memory = peak_memory(args.device)
    del pipe, unet, optimizer, params
    return times[args.warmup:], memory


def _train_seconds(work: Path, env: dict[str, str], steps: int) -> float:
    """Wall time of one whole ``lorareg train`` process on the tiny example config."""
    import json
    import subprocess

    cmd = [sys.executable, "-c", "import sys; from loraregistry.cli import main; sys.exit(main())", "train", "--config", str(ROOT / "examples" / "train-tiny.toml"),
           "--steps", str(steps), "--output", str(work), "--set", "output.add_to_registry=false",
           "--set", f"data.cache_dir=\"{work / 'cache'}\"", "--json", "-q"]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - tick
    if proc.returncode != 0:
        raise SystemExit(f"lorareg train failed: {proc.stderr[-2000:]}")
    json.loads(proc.stdout)  # the command finished and reported
    return wall


def busy_comparison(args) -> int:
    """60 tiny steps of ``lorareg train`` while another process keeps one core busy: lorareg's thread choice
    against torch's default (one thread per core, OpenMP's default spin-then-sleep waiting), alternately."""
    import subprocess

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                             "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    base["HF_HUB_OFFLINE"] = "1"
    cores = os.cpu_count() or 1
    variants = {
        "lorareg's choice (no OMP_NUM_THREADS)": dict(base),
        f"torch default ({cores} threads, OpenMP default waiting)": dict(base, OMP_NUM_THREADS=str(cores),
                                                                          OMP_WAIT_POLICY=""),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        time.sleep(1.0)  # let the spinner take its core
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                for i, (name, env) in enumerate(variants.items()):
                    times[name].append(_train_seconds(Path(tmp) / f"{i}-{round_}", env, args.steps or 60))
    finally:
        spinner.kill()
    print(f"lorareg train, tiny SD1, {args.steps or 60} steps, whole process, one other CPU-bound process "
          f"running, {cores} cores; best of {args.rounds}:")
    for name, values in times.items():
        print(f"  {name:55s} {min(values):7.1f} s   (all: {', '.join(f'{v:.1f}' for v in values)})")
    ours, default = (min(v) for v in times.values())
    print(f"  torch default / lorareg = {default / ours:.1f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--family", default="sd1", choices=["sd1", "sdxl", "flux", "sd35"],
                        help="picks --arch: tiny on the CPU, full size on CUDA")
    parser.add_argument("--arch", default=None, choices=sorted(ARCHES) + sorted(FLOW_ARCHES))
    parser.add_argument("--fp8-base", action="store_true", help="FLUX/SD3.5: frozen transformer weights in float8")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--busy", action="store_true",
                        help="time `lorareg train` next to a busy core: lorareg's thread choice vs torch's default")
    args = parser.parse_args(argv)
    if args.busy:
        return busy_comparison(args)
    cuda = args.device == "cuda"
    args.arch = args.arch or FAMILY_DEFAULTS[args.family][cuda]
    flow = args.arch in FLOW_ARCHES
    args.precision = args.precision or ("bf16" if cuda else "no")
    if args.fp8_base and not (flow and args.precision != "no"):
        parser.error("--fp8-base needs a FLUX/SD3.5 --arch and --precision bf16 (float8 weights compute in bf16)")
    args.resolution = args.resolution or (FLOW_ARCHES[args.arch][2] if flow else ARCHES[args.arch][1])
    args.batch = args.batch or (1 if args.arch == "sdxl" or (flow and cuda) else 2 if cuda else 4)
    args.steps = args.steps or (20 if cuda else 30)
    args.precision = args.precision or ("bf16" if cuda else "no")

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if cuda and not torch.cuda.is_available():
        print("benchmarks/train.py: --device cuda but torch finds no CUDA device; run it on a GPU machine or use "
              "--device cpu", file=sys.stderr)
        return 2
    sides = (("lorareg", train_flow.run_lorareg), ("bare", train_flow.run_bare)) if flow else \
        (("lorareg", lambda a, w, m: run_lorareg(a, w)), ("bare", lambda a, w, m: run_bare(a, w)))
    memory_probe = Memory(args.device)
    results: dict[str, list[float]] = {"lorareg": [], "bare": []}
    memory: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not flow:
            args.data_dir = make_dataset(work / "data", args.batch, args.resolution)
        for round_ in range(args.rounds):
            for name, fn in sides:
                times, mem = fn(args, work / f"{name}{round_}", memory_probe)
                results[name].append(statistics.median(times))
                memory[name] = mem if memory.get(name) is None else max(memory[name], mem)
                reset_memory(args.device)
    ours, bare = min(results["lorareg"]), min(results["bare"])
    where = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} thread(s)"
    print(f"{args.arch} {args.resolution}px batch {args.batch} rank {args.rank} precision {args.precision} "
          f"grad-ckpt {args.gradient_checkpointing}{' fp8-base' if args.fp8_base else ''} on {where}; median "
          f"step, best of {args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up) per side")
    print(f"  lorareg Trainer.fit : {ours * 1000:8.1f} ms/step  {1 / ours:7.2f} it/s"
          + (f"  peak {memory['lorareg']:.2f} GiB" if cuda else ""))
    print(f"  bare diffusers+peft : {bare * 1000:8.1f} ms/step  {1 / bare:7.2f} it/s"
          + (f"  peak {memory['bare']:.2f} GiB" if cuda else ""))
    memory_ratio = f"; memory ratio {memory['lorareg'] / memory['bare']:.3f}x" if cuda else ""
    print(f"  step time ratio lorareg/bare = {ours / bare:.3f}x (target <= 1.2x on CPU tiny; throughput "
          f"{bare / ours:.3f}x of bare){memory_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
