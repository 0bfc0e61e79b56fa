"""The end-to-end demo on embedded defaults: no downloads, no GPU, a few seconds.

It builds small adapters with real SD1.5 / SDXL module names and shapes (from the shipped fingerprints,
random seeded weights) in every supported key format and network type, inspects each, and writes then
re-reads a canonical metadata record, checking that the tensor bytes (AutoV3) did not move.
"""

from __future__ import annotations

import contextlib
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


def _repo_examples() -> Path:
    return Path(__file__).resolve().parents[1] / "examples"


def run_demo(folder: Path, *, say: Callable[[str], None] = print, train: bool = True) -> dict[str, Any]:
    """Build -> inspect -> verify -> train -> merge -> resize -> annotate -> registry -> push -> search -> pull
    -> scan the output folder in place (then ``lorareg serve`` shows it).

    Everything stays under ``folder``: the local registry, the Hub cache, training caches and the tiny base in
    ``folder/.work``, and the Hub is a Hub-compatible server on 127.0.0.1 for the length of the demo. Returns
    what was shown, for tests."""
    import os

    from .inspection import inspect_adapter
    from .meta import show_metadata, write_metadata
    from .verify import verify

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # The demo's own state (registry, Hub cache, training caches, the tiny base) goes to a hidden folder: nothing
    # outside ``folder`` is written, and `lorareg verify folder` sees only the adapters.
    work = folder / ".work"
    os.environ["LORAREG_HOME"] = str(work / "registry")
    os.environ["HF_HOME"] = str(work / "huggingface")  # read when huggingface_hub is imported (not yet)
    os.environ["MPLCONFIGDIR"] = str(work / "matplotlib")  # the loss plot's font cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "torchinductor")  # else torch makes one in the temp folder
    for quiet in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # keep the demo's own lines readable
        os.environ.setdefault(quiet, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    shown: dict[str, Any] = {}

    say(f"1. Building {len(DEMO_ADAPTERS)} adapters with real SD1.5/SDXL module shapes in {folder}/")
    (folder / "formats").mkdir(exist_ok=True)
    paths = [build_adapter(spec, folder / "formats", seed=i) for i, spec in enumerate(DEMO_ADAPTERS)]
    reports = [inspect_adapter(p) for p in paths]
    say("2. Inspecting them (header-level: no torch):")
    say(f"   {'file':36} {'format':11} {'network':8} {'modules':>7}  {'rank':6} {'alpha':6} components")
    for report in reports:
        ranks = ",".join(report["ranks"]) or "-"
        alphas = ",".join(report["alphas"]) or str(report["metadata"].get("network", {}).get("alpha", "-"))
        say(f"   {Path(report['path']).name:36} {report['format']:11} {report['network_type']:8} "
            f"{report['module_count']:>7}  {ranks:6} {alphas:6} {', '.join(report['components'])}")
    shown["reports"] = reports

    say("3. Verifying them against the shipped architecture fingerprints:")
    verdicts = [verify(p) for p in paths]
    for path, v in zip(paths, verdicts):
        codes = ", ".join(f.code for f in v.findings if f.severity != "info") or "-"
        say(f"   {'ok  ' if v.ok else 'FAIL'} {path.name:36} {v.detected_architecture or '?':10} warnings: {codes}")
    shown["verified_ok"] = all(v.ok for v in verdicts)

    if train:
        shown["train"] = _train_step(folder, say)

    say("5. Merging two SD1.5 adapters exactly (factors concatenated: rank 4 + 4 = 8), then resizing to rank 4:")
    from .ops.merge import MergeInput, merge
    from .ops.resize import ResizeSettings, resize

    merged_path = folder / "merged.safetensors"
    merged = merge([MergeInput(paths[0], 0.8), MergeInput(paths[4], 0.5)], merged_path, to="kohya")
    msum = merged.summary()
    say(f"   merged {paths[0].name}:0.8 + {paths[4].name}:0.5 -> {merged_path.name}: {msum['modules']} modules, "
        f"max relative error {msum['max_rel_error']:.1e}, verify {'ok' if msum['verify_ok'] else 'FAILED'}")
    small_path = folder / "merged-r4.safetensors"
    rsum = resize(merged_path, small_path, ResizeSettings(rank=4)).summary()
    say(f"   resized -> {small_path.name}: rank {rsum['rank_before']} -> {rsum['rank_after']}, "
        f"Frobenius norm kept {100 * rsum['retained_fro_mean']:.1f}% on average")
    shown["merge"], shown["resize"] = msum, rsum

    say(f"6. Writing the canonical metadata record into {merged_path.name}")
    before = inspect_adapter(merged_path)["hashes"]["autov3"]
    write_metadata(merged_path, updates={"name": "Demo shapes", "trigger_words": ["lrgshape"], "license": "cc0-1.0",
                                         "content_rating": "general", "recommended_weight": 0.8,
                                         "description": "Two demo adapters merged at 0.8 and 0.5."})
    info = show_metadata(merged_path)
    after = inspect_adapter(merged_path)["hashes"]["autov3"]
    meta = info["metadata"]
    say(f"   read back: name={meta['name']!r} trigger_words={meta['trigger_words']} base={meta['base']['architecture']}"
        f" rank={meta['network'].get('rank')} parents={len(meta.get('provenance', {}).get('parents', []))}")
    say(f"   AutoV3 (tensor bytes) before {before[:16]}... after {after[:16]}... "
        f"{'unchanged' if before == after else 'CHANGED'}")
    if before != after:
        raise RuntimeError("metadata edit changed tensor bytes")
    shown["metadata"], shown["autov3_unchanged"] = meta, before == after

    shown["share"] = _share_step(folder, merged_path, say)
    from .registry.demo_scan import scan_step

    shown["scan"] = scan_step(folder, say, step=8)
    say(f"Done. Everything is under {folder}/")
    return shown


def _train_step(folder: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from .train import TrainConfig, train

    config_path = _repo_examples() / "train-tiny.toml"
    say(f"4. Training {config_path.name} on the example dataset (tiny SD1 base built offline, CPU):")
    config = TrainConfig.load(config_path, {"output.dir": str(folder / "train-tiny"), "train.sample_every": 0,
                                            "train.sample_prompts": [],
                                            "data.cache_dir": str(folder / ".work" / "train-cache")})
    result = train(config)
    data = result.to_dict()
    say(f"   {data['steps']} steps in {data['seconds']:.0f} s, loss {data['loss_first']:.3f} -> {data['loss_last']:.3f}")
    for out in result.outputs:
        say(f"   wrote {out.path} (verified against {result.verify_base or 'its base'})")
    return data


@contextlib.contextmanager
def _hub_client_online() -> Iterator[None]:
    """The demo's Hub is on 127.0.0.1: let huggingface_hub talk to it even where HF_HUB_OFFLINE=1 keeps
    everything else (model downloads) off the network. Restored afterwards."""
    from .hub import prepare

    prepare("http://127.0.0.1")  # sets HF_HUB_DISABLE_XET before huggingface_hub is imported
    import huggingface_hub.constants as constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _share_step(folder: Path, adapter: Path, say: Callable[[str], None]) -> dict[str, Any]:
    with _hub_client_online():
        return _share(folder, adapter, say)


def _share(folder: Path, adapter: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from .hub import pull, push, search
    from .hub.devserver import HubServer
    from .registry import Registry

    say("7. Sharing: local registry, then push/search/pull through a Hub-compatible server on 127.0.0.1")
    with Registry.open() as registry:
        entry = registry.add(adapter)
        hits = registry.search(trigger="lrgshape")
        say(f"   registry: added {entry.sha256[:12]} ({entry.name}); search --trigger lrgshape -> "
            f"{len(hits)} hit(s) in {registry.root}")
        with HubServer() as hub:
            pushed = push(adapter, "demo/shapes-lora", endpoint=hub.endpoint)
            say(f"   push: {', '.join(pushed.files)} in one commit {pushed.commit[:12]}")
            found = search("shapes", hub=True, local=False, endpoint=hub.endpoint)
            say(f"   search the Hub for 'shapes' -> {', '.join(h.id for h in found) or 'nothing'}")
            pulled = pull("demo/shapes-lora", endpoint=hub.endpoint, registry=registry,
                          dest=folder / "pulled", cache_dir=str(folder / ".work" / "hub-cache"))
            say(f"   pull: {pulled.filename} at {pulled.commit[:12]}, sha256 checked, verify "
                f"{'ok' if pulled.report.ok else 'FAILED'}, registered as {pulled.entry.sha256[:12]}")
        same = Path(pulled.path).read_bytes() == adapter.read_bytes()
        say(f"   pulled bytes identical to the pushed ones: {same}")
    return {"pushed_files": pushed.files, "pulled_identical": same, "registry_hits": len(hits)}
