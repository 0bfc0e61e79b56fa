"""Checks that read tensor data (skipped with ``tensors=False``): value health and declared tensor hashes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import MetadataError
from ...schema.keys import HEADER_KEY
from ..context import Context
from ..findings import Finding, finding
from ..shapes import NOT_FACTORS

if TYPE_CHECKING:
    from ..health import HealthScan


def _alpha_fallback(ctx: Context) -> float | None:
    """peft/diffusers files keep alpha in metadata, not tensors: the declared alpha scales their deltas."""
    if any(m.alpha is not None or m.alpha_unknown for m in ctx.adapter.modules.values()):
        return None
    try:
        return ctx.adapter.metadata.network.alpha
    except MetadataError:
        return None


# The scan (numpy) and the hashes (hashlib) load only when tensors are read: a header-level verify never needs them.
def scan(*args, **kwargs) -> HealthScan:
    from ..health import scan as health_scan

    return health_scan(*args, **kwargs)


def tensor_sha256(path, data_offset: int) -> str:
    from ...hashes import tensor_sha256 as data_sha256

    return data_sha256(path, data_offset)


def check_health(ctx: Context) -> list[Finding]:
    from ..health import EXTREME_DELTA_RMS

    adapter = ctx.adapter
    result: HealthScan = scan(adapter.path, adapter.header, adapter.modules, ctx.deltas,
                              alpha_fallback=_alpha_fallback(ctx))
    findings: list[Finding] = []
    for key, dtype in result.unscannable.items():
        findings.append(finding("unscannable-dtype", f"got dtype {dtype}, which numpy cannot read; values not "
                                "checked", key=key, hint="convert the adapter to F16/BF16/F32 to check its values"))
    alphas = {info.keys["alpha"] for info in adapter.modules.values() if "alpha" in info.keys}
    for stats in result.tensors.values():
        if not stats.finite and stats.key not in alphas:  # a NaN alpha is alpha-not-finite
            findings.append(finding("non-finite-values", f"got {stats.nan} NaN and {stats.inf} Inf of {stats.numel} "
                                    "values, expected none", key=stats.key,
                                    hint="training diverged or the export overflowed (fp16?); retrain or re-export"))
    modules = result.modules
    zero = [m for m, s in modules.items() if s.zero_delta]
    if modules and len(zero) == len(modules):
        return findings + [finding("untrained-adapter", f"got {len(modules)} modules whose delta is all zeros, "
                                   "expected trained weights: the adapter does nothing",
                                   hint="it was saved before training, or the export dropped the weights")]
    for module_key in zero:
        findings += _zero_findings(ctx, module_key, result)
    for module_key, s in modules.items():
        if s.exceeds(EXTREME_DELTA_RMS):  # a free bound first; the exact norm only where it cannot decide
            findings.append(finding("extreme-norm", f"got a delta RMS of {s.delta_rms:.3g} (Frobenius norm "
                                    f"{s.delta_norm:.3g}), expected below {EXTREME_DELTA_RMS:g}", key=str(module_key),
                                    hint="check alpha and the training learning rate; apply at a low weight"))
    for info in adapter.modules.values():
        scale = info.keys.get("dora_scale")
        if scale and scale in result.tensors and result.tensors[scale].all_zero:
            findings.append(finding("all-zero-tensor", "got an all-zero dora_scale, expected the weight's column "
                                    "norms: the module's weight becomes zero", key=scale, hint="re-export the adapter"))
    return findings


def _zero_findings(ctx: Context, module_key, result: HealthScan) -> list[Finding]:
    info = ctx.adapter.modules[module_key]
    zero_roles = [r for r, k in info.keys.items()
                  if r not in NOT_FACTORS and k in result.tensors and result.tensors[k].all_zero]
    if info.algo != "lora" or "up" in zero_roles:
        return [finding("untrained-module", f"got an all-zero {'/'.join(zero_roles)} factor, expected trained "
                        "weights: the module changes nothing", key=str(module_key),
                        hint="normal for a few modules; for many, the adapter was saved before training")]
    return [finding("all-zero-tensor", f"got an all-zero {role} factor, expected trained weights", key=info.keys[role],
                    hint="re-export the adapter") for role in zero_roles]


def check_hashes(ctx: Context) -> list[Finding]:
    """Declared tensor-data hashes against the file (AutoV3); the data is hashed only when one is declared."""
    metadata = ctx.adapter.header.metadata
    declared: list[tuple[str, str, str]] = []  # (code name, header key, hex)
    if HEADER_KEY in metadata:
        from ...schema.metadata import read_header_value  # pydantic: only files with a record load it

        try:
            record, _ = read_header_value(metadata[HEADER_KEY])
        except MetadataError:
            record = None
        if record is not None and record.tensor_sha256:
            declared.append(("stale-tensor-hash", f"{HEADER_KEY}.tensor_sha256", record.tensor_sha256))
    spec_hash = metadata.get("modelspec.hash_sha256", "").strip().lower().removeprefix("0x")
    if len(spec_hash) == 64:
        declared.append(("stale-foreign-hash", "modelspec.hash_sha256", spec_hash))
    # sd-scripts writes the bare AutoV3; LyCORIS writes '0x' + a per-tensor serialisation hash that never matches it.
    kohya_hash = metadata.get("sshs_model_hash", "").strip().lower()
    if len(kohya_hash) == 64:
        declared.append(("stale-foreign-hash", "sshs_model_hash", kohya_hash))
    if not declared:
        return []
    actual = tensor_sha256(ctx.adapter.path, ctx.adapter.header.data_offset)
    return [finding(name, f"got {key} = {value[:16]}…, expected {actual[:16]}… (the tensor data's sha256)", key=key,
                    hint="the tensors changed after the hash was written; if that is intended, update it with "
                         "`lorareg meta import FILE`, else get the original file")
            for name, key, value in declared if value != actual]
