"""The end-to-end demo on embedded defaults: no downloads, no GPU, a few seconds.

It builds small adapters with real SD1.5 / SDXL module names and shapes (from the shipped fingerprints,
random seeded weights) in every supported key format and network type, inspects each, and writes then
re-reads a canonical metadata record, checking that the tensor bytes (AutoV3) did not move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .architectures.fingerprints import ModuleSpec, fingerprint, kohya_default_targets
from .canonical import CanonicalKey, ModuleKey
from .writer import write_adapter

RANK = 4
ALPHA = 2.0


@dataclass(frozen=True)
class DemoAdapter:
    file: str
    format: str
    dialect: dict[str, str]
    network: str  # lora / locon / loha / lokr / dora
    architecture: str


DEMO_ADAPTERS = (
    DemoAdapter("sd15_kohya_lora.safetensors", "kohya", {"te_prefix": "lora_te"}, "lora", "sd1"),
    DemoAdapter("sd15_kohya_locon.safetensors", "kohya", {"te_prefix": "lora_te"}, "locon", "sd1"),
    DemoAdapter("sd15_lycoris_loha.safetensors", "kohya", {"te_prefix": "lora_te"}, "loha", "sd1"),
    DemoAdapter("sd15_lycoris_lokr.safetensors", "kohya", {"te_prefix": "lora_te"}, "lokr", "sd1"),
    DemoAdapter("sd15_peft.safetensors", "peft", {}, "lora", "sd1"),
    DemoAdapter("sd15_peft_dora.safetensors", "peft", {}, "dora", "sd1"),
    DemoAdapter("sd15_diffusers_legacy.safetensors", "diffusers", {}, "lora", "sd1"),
    DemoAdapter("sd15_attn_procs.safetensors", "attn_procs", {}, "lora", "sd1"),
    DemoAdapter("sdxl_kohya_sgm.safetensors", "kohya",
                {"unet_names": "sgm", "unet_levels": "3", "te_prefix": "lora_te1"}, "lora", "sdxl-base"),
)


def _modules(arch: str, network: str) -> list[tuple[ModuleKey, ModuleSpec]]:
    """A small, real subset: one transformer block's attention and ff, plus the first CLIP layer."""
    fp = fingerprint(arch)
    block = "down_blocks.1.attentions.0.transformer_blocks.0."
    paths = [("unet", p) for p in kohya_default_targets(arch, "unet") if p.startswith(block)]
    paths += [("text_encoder", p) for p in kohya_default_targets(arch, "text_encoder")
              if p.startswith("text_model.encoder.layers.0.")]
    if network == "locon":
        paths += [("unet", "down_blocks.1.resnets.0.conv1"), ("unet", "down_blocks.1.resnets.0.conv2")]
    return [(ModuleKey(c, p), fp.lookup(c, p)) for c, p in paths]


def _split(n: int) -> int:
    """The largest factor of n not above its square root (LoKr's factorization)."""
    best = 1
    for f in range(1, int(n ** 0.5) + 1):
        if n % f == 0:
            best = f
    return best


def _factors(module: ModuleKey, spec: ModuleSpec, network: str, rng: np.random.Generator
             ) -> Iterator[tuple[str, np.ndarray]]:
    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    fin, fout = spec.in_features, spec.out_features
    kernel = tuple(spec.kernel) if spec.kind == "conv" and spec.kernel else None
    if network == "loha":
        yield from (("hada_w1_a", rand(fout, RANK)), ("hada_w1_b", rand(RANK, fin)),
                    ("hada_w2_a", rand(fout, RANK)), ("hada_w2_b", rand(RANK, fin)))
    elif network == "lokr":
        a, b = _split(fout), _split(fin)
        yield from (("lokr_w1", rand(a, b)), ("lokr_w2", rand(fout // a, fin // b)))
    else:
        yield "down", rand(RANK, fin, *kernel) if kernel else rand(RANK, fin)
        yield "up", rand(fout, RANK, 1, 1) if kernel else rand(fout, RANK)
        if network == "dora":
            yield "dora_scale", (1.0 + rand(fout)).astype(np.float16)
    if network != "dora":
        yield "alpha", np.array(ALPHA, dtype=np.float16)


def build_adapter(spec: DemoAdapter, folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tensors: dict[CanonicalKey, np.ndarray] = {}
    for module, mspec in _modules(spec.architecture, spec.network):
        for role, array in _factors(module, mspec, spec.network, rng):
            tensors[CanonicalKey(module.component, module.path, role)] = array
    if spec.format == "attn_procs":  # attention processors only exist for attention, and keep no alpha
        tensors = {ck: a for ck, a in tensors.items()
                   if ck.component == "unet" and ".attn" in ck.path and ck.role != "alpha"}
    path = folder / spec.file
    write_adapter(path, tensors, format=spec.format, dialect=spec.dialect)
    return path


def run_demo(folder: Path, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Build, inspect, annotate. Returns what was shown, for tests."""
    from .inspection import inspect_adapter
    from .meta import show_metadata, write_metadata

    folder.mkdir(parents=True, exist_ok=True)
    say(f"1. Building {len(DEMO_ADAPTERS)} adapters with real SD1.5/SDXL module shapes in {folder}/")
    reports = []
    for spec in DEMO_ADAPTERS:
        path = build_adapter(spec, folder)
        report = inspect_adapter(path)
        reports.append(report)
    say("2. Inspecting them (header-level: no torch):")
    say(f"   {'file':36} {'format':11} {'network':8} {'modules':>7}  {'rank':6} {'alpha':6} components")
    for report in reports:
        ranks = ",".join(report["ranks"]) or "-"
        alphas = ",".join(report["alphas"]) or str(report["metadata"].get("network", {}).get("alpha", "-"))
        say(f"   {Path(report['path']).name:36} {report['format']:11} {report['network_type']:8} "
            f"{report['module_count']:>7}  {ranks:6} {alphas:6} {', '.join(report['components'])}")
    target = folder / DEMO_ADAPTERS[0].file
    before = reports[0]["hashes"]["autov3"]
    say(f"3. Writing a canonical metadata record into {target.name}")
    write_metadata(target, updates={"name": "Demo shapes", "trigger_words": ["lrgshape"], "license": "cc0-1.0",
                                    "content_rating": "general", "base.architecture": "sd1",
                                    "recommended_weight": 0.8})
    info = show_metadata(target)
    after = inspect_adapter(target)["hashes"]["autov3"]
    meta = info["metadata"]
    say(f"   read back: name={meta['name']!r} trigger_words={meta['trigger_words']} base={meta['base']['architecture']}"
        f" rank={meta['network'].get('rank')} alpha={meta['network'].get('alpha')}")
    say(f"   header keys now: {', '.join(sorted(k for k in info['raw'] if not k.startswith('ss_')))} + "
        f"{sum(1 for k in info['raw'] if k.startswith('ss_'))} ss_* keys")
    say(f"   AutoV3 (tensor bytes) before {before[:16]}... after {after[:16]}... "
        f"{'unchanged' if before == after else 'CHANGED'}")
    if before != after:
        raise RuntimeError("metadata edit changed tensor bytes")
    return {"reports": reports, "metadata": meta, "autov3_unchanged": before == after}
