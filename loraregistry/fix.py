"""``fix``: rewrite an adapter so that a chosen loader (diffusers, peft, ComfyUI, InvokeAI, A1111, Forge, kohya
sd-scripts) loads all of it.

What it changes, only where the target's rules (``verify.consumers``) say it must:

* keys: written in a format every target reads: kohya for the web UIs, InvokeAI and sd-scripts (and for
  diffusers when the input is kohya), peft with ``unet.``/``text_encoder.`` prefixes for diffusers otherwise
  (adds the prefixes bare peft and attention-processor files lack), peft keys relative to the one model for
  peft; SD1/SD2 UNet names in diffusers' block names where InvokeAI or sd-scripts are targets (neither maps
  the SGM names there); for InvokeAI alone on a FLUX.1 transformer-only file, ai-toolkit's layout (InvokeAI skips
  sd-scripts' final layer; ``all`` leaves InvokeAI out on FLUX.1 for that reason); keys that fit no module are
  dropped;
* shapes: 1x1-conv factors on Linear modules (kohya SD2 projections) and 2-D factors on 1x1 convs are
  reshaped to the base layout (exact), except for sd-scripts, which builds SD2 with 1x1-conv projections and
  gets them in that shape;
* algorithms diffusers, peft and sd-scripts' ``networks.lora`` cannot load: LoHa, LoKr, full and LoCon Tucker
  modules become plain LoRA, exactly where the rank allows (LoHa r1*r2, LoKr rank(W1)*rank(W2)), else by SVD
  at ``rank`` with the relative error per module; DoRA (kept for peft, which applies it) needs the exact base
  weights (``base`` = model folder or checkpoint) and an SVD; an error over ``max_error`` refuses the fix and
  names the modules;
* metadata: the base architecture goes into the lorareg record, projected onto ``modelspec.architecture``,
  ``ss_base_model_version`` and ``ss_v2`` (what A1111/Forge file the adapter by);
* ``strip_bloat``: drops ``ss_tag_frequency``, ``ssmd_cover_images`` and a huge ``ss_dataset_dirs``.

The output is written under a temporary name, verified, checked with the target consumers, and only then
renamed into place. A file that needs nothing is left alone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LoraregError, UsageError

FIX_TARGETS = ("diffusers", "peft", "comfyui", "invokeai", "a1111", "forge", "kohya")
# One kohya-keyed LoRA serves all of these. Not kohya (sd-scripts creates no module outside its target blocks,
# and wants SD2's projections as 1x1 convs where diffusers wants Linear) nor peft (keys of one model, no prefix).
ALL = ("diffusers", "comfyui", "invokeai", "a1111", "forge")
LOWERING = ("diffusers", "peft", "kohya")  # loaders that apply plain LoRA only: the others read every LyCORIS kind
SD_NAMES_ONLY = ("invokeai", "kohya")  # map SD1/SD2 UNet keys by diffusers block names only
BLOAT_KEYS = ("ss_tag_frequency", "ssmd_cover_images")
HUGE_VALUE = 64 * 1024  # bytes; ss_dataset_dirs over this is bloat
DEFAULT_MAX_ERROR = 0.01
STRUCTURAL_CODES = ("LRG1", "LRG3", "LRG4")  # verify code families that make "nothing to fix" untrue
_FAMILY_IDS = {"sd1": "sd1", "sdxl": "sdxl-base"}  # sd2 is left to the declaration (512 vs 768-v)


class FixLosesInformation(LoraregError):
    """The fix would approximate modules beyond ``--max-error``; nothing was written (a check failed: exit 1)."""

    exit_code = 1


class UnfixableFile(LoraregError):
    """Nothing ``fix`` changes would help: the file has errors of another kind (verify lists them); exit 1."""

    exit_code = 1


class FixDoesNotLoad(LoraregError):
    """The fixed file still does not load in the target; nothing was written."""

    exit_code = 1


@dataclass
class FixResult:
    targets: tuple[str, ...]
    changes: list[str] = field(default_factory=list)
    modules: list[Any] = field(default_factory=list)  # ops.convert.ModuleConversion rows
    before: list[Any] = field(default_factory=list)  # Verdicts of the input
    after: list[Any] = field(default_factory=list)  # Verdicts of the output
    output: Any = None  # ops.io.WrittenOutput; None when nothing needed fixing

    @property
    def needed(self) -> bool:
        return bool(self.changes)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "targets": list(self.targets), "needed": self.needed, "changes": self.changes,
            "modules": [vars(m) for m in self.modules],
            "before": {v.consumer: v.outcome for v in self.before},
            "after": {v.consumer: v.outcome for v in self.after},
        }
        if self.output is not None:
            data.update(output=str(self.output.path), sha256=self.output.sha256)
        return data


def parse_fix_targets(text: str) -> tuple[str, ...]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if "all" in names:
        return ALL
    unknown = [n for n in names if n not in FIX_TARGETS]
    if unknown or not names:
        raise UsageError(f"unknown --for target {', '.join(map(repr, unknown)) or repr(text)}",
                         hint=f"known: {', '.join(FIX_TARGETS)}, all ({', '.join(ALL)})")
    chosen = tuple(dict.fromkeys(names))
    if "peft" in chosen and len(chosen) > 1:
        raise UsageError("--for peft cannot be combined with other targets: peft reads keys relative to one "
                         "model, every other loader needs component prefixes or kohya names",
                         hint="fix once --for peft and once for the others, into two files")
    return chosen


def _modelled_targets(chosen: tuple[str, ...], family: str | None, every: bool, path) -> tuple[str, ...]:
    """The targets whose rules model the file's family. ``all`` quietly leaves the others out; a target named
    on its own that does not model the family is a usage error (no claim can be checked for it)."""
    from .verify.consumers import CONSUMERS

    modelled = tuple(t for t in chosen if CONSUMERS[t].models(family))
    unmodelled = [t for t in chosen if t not in modelled]
    if every and family == "flux" and "invokeai" in modelled:
        # InvokeAI skips sd-scripts' final layer, which the others read: `all` is one kohya file, so it goes
        modelled = tuple(t for t in modelled if t != "invokeai")
    if unmodelled and (not every or not modelled):
        raise UsageError(f"the rules of {', '.join(unmodelled)} do not model {family} adapters, so fix cannot "
                         "check a repair for them", path=path,
                         hint=f"pick targets that model {family}: "
                              f"{', '.join(t for t in FIX_TARGETS if CONSUMERS[t].models(family)) or 'none'}")
    if family == "sd2" and {"kohya", "diffusers"} <= set(modelled):
        raise UsageError("--for kohya and diffusers need opposite SD2 projection shapes (sd-scripts: 1x1 conv, "
                         "diffusers: Linear)", path=path, hint="fix for each of them into its own file")
    return modelled


def fix(input: str | os.PathLike[str], output: str | os.PathLike[str], *, targets: str = "all",
        rank: int | None = None, max_error: float | None = None, strip_bloat: bool = False,
        base: str | None = None) -> FixResult:
    """Fix ``input`` for ``targets`` (comma list or ``all``) and write ``output`` (see module docstring)."""
    from .adapter import AdapterFile
    from .ops.io import check_output_path
    from .verify.base import load_base
    from .verify.consumers import consumer_verdicts
    from .verify.context import Context

    from .ops.io import load_canonical

    from .verify.consumers.facts import family_of

    chosen = parse_fix_targets(targets)
    if rank is not None and rank < 1:
        raise UsageError(f"--rank must be at least 1, got {rank}")
    check_output_path(output, [input])
    adapter = AdapterFile.open(input)
    tensors = load_canonical(adapter)  # the checks every operation makes: a broken module is exit 2 here too
    ctx = Context.build(adapter, load_base(base) if base is not None else None)
    chosen = _modelled_targets(chosen, family_of(ctx), chosen == ALL and "all" in targets.lower(), input)
    result = FixResult(targets=chosen, before=consumer_verdicts(ctx, chosen))
    plan = _plan(ctx, chosen, result, strip_bloat)
    if not result.needed:
        _refuse_if_verify_fails(input, base)
        return result
    tensors = _fixed_tensors(ctx, tensors, plan, rank, base, result)
    limit = DEFAULT_MAX_ERROR if max_error is None else max_error
    over = [m for m in result.modules if m.rel_error > limit]
    if over:
        listed = ", ".join(f"{m.module} ({m.rel_error:.3g})" for m in over[:5])
        raise FixLosesInformation(f"{len(over)} modules would change by more than --max-error {limit}: {listed}",
                                  hint="raise --rank, or allow a larger --max-error")
    result.output, result.after = _write_checked(input, output, tensors, plan, ctx, chosen, base)
    return result


@dataclass
class _Plan:
    format: str
    dialect: dict[str, str]
    lower: bool  # turn every non-plain module into plain LoRA
    header: dict[str, str]
    architecture: str | None
    conv_projections: bool = False  # SD2 projections as 1x1 convs (sd-scripts)
    keep_dora: bool = False  # peft applies DoRA: keep the magnitude instead of folding it in by SVD


def _plan(ctx, targets: tuple[str, ...], result: FixResult, strip_bloat: bool) -> _Plan:
    from .ops.io import carried_header
    from .verify.consumers.facts import adapter_facts

    facts = adapter_facts(ctx)
    adapter = ctx.adapter
    for verdict in result.before:
        if not verdict.ok:
            result.changes.append(f"{verdict.consumer}: {verdict.outcome} -> fix keys/shapes/algorithms")
    misfiled = [f for v in result.before for f in v.findings if f.name == "consumer-misfiles-adapter"]
    if misfiled:
        result.changes.append("write the SD version keys A1111/Forge file the adapter by")
    header = carried_header(adapter)
    bloat = [k for k in header if k in BLOAT_KEYS or (k == "ss_dataset_dirs" and len(header[k]) > HUGE_VALUE)]
    if strip_bloat and bloat:
        result.changes.append(f"strip header bloat: {', '.join(bloat)}")
        header = {k: v for k, v in header.items() if k not in bloat}
    if targets == ("peft",):
        fmt, dialect = "peft", _peft_dialect(facts, input_path=adapter.path) if result.needed else {}
    elif "invokeai" in targets and facts.family == "flux" and facts.components == ("transformer",):
        # InvokeAI skips sd-scripts' final layer but reads ai-toolkit's layout whole: lora_A/lora_B, no alpha
        fmt, dialect = "bfl", {"bfl_prefix": "diffusion_model.", "bfl_factors": "lora_A", "transformer_names": "flux"}
    else:
        wants_kohya = any(t != "diffusers" for t in targets) or adapter.format in ("kohya", "mixed")
        # diffusers' SD3 loader converts no kohya keys, and ComfyUI reads SD3's `transformer.` keys too
        fmt = "kohya" if wants_kohya and facts.family != "sd3" else "peft"
        dialect = _dialect(fmt, facts.family, adapter, sd_names=any(t in SD_NAMES_ONLY for t in targets))
    if facts.unknown_keys and result.needed:
        result.changes.append(f"drop {len(facts.unknown_keys)} keys that fit no module")
    return _Plan(format=fmt, dialect=dialect, lower=any(t in LOWERING for t in targets), header=header,
                 architecture=_architecture(ctx, facts.family, header), conv_projections=_conv_projections(
                     targets, facts.family), keep_dora="peft" in targets)


def _conv_projections(targets: tuple[str, ...], family: str | None) -> bool:
    """sd-scripts builds SD1 AND SD2 with 1x1-conv transformer projections, so SD2's Linear ones get 4-D factors."""
    return "kohya" in targets and family == "sd2"


