"""Random numpy adapters with REAL module paths and shapes, written in kohya naming, plus a library of
known-bad adapters, one per defect, named after it.

Shapes come from the shipped fingerprints (``kohya_default_targets``), so detection and compatibility are
tested against the real SD1/SD2/SDXL dimensions (768/1024/2048), which the tiny torch models do not
have. Keys are written here, not by ``loraregistry.formats``: ``lora_unet_`` / ``lora_te_`` /
``lora_te1_`` / ``lora_te2_`` + the diffusers path with ``.`` -> ``_``, then ``.lora_down.weight``,
``.lora_up.weight``, ``.alpha``. Values are small (a trained LoRA's delta RMS is ~1e-3), seeded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loraregistry.architectures import ModuleSpec, fingerprint, kohya_default_targets
from loraregistry.safetensors_io import write_safetensors

# Per architecture: component -> kohya prefix.
KOHYA_PREFIXES: dict[str, dict[str, str]] = {
    "sd1": {"unet": "lora_unet", "text_encoder": "lora_te"},
    "sd2": {"unet": "lora_unet", "text_encoder": "lora_te"},
    "sdxl-base": {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
}
# One module per component that only the architecture has (SD1: attn2.to_k takes 768; SD2: 1024; SDXL: 2048),
# so that subsets still fit exactly one fingerprint.
SIGNATURE_MODULES: dict[str, tuple[str, ...]] = {
    "sd1": ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "down_blocks.0.attentions.0.proj_in"),
    "sd2": ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "down_blocks.0.attentions.0.proj_in"),
    "sdxl-base": ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",),
}


def kohya_name(prefix: str, path: str) -> str:
    return f"{prefix}_{path.replace('.', '_')}"


def lora_factors(spec: ModuleSpec, rank: int, rng: np.random.Generator, dtype=np.float16,
                 scale: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """kohya shapes: Linear down [r, in], up [out, r]; Conv down [r, in, kh, kw], up [out, r, 1, 1]."""
    kernel = spec.kernel
    down_shape = (rank, spec.in_features, *kernel) if kernel else (rank, spec.in_features)
    up_shape = (spec.out_features, rank, 1, 1) if kernel else (spec.out_features, rank)
    down = rng.normal(0, 0.05, down_shape).astype(dtype)
    up = rng.normal(0, scale, up_shape).astype(dtype)
    return down, up


def module_paths(arch: str, *, small: bool = True) -> dict[str, list[str]]:
    """Default kohya targets per component. ``small``: the first attention block holding the signature module
    (every kind of target: proj_in/out, attn1/attn2 q/k/v/out, ff), the mid block's proj_out, and layer 0 of
    each text encoder."""
    paths: dict[str, list[str]] = {}
    signature = SIGNATURE_MODULES[arch][0]
    block = signature[: signature.index(".transformer_blocks.")] + "."
    for component in KOHYA_PREFIXES[arch]:
        targets = kohya_default_targets(arch, component)
        if small:
            keep = ((block, "mid_block.attentions.0.proj_out") if component == "unet"
                    else ("text_model.encoder.layers.0.",))
            targets = [p for p in targets if p.startswith(keep)]
        paths[component] = targets
    return paths


def lora_tensors(arch: str, *, rank: int = 2, small: bool = True, alpha: float | None = 1.0,
                 seed: int = 0, dtype=np.float16, components: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """A kohya LoRA for ``arch`` (``sd1``, ``sd2``, ``sdxl-base``) as {key: array}; ``small=False`` takes every
    default target (SD1: 192 + 72 modules)."""
    rng = np.random.default_rng(seed)
    fp = fingerprint(arch)
    tensors: dict[str, np.ndarray] = {}
    for component, paths in module_paths(arch, small=small).items():
        if components is not None and component not in components:
            continue
        prefix = KOHYA_PREFIXES[arch][component]
        for path in paths:
            name = kohya_name(prefix, path)
            down, up = lora_factors(fp.lookup(component, path), rank, rng, dtype)
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = up
            if alpha is not None:
                tensors[f"{name}.alpha"] = np.asarray(alpha, dtype=dtype)
    return tensors


def write_adapter(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    write_safetensors(path, tensors, metadata)
    return path


def sd1_adapter(folder: Path, name: str, *, rank: int = 4, seed: int = 1) -> Path:
    """An SD1 kohya LoRA file (small module set, alpha rank/2) at ``folder / name``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_adapter(folder / name, lora_tensors("sd1", rank=rank, alpha=rank / 2, seed=seed))


