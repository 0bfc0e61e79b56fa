"""The files every loader oracle runs on, and how a real load is compared with a verdict.

Cases: every golden (tests/golden), files derived from them by one edit each (``DERIVED``: DoRA, foreign keys,
mixed formats, reshaped projections, Tucker LoCon, prefixed peft, the legacy attention-processor layout no
installed tool writes), the outputs of
``lorareg fix --for <loader>`` on the goldens it changes, and every known-bad container (tests/known_bad.py).

A real load is described as ``RealLoad``: whether the loader refused the file, the modules it applied (as
canonical ``ModuleKey``s, grouped by the adapter's own key parser) and the file keys it left unused. The
comparison is exact: outcome, applied modules and unused keys, no "partly satisfies anything".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "golden"
GOLDENS = sorted(p.stem for p in GOLDEN.glob("*.safetensors"))
MMDIT_GOLDEN = GOLDEN / "mmdit"  # SD3 / FLUX goldens (their tiny bases are built by tests/oracle_diffusers.py)
MMDIT_GOLDENS = sorted(p.stem for p in MMDIT_GOLDEN.glob("*.safetensors"))


def arch_of(name: str) -> str:
    for prefix in ("sdxl", "sd2", "sd3", "flux"):
        if name.startswith(prefix):
            return prefix
    return "sd1"


def read(name: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = GOLDEN / f"{name}.safetensors"
    with safe_open(str(path), "np") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def derive(folder: Path, name: str, source: str, edit) -> Path:
    from safetensors.numpy import save_file

    tensors, metadata = read(source)
    edit(tensors)
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


# --- edits: each names the defect it makes --------------------------------------------------------------------


def add_kohya_dora(t):
    """LyCORIS DoRA with the magnitude on the output side: (out, 1) for Linear, (out, 1, 1, 1) for Conv2d."""
    for key in [k for k in t if k.endswith(".lora_up.weight")]:
        shape = (t[key].shape[0],) + (1,) * (t[key].ndim - 1)
        t[key.replace("lora_up.weight", "dora_scale")] = np.ones(shape, t[key].dtype)


def add_bundled_embedding(t):
    t["bundle_emb.style.string_to_param.*"] = np.zeros((1, 32), np.float16)


def add_foreign_module(t):
    t["lora_unet_nonexistent_block.lora_down.weight"] = np.zeros((4, 8), np.float16)
    t["lora_unet_nonexistent_block.lora_up.weight"] = np.zeros((8, 4), np.float16)


def add_foreign_suffix(t):
    t["lora_unet_down_blocks_0_attentions_0_proj_in.weird"] = np.zeros((1,), np.float16)


def mix_in_peft_unet(t):
    peft, _ = read("sd1_diffusers_unet_te")
    for key in [k for k in t if k.startswith("lora_unet")]:
        del t[key]
    t.update({k: v for k, v in peft.items() if k.startswith("unet.")})


def unet_prefix_for_peft(t):
    for key in list(t):
        t["unet." + key.removeprefix("base_model.model.")] = t.pop(key)


def unet_prefix(t):
    for key in list(t):
        t["unet." + key] = t.pop(key)


def flatten_projections(t):
    for key in list(t):
        if ("proj_in" in key or "proj_out" in key) and t[key].ndim == 4:
            t[key] = t[key].reshape(t[key].shape[0], t[key].shape[1])


def tucker_conv_in(t):
    """conv_in as a LoCon Tucker module: 1x1 down, 3x3 mid (seeded, non-zero: a loader that applies it changes
    the weight)."""
    rng = np.random.default_rng(7)
    key = "lora_unet_conv_in.lora_down.weight"
    r, cin = t[key].shape[:2]
    t[key] = (rng.standard_normal((r, cin, 1, 1)) * 0.1).astype(t[key].dtype)
    t["lora_unet_conv_in.lora_mid.weight"] = (rng.standard_normal((r, r, 3, 3)) * 0.1).astype(t[key].dtype)


def to_attn_procs(t):
    """The UNet of a diffusers training-script file (attention-only ``.lora.down``/``.lora.up``) in the legacy
    attention-processor layout diffusers <= 0.16 ``save_attn_procs`` wrote (no writer of it is installable now):
    ``<attention>.processor.to_q_lora.down.weight``, unprefixed; the text encoder is dropped."""
    for key in list(t):
        value = t.pop(key)
        if key.startswith("unet."):
            path, _, factor = key.removeprefix("unet.").rpartition(".lora.")
            attention, _, projection = path.rpartition(".")
            if projection == "0":  # to_out.0
                attention, _, projection = attention.rpartition(".")
            t[f"{attention}.processor.{projection}_lora.{factor}"] = value


def to_attn_procs_unet_prefix(t):
    """The 0.17-0.20 ``LoraLoaderMixin`` spelling: the same keys under ``unet.``."""
    to_attn_procs(t)
    unet_prefix(t)


def strip_peft_prefix(t):
    for key in list(t):
        t[key.removeprefix("base_model.model.")] = t.pop(key)


DERIVED = {
    "sd1_kohya_dora": ("sd1_kohya", add_kohya_dora),
    "sd1_kohya_bundled_embedding": ("sd1_kohya", add_bundled_embedding),
    "sd1_kohya_foreign_module": ("sd1_kohya", add_foreign_module),
    "sd1_kohya_foreign_suffix": ("sd1_kohya", add_foreign_suffix),
    "sd1_mixed_kohya_te_peft_unet": ("sd1_kohya", mix_in_peft_unet),
    "sd1_peft_dora_unet_prefix": ("sd1_peft_dora", unet_prefix_for_peft),
    "sd1_peft_bare": ("sd1_peft_prefixed", strip_peft_prefix),
    "sd1_attn_procs": ("sd1_diffusers_train_script", to_attn_procs),
    "sd1_attn_procs_unet_prefix": ("sd1_diffusers_train_script", to_attn_procs_unet_prefix),
    "sd2_kohya_flat_projections": ("sd2_kohya_conv_proj", flatten_projections),
    "sd1_kohya_flat_projections": ("sd1_kohya", flatten_projections),
    "sd1_locon_tucker_conv_in": ("sd1_lycoris_locon", tucker_conv_in),
}


def path_of(name: str, folder: Path) -> Path:
    """A golden's path, or the derived file written into ``folder``."""
    if name in DERIVED:
        source, edit = DERIVED[name]
        return derive(folder, name, source, edit)
    if name in MMDIT_GOLDENS:
        return MMDIT_GOLDEN / f"{name}.safetensors"
    return GOLDEN / f"{name}.safetensors"