def _peft_dialect(facts, *, input_path) -> dict[str, str]:
    """peft keys relative to the one model peft wraps (no component prefix). A file for several models has no
    such spelling: peft loads one model at a time."""
    components = sorted({m.component for m in facts.modules.values()})
    if len(components) > 1:
        raise UnfixableFile(f"peft wraps one model, and this file holds {', '.join(components)}: no single peft "
                            "file loads them all", path=input_path,
                            hint="load it with diffusers' load_lora_weights, which loads each component")
    dialect = {"component_prefix": "no", "text_encoder.text_model": "yes", "text_encoder_2.text_model": "yes"}
    return {**dialect, "component": components[0]} if components else dialect


def _dialect(fmt: str, family: str | None, adapter, *, sd_names: bool = False) -> dict[str, str]:
    """Spellings every target matches: CLIP paths with ``text_model``; kohya ``lora_te`` for SD1/SD2; with
    ``sd_names`` (InvokeAI, sd-scripts) SD1/SD2 UNet keys in diffusers' block names, which is all they map."""
    dialect = {"text_encoder.text_model": "yes", "text_encoder_2.text_model": "yes"}
    if fmt == "peft":
        return {**dialect, "component_prefix": "yes"}
    kept = {k: v for k, v in adapter.mapping.dialect.items() if adapter.format == "kohya" and k == "unet_names"}
    if sd_names and family in ("sd1", "sd2"):
        kept.pop("unet_names", None)
    if family in ("sd1", "sd2"):
        kept["te_prefix"] = "lora_te"
    if family in ("sd3", "flux"):
        kept["transformer_names"] = family  # original module names, which only the family settles
    if family == "flux":
        kept["te_prefix"] = "lora_te1"  # sd-scripts' lora_flux spelling of CLIP-L, the one InvokeAI matches
    return {**kept, **dialect}