def independent_hashes(path: Path) -> tuple[str, str]:
    """(sha256, AutoV3) of a safetensors file by plain hashlib, with no lorareg code involved."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw).hexdigest(), hashlib.sha256(raw[8 + n:]).hexdigest()


def first_key(tensors: dict[str, np.ndarray], contains: str, suffix: str = ".lora_up.weight") -> str:
    return next(k for k in sorted(tensors) if contains in k and k.endswith(suffix))


# --- the known-bad adapter library ---------------------------------------------------------------------

SD1_TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
SD1_PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"


@dataclass(frozen=True)
class BadAdapter:
    """One defect: ``build(folder)`` writes the file; verify must report ``code`` (with ``base`` if given)."""

    name: str
    code: str
    build: Callable[[Path], Path]
    base: str | None = None
    phrase: str = ""  # must appear in the message of the finding with ``code``
    extra: dict = field(default_factory=dict)


def _sd1(**kw) -> dict[str, np.ndarray]:
    return lora_tensors("sd1", **kw)


def _write(folder: Path, name: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    return write_adapter(folder / f"{name}.safetensors", tensors, metadata)


def _edit(name: str, change: Callable[[dict[str, np.ndarray]], object], metadata: dict[str, str] | None = None,
          arch: str = "sd1", **kw) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        tensors = lora_tensors(arch, **kw)
        change(tensors)
        return _write(folder, name, tensors, metadata)
    return build


def _meta(name: str, metadata: dict[str, str], arch: str = "sd1") -> Callable[[Path], Path]:
    return _edit(name, lambda t: None, metadata, arch)


def _set(key: str, value) -> Callable[[dict], None]:
    def change(t: dict) -> None:
        t[key] = value
    return change


def _nan_in_up(t):
    up = t[first_key(t, "attn1_to_q")].copy()
    up[0, 0] = np.nan
    t[first_key(t, "attn1_to_q")] = up


def _zero_first_up(t):
    key = first_key(t, "attn1_to_q")
    t[key] = np.zeros_like(t[key])


def _zero_all_up(t):
    for key in [k for k in t if k.endswith("lora_up.weight")]:
        t[key] = np.zeros_like(t[key])


def _zero_first_down(t):
    key = first_key(t, "attn1_to_q", ".lora_down.weight")
    t[key] = np.zeros_like(t[key])


def _explode(t):
    for suffix in (".lora_up.weight", ".lora_down.weight"):
        key = first_key(t, "attn1_to_q", suffix)
        t[key] = (t[key].astype(np.float32) * 400).astype(np.float16)


def _rank_mismatch(t):
    key = first_key(t, "attn1_to_q", ".lora_down.weight")
    t[key] = np.concatenate([t[key], t[key][:1]])  # rank 3 down, rank 2 up


def _drop_up(t):
    del t[first_key(t, "attn1_to_q")]


def _sdxl_module_in_sd1(t):
    # a real SDXL path (SD1 has one transformer block per attention, SDXL ten in down_blocks.2)
    name = "lora_unet_down_blocks_2_attentions_0_transformer_blocks_5_attn1_to_q"
    t[f"{name}.lora_down.weight"] = np.zeros((2, 1280), np.float16) + 0.01
    t[f"{name}.lora_up.weight"] = np.zeros((1280, 2), np.float16) + 0.01


def _to_k_for_sdxl(t):
    t[f"{SD1_TO_K}.lora_down.weight"] = np.full((2, 2048), 0.01, np.float16)


def _conv_kernel_mismatch(t):
    name = "lora_unet_down_blocks_0_resnets_0_conv1"  # a 3x3 conv in every SD UNet
    t[f"{name}.lora_down.weight"] = np.full((2, 320, 1, 1), 0.01, np.float16)
    t[f"{name}.lora_up.weight"] = np.full((320, 2, 1, 1), 0.01, np.float16)


def _loha_not_composing(t):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        t.pop(name + suffix, None)
    t[f"{name}.hada_w1_a"] = np.full((320, 2), 0.01, np.float16)
    t[f"{name}.hada_w1_b"] = np.full((2, 320), 0.01, np.float16)
    t[f"{name}.hada_w2_a"] = np.full((320, 2), 0.01, np.float16)
    t[f"{name}.hada_w2_b"] = np.full((2, 321), 0.01, np.float16)


def _proj_in_linear_shaped(t):
    t[f"{SD1_PROJ_IN}.lora_down.weight"] = t[f"{SD1_PROJ_IN}.lora_down.weight"][:, :, 0, 0]
    t[f"{SD1_PROJ_IN}.lora_up.weight"] = t[f"{SD1_PROJ_IN}.lora_up.weight"][:, :, 0, 0]


def _sd2_proj_in_conv_shaped(t):
    t[f"{SD1_PROJ_IN}.lora_down.weight"] = t[f"{SD1_PROJ_IN}.lora_down.weight"][:, :, None, None]
    t[f"{SD1_PROJ_IN}.lora_up.weight"] = t[f"{SD1_PROJ_IN}.lora_up.weight"][:, :, None, None]


def _three_d_down(t):
    key = first_key(t, "attn1_to_q", ".lora_down.weight")
    t[key] = t[key][:, :, None]


def _dora_wrong_size(t):
    name = first_key(t, "attn1_to_q").removesuffix(".lora_up.weight")
    t[f"{name}.dora_scale"] = np.ones((7, 1), np.float16)


def _te2_in_sd1(t):
    name = kohya_name("lora_te2", "text_model.encoder.layers.0.self_attn.q_proj")
    t[f"{name}.lora_down.weight"] = np.full((2, 1280), 0.01, np.float16)
    t[f"{name}.lora_up.weight"] = np.full((1280, 2), 0.01, np.float16)


def _add_peft_key(t):
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    t[f"{module}.lora_A.weight"] = np.full((2, 640), 0.01, np.float16)
    t[f"{module}.lora_B.weight"] = np.full((640, 2), 0.01, np.float16)


def _shrink_everything(t):
    for key in list(t):
        if key.endswith(".lora_down.weight"):
            t[key] = np.full((2, 7, *t[key].shape[2:]), 0.01, np.float16)


def _int_down(t):
    key = first_key(t, "attn1_to_q", ".lora_down.weight")
    t[key] = (t[key] * 100).astype(np.int8)


def _sd1_lorareg(**record) -> dict[str, str]:
    return {"lorareg": json.dumps({"schema_version": "1", **record}, sort_keys=True)}


KNOWN_BAD_ADAPTERS: list[BadAdapter] = [
    # format
    BadAdapter("no_tensors", "LRG100", lambda d: _write(d, "no_tensors", {}, {"ss_network_dim": "4"})),
    BadAdapter("unknown_format_not_a_lora", "LRG101",
               lambda d: _write(d, "unknown_format_not_a_lora", {"foo.bar": np.zeros(2, np.float16)})),
    BadAdapter("unknown_keys_random", "LRG102", _edit("unknown_keys_random",
               _set("some_other_tool.extra", np.zeros(2, np.float16)))),
    BadAdapter("unknown_keys_bundle_emb", "LRG103", _edit("unknown_keys_bundle_emb",
               _set("bundle_emb.mychar.string_to_param.*", np.zeros((1, 768), np.float16)))),
    BadAdapter("mixed_kohya_and_peft_keys", "LRG104", _edit("mixed_kohya_and_peft_keys", _add_peft_key)),
    BadAdapter("non_float_factor", "LRG105", _edit("non_float_factor", _int_down)),
    # architecture
    BadAdapter("architecture_undetected", "LRG200", _edit("architecture_undetected", _shrink_everything)),
    BadAdapter("module_not_in_base", "LRG201", _edit("module_not_in_base_partial", _sdxl_module_in_sd1),
               phrase="the best match"),
    BadAdapter("declared_sdxl_but_sd1_weights", "LRG202",
               _meta("declared_sdxl_but_sd1_weights", {"ss_base_model_version": "sdxl_base_v1-0"}),
               phrase="this is an sd1 adapter"),
    BadAdapter("sd1_adapter_on_sdxl_base", "LRG203", _meta("sd1_adapter_on_sdxl_base", {}), base="sdxl-base",
               phrase="modules fit sd1), not sdxl-base"),
    BadAdapter("sd2_variant_undeclared", "LRG204", _meta("sd2_variant_undeclared", {}, arch="sd2"),
               phrase="sd2-512 and sd2-768-v"),
    BadAdapter("requested_512_declared_768_v", "LRG205",
               _meta("requested_512_declared_768_v", {"modelspec.architecture": "stable-diffusion-v2-768-v/lora"},
                     arch="sd2"), base="sd2-512"),
    # compatibility
    BadAdapter("module_not_in_base_sdxl_path", "LRG300", _edit("module_not_in_base_sdxl_path", _sdxl_module_in_sd1)),
    BadAdapter("shape_mismatch_sd1_vs_sdxl", "LRG301", _edit("shape_mismatch_sd1_vs_sdxl", _to_k_for_sdxl),
               phrase="expected in=768"),
    BadAdapter("rank_mismatch_down_up", "LRG302", _edit("rank_mismatch_down_up", _rank_mismatch)),
    BadAdapter("alpha_not_scalar", "LRG303", _edit("alpha_not_scalar",
               _set(f"{SD1_TO_K}.alpha", np.ones(2, np.float16)))),
    BadAdapter("alpha_nan", "LRG304", _edit("alpha_nan", _set(f"{SD1_TO_K}.alpha", np.asarray(np.nan, np.float16)))),
    BadAdapter("alpha_zero", "LRG305", _edit("alpha_zero", _set(f"{SD1_TO_K}.alpha", np.asarray(0, np.float16)))),
    BadAdapter("alpha_negative", "LRG305", _edit("alpha_negative",
               _set(f"{SD1_TO_K}.alpha", np.asarray(-4, np.float16)))),
    BadAdapter("conv_kernel_mismatch", "LRG306", _edit("conv_kernel_mismatch", _conv_kernel_mismatch)),
    BadAdapter("loha_factors_do_not_compose", "LRG307", _edit("loha_factors_do_not_compose", _loha_not_composing)),
    BadAdapter("sd2_proj_in_conv_shaped", "LRG308", _edit("sd2_proj_in_conv_shaped", _sd2_proj_in_conv_shaped,
                                                          arch="sd2")),
    BadAdapter("missing_up_factor", "LRG309", _edit("missing_up_factor", _drop_up)),
    BadAdapter("sd1_proj_in_linear_shaped", "LRG310", _edit("sd1_proj_in_linear_shaped", _proj_in_linear_shaped)),
    BadAdapter("down_three_dimensional", "LRG311", _edit("down_three_dimensional", _three_d_down)),
    BadAdapter("dora_scale_wrong_size", "LRG312", _edit("dora_scale_wrong_size", _dora_wrong_size)),
    BadAdapter("te2_modules_in_sd1_adapter", "LRG313", _edit("te2_modules_in_sd1_adapter", _te2_in_sd1)),
    # health
    BadAdapter("nan_in_up", "LRG400", _edit("nan_in_up", _nan_in_up)),
    BadAdapter("zero_up_untrained", "LRG401", _edit("zero_up_untrained", _zero_first_up)),
    BadAdapter("all_up_zero_untrained_adapter", "LRG402", _edit("all_up_zero_untrained_adapter", _zero_all_up)),
    BadAdapter("extreme_norm", "LRG403", _edit("extreme_norm", _explode)),
    BadAdapter("zero_down", "LRG404", _edit("zero_down", _zero_first_down)),
    # metadata
    BadAdapter("record_invalid", "LRG500", _meta("record_invalid", _sd1_lorareg(bogus_field=1))),
    BadAdapter("declared_architectures_conflict", "LRG501", _meta("declared_architectures_conflict", {
        "modelspec.architecture": "stable-diffusion-v1/lora", "ss_base_model_version": "sdxl_base_v1-0"})),
    BadAdapter("missing_trigger_words", "LRG502", _meta("missing_trigger_words", {})),
    BadAdapter("missing_license", "LRG503", _meta("missing_license", {})),
    BadAdapter("stale_tensor_hash", "LRG504", _meta("stale_tensor_hash", _sd1_lorareg(tensor_sha256="a" * 64))),
    BadAdapter("stale_modelspec_hash", "LRG505", _meta("stale_modelspec_hash",
                                                       {"modelspec.hash_sha256": "0x" + "b" * 64})),
    BadAdapter("tag_frequency_bloat", "LRG506", _meta("tag_frequency_bloat", {"ss_tag_frequency": json.dumps(
        {"1_img": {f"tag number {i}": i for i in range(5000)}})})),
    BadAdapter("header_bloat", "LRG507", _meta("header_bloat", {"notes": "x" * (1024 * 1024 + 1)})),
    BadAdapter("metadata_value_unparsable", "LRG508", _meta("metadata_value_unparsable",
                                                            {"ss_network_dim": "lots"})),
    BadAdapter("declared_rank_differs", "LRG509", _meta("declared_rank_differs",
                                                        {"ss_network_dim": "64", "ss_network_alpha": "32"})),
]