def fixed(name: str, target: str, folder: Path, base: Path) -> Path | None:
    """``lorareg fix --for target --base base`` applied to a case; None when the file needs nothing."""
    from loraregistry.fix import fix

    out = folder / f"{name}.fixed-{target}.safetensors"
    result = fix(path_of(name, folder), out, targets=target, base=str(base))
    return out if result.output is not None else None


# --- comparing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealLoad:
    refused: str | None  # the exception the loader raised, if any
    applied: frozenset  # canonical ModuleKeys applied
    unused_keys: frozenset[str]  # file keys that changed nothing
    modules: frozenset  # every module of the file

    @property
    def outcome(self) -> str:
        if self.refused or not self.applied:
            return "fails"
        return "loads_partly" if self.unused_keys or self.applied != self.modules else "loads"


def modules_of(path: Path) -> dict[str, object]:
    """file key -> canonical ModuleKey, by the adapter's own key parser (grouping only: which keys form one
    module); keys of no module are absent."""
    from loraregistry.adapter import AdapterFile

    adapter = AdapterFile.open(path)
    return {key: module for module, info in adapter.modules.items() for key in info.keys.values()}


def assert_agrees(verdict, real: RealLoad, *, keys: bool = True) -> None:
    """The verdict says exactly what the real loader did: outcome, modules applied, keys left unused."""
    assert verdict.outcome == real.outcome, (verdict.outcome, real.outcome, real.refused,
                                             [f.message for f in verdict.findings])
    assert verdict.applied == real.applied, (sorted(map(str, verdict.applied ^ real.applied))[:10])
    if keys:
        assert verdict.unused_keys == real.unused_keys, sorted(verdict.unused_keys ^ real.unused_keys)[:10]