def _architecture(ctx, family: str | None, header: dict[str, str]) -> str | None:
    """The architecture id to declare; for SD2 without one, the kohya keys alone (variant unknown)."""
    arch = getattr(ctx.base, "architecture", None) or ctx.detection.architecture
    declared = ctx.declaration.architecture
    if arch is None and declared is not None and (family is None or declared.startswith(family)):
        arch = declared
    if arch is None and family == "sd2":
        header.update(ss_v2="True", ss_base_model_version="sd_v2")
    return arch or _FAMILY_IDS.get(family or "")


def _refuse_if_verify_fails(input, base: str | None) -> None:
    """"Nothing to fix" only for a file whose structure verify passes: format (LRG1xx), shapes and alphas
    against the base (LRG3xx) and tensor health (LRG4xx). Detection (LRG2xx), metadata (LRG5xx) and loader
    verdicts (LRG6xx) are left out: the loaders' verdicts already said what fix can do about them."""
    from .verify import verify

    report = verify(input, base=base)
    errors = [f for f in report.findings if f.severity == "error" and f.code[:4] in STRUCTURAL_CODES]
    if errors:
        listed = "; ".join(f"{f.code} {f.message}" for f in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise UnfixableFile(f"the loaders load it as it is, but verify finds errors fix cannot repair: {listed}{more}",
                            path=input, hint="see `lorareg verify`")


def _fixed_tensors(ctx, tensors, plan: _Plan, rank: int | None, base: str | None, result: FixResult):
    from .ops.convert import convert_tensors

    shapes = {m: spec.weight_shape for m in ctx.adapter.modules
              if ctx.target is not None and (spec := ctx.target.lookup(m.component, m.path)) is not None}
    if plan.lower:
        if plan.conv_projections:  # the layout sd-scripts' own SD2 UNet has: factors follow it
            shapes = {m: (*s, 1, 1) if len(s) == 2 and m.path.endswith((".proj_in", ".proj_out")) else s
                      for m, s in shapes.items()}
        if not plan.keep_dora:
            tensors = _undora(tensors, shapes, rank, base, result)
        converted, rows = convert_tensors(tensors, to="peft", rank=rank, shapes=shapes)
        result.modules += rows
        reshaped = sum(1 for m, s in shapes.items() if _stored_shape(tensors, m) not in (None, s)
                       and m.path.endswith((".proj_in", ".proj_out")))
        if reshaped:
            result.changes.append(f"reshape {reshaped} projection modules to the base layout")
        if rows:
            result.changes.append(f"lower {sum(r.change == 'lowered' for r in rows)} LyCORIS modules to plain LoRA")
        tensors = converted
    if plan.dialect.get("transformer_names") in ("sd3", "flux"):
        tensors = _fused(ctx.adapter, tensors, result)
    if plan.format == "bfl":
        tensors = _alpha_folded(tensors, result)
    return tensors


def _alpha_folded(tensors, result: FixResult):
    """alpha/rank folded into ``up`` and no alpha stored: readers of ai-toolkit's layout take alpha = rank. Exact
    where alpha = rank (ai-toolkit's own files); otherwise up to the rounding of ``up``'s dtype."""
    from .ops.common import by_module, flatten_modules

    modules = by_module(tensors)
    scaled = 0
    for roles in modules.values():
        if "alpha" not in roles or "down" not in roles or "up" not in roles:
            continue  # LyCORIS kinds keep their alpha (the layout's readers scale only LoRA by rank)
        scale = float(roles.pop("alpha")) / roles["down"].shape[0]
        if scale != 1.0:
            roles["up"] = (roles["up"].astype(np.float64) * scale).astype(roles["up"].dtype)
            scaled += 1
    if scaled:
        result.changes.append(f"fold alpha/rank into {scaled} up factors (the layout stores no alpha)")
    return flatten_modules(modules)


def _fused(adapter, tensors, result: FixResult):
    """Original SD3/Flux names (sd-scripts', ComfyUI's) fuse the split q/k/v (and Flux's linear1) targets, as
    ``convert --to kohya`` does: [shift, scale] rows in the original order, then the block-diagonal fusion."""
    from .ops.convert import convert_tensors
    from .ops.fused import natively_named, reorder_scale_shift

    moved = {m for m in adapter.modules if m.component == "transformer"} - natively_named(adapter.mapping)
    tensors = reorder_scale_shift(tensors, moved)
    fused, rows = convert_tensors(tensors, to="kohya", stored=set(adapter.mapping.mapped.values()), fuse=True)
    if any(r.change == "fused" for r in rows):
        result.changes.append(f"fuse {sum(r.change == 'fused' for r in rows)} split targets into the original "
                              "modules")
    return fused


def _stored_shape(tensors, module) -> tuple[int, ...] | None:
    from .canonical import CanonicalKey

    up = tensors.get(CanonicalKey(module.component, module.path, "up"))
    down = tensors.get(CanonicalKey(module.component, module.path, "down"))
    return (up.shape[0], *down.shape[1:]) if up is not None and down is not None else None


def _undora(tensors, shapes, rank: int | None, base: str | None, result: FixResult):
    """kohya DoRA modules -> plain LoRA from their exact delta (needs the base weights), by SVD."""
    from .ops.common import by_module, flatten_modules
    from .ops.convert import ModuleConversion
    from .ops.delta import module_delta

    modules = by_module(tensors)
    dora = [m for m, roles in modules.items() if "dora_scale" in roles]
    if not dora:
        return tensors
    if base is None or not Path(base).exists():
        raise UsageError(f"{len(dora)} DoRA modules need the exact base weights to become plain LoRA",
                         hint="pass --base with the model folder or checkpoint the adapter was trained on")
    from .ops.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(base)
    for module in dora:
        roles = modules[module]
        weight = checkpoint.read(module, dtype=np.float64)
        delta = module_delta(roles, out_shape=weight.shape, base_weight=weight)
        r = rank or int(roles["down"].shape[0])
        up, down, err = _svd(delta.reshape(delta.shape[0], -1), r)
        shape = shapes.get(module, weight.shape)
        dtype = roles["down"].dtype
        modules[module] = {"down": down.reshape(up.shape[1], *shape[1:]).astype(dtype),
                           "up": up.reshape(shape[0], up.shape[1], *([1] * (len(shape) - 2))).astype(dtype),
                           "alpha": np.array(up.shape[1], dtype=np.float32)}
        result.modules.append(ModuleConversion(str(module), "lowered", "dora", up.shape[1], exact=err == 0.0,
                                               rel_error=err))
    result.changes.append(f"turn {len(dora)} DoRA modules into plain LoRA (SVD of the exact delta)")
    return flatten_modules(modules)


def _svd(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    rank = min(rank, s.size)
    total = float(np.linalg.norm(s))
    err = float(np.linalg.norm(s[rank:]) / total) if total else 0.0
    return u[:, :rank] * s[:rank], vt[:rank], err


def _write_checked(input, output, tensors, plan: _Plan, ctx, targets, base):
    """temp file (verified by write_op_output) -> consumer verdicts -> atomic rename."""
    from .atomic_write import new_temp_path
    from .ops.io import op_metadata, parent_record, write_op_output
    from .verify.consumers import consumer_verdicts

    out = Path(output)
    record = ctx.adapter.metadata
    if plan.architecture is not None:
        record = record.model_copy(update={"base": record.base.model_copy(update={"architecture": plan.architecture})})
    params = {"for": ",".join(targets), "format": plan.format}
    record = op_metadata(record, operation="fix", params=params, parents=[parent_record(ctx.adapter)])
    temp = new_temp_path(out)  # not *.safetensors: a killed run's leftover is no adapter, and is swept
    try:
        written = write_op_output(temp, tensors, format=plan.format, dialect=plan.dialect, metadata=record,
                                  header=plan.header, inputs=[input], base=base)
        after = consumer_verdicts(temp, targets, base=base)
        failing = [v for v in after if not v.ok]
        if failing:
            reasons = "; ".join(v.findings[0].message if v.findings else v.consumer  # names its consumer
                                for v in failing)
            raise FixDoesNotLoad(f"the fixed file still does not fully load, not written: {reasons}", path=out,
                                 hint="this needs a change fix does not make; see `lorareg verify --target`")
        os.replace(temp, out)
    except LoraregError as exc:
        if exc.path == str(temp):  # the user knows the output by its name, not by the temp file's
            exc.path = str(out)
            exc.args = (exc.one_line(),)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    written.report.path = str(out)
    return type(written)(path=out, sha256=written.sha256, tensor_sha256=written.tensor_sha256,
                         report=written.report, forced=written.forced), after
