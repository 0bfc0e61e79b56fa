"""Extract a LoRA from two checkpoints: per module, the best rank-r approximation of ``tuned - base``.

Modules are those kohya's LoRA wraps: UNet attention blocks (Linear and 1x1 conv) and CLIP attention/MLP
Linears; with ``conv_rank`` also the ResNet, down- and up-sampler modules (kxk kernels at ``conv_rank``,
flattened to [out, in*kh*kw]). Each difference is read in fp32 from the two files, one module at a time.

SD3/FLUX.1 transformers (single files with original names, or diffusers folders; ``Checkpoint.locate``): every
Linear of the transformer blocks, as kohya's ``lora_flux`` / ``lora_sd3`` wrap them. For kohya output the units are
the original modules, so a fused ``qkv`` / ``linear1`` is one SVD of the fused weight (a folder's split q/k/v rows
stacked) with [shift, scale] rows in the original order; for peft (diffusers) output they are the diffusers modules,
one SVD per q/k/v slice.

The truncated SVD is exact (LAPACK) for small matrices and randomized (Halko et al. 2011: Gaussian sketch
with oversampling, a few power iterations, seeded per module) for large ones. Each module reports the energy
kept, ``sum(S[:r]^2) / ||D||_F^2``, and the relative error ``||D - D_r||_F / ||D||_F``. Modules whose
difference is ~0 (relative to the base weight) are skipped and listed. Factors are split as
``up = U sqrt(S)``, ``down = sqrt(S) V^T`` and stored with alpha = rank (scale 1).
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from ..canonical import CanonicalKey, ModuleKey
from ..errors import IncompatibleArchitecture, UsageError
from .checkpoint import Checkpoint, open_checkpoint

_ATTENTION = re.compile(r"^(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.")
_CONV_BLOCKS = re.compile(r"^(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.(?:resnets|downsamplers|upsamplers)\.")
_CLIP = re.compile(r"^text_model\.encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])$")
_TRANSFORMER = re.compile(r"^(?:single_)?transformer_blocks\.\d+\.")

EXACT_SVD_MAX = 512  # min(out, in) up to this: LAPACK SVD; above: randomized
OVERSAMPLE = 8


@dataclass(frozen=True)
class ModuleResult:
    module: str
    rank: int
    shape: tuple[int, ...]
    energy: float  # fraction of ||D||_F^2 kept
    rel_error: float  # ||D - D_r||_F / ||D||_F
    method: str  # "svd" or "randomized"


@dataclass
class ExtractReport:
    output: str
    architecture: str | None
    rank: int
    conv_rank: int | None
    format: str
    modules: list[ModuleResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # difference ~0
    sha256: str = ""
    tensor_sha256: str = ""
    forced: bool = False

    @property
    def min_energy(self) -> float | None:
        return min((m.energy for m in self.modules), default=None)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["min_energy"] = self.min_energy
        return data


@dataclass(frozen=True)
class TruncatedSVD:
    u: np.ndarray  # [out, r]
    s: np.ndarray  # [r]
    vt: np.ndarray  # [r, n]
    method: str


def truncated_svd(matrix: np.ndarray, rank: int, *, seed: int = 0, power_iterations: int = 2) -> TruncatedSVD:
    """The top-``rank`` singular triplets of ``matrix`` (exact when small, randomized when large)."""
    rank = min(rank, *matrix.shape)
    if min(matrix.shape) <= max(EXACT_SVD_MAX, 2 * (rank + OVERSAMPLE)):
        u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
        return TruncatedSVD(u[:, :rank], s[:rank], vt[:rank], "svd")
    rng = np.random.default_rng(seed)
    a = matrix.astype(np.float32, copy=False)  # fp32 products: the sketch's error dwarfs the rounding
    sketch = rng.standard_normal((a.shape[1], rank + OVERSAMPLE), dtype=np.float32)
    q, _ = np.linalg.qr(a @ sketch)
    for _ in range(power_iterations):  # re-orthonormalize each pass so small singular values survive
        z, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ z)
    ub, s, vt = np.linalg.svd((q.T @ a).astype(np.float64), full_matrices=False)
    return TruncatedSVD((q.astype(np.float64) @ ub)[:, :rank], s[:rank], vt[:rank], "randomized")


def extract(*, base: str | os.PathLike[str], tuned: str | os.PathLike[str], output: str | os.PathLike[str],
            rank: int, conv_rank: int | None = None, to: str = "kohya", dtype: str = "fp16",
            min_diff: float = 1e-6, seed: int = 0, power_iterations: int = 2, architecture: str | None = None,
            force: bool = False) -> ExtractReport:
    """Write a LoRA approximating ``tuned - base`` (see module docstring) through ``io.write_op_output``.

    Raises before writing: OutputIsInput, UnknownArchitecture (``architecture`` not an id), IncompatibleArchitecture
    (the checkpoints' layouts differ), UsageError (bad rank, identical checkpoints). A written output that fails
    verify (checked against the base checkpoint itself) is refused unless ``force``.
    """
    from .common import numpy_dtype
    from .io import check_output_path, write_op_output
    from .progress import progress

    _check_ranks(rank, conv_rank)
    if to not in ("kohya", "peft"):
        raise UsageError(f"unknown output format {to!r}", hint="one of: kohya, peft")
    store = numpy_dtype(dtype)
    check_output_path(output, [base, tuned])
    arch = _resolve_architecture(architecture)
    a, b = open_checkpoint(base), open_checkpoint(tuned)
    family = a.family
    modules = _paired_modules(a, b, with_conv=conv_rank is not None, fused=to == "kohya" and family is not None)
    architecture = _architecture(arch, a, _split_shapes(a, modules))  # refuse a wrong --arch early
    report = ExtractReport(output=str(output), architecture=architecture, rank=rank, conv_rank=conv_rank, format=to)
    tensors: dict[CanonicalKey, np.ndarray] = {}
    for module in progress(modules, total=len(modules), description="extract"):
        result = _extract_module(a, b, module, rank if _is_linear_like(a, module) else conv_rank,
                                 min_diff=min_diff, seed=seed, power_iterations=power_iterations)
        if result is None:
            report.skipped.append(str(module))
            continue
        factors, summary = result
        report.modules.append(summary)
        for role, array in factors.items():
            tensors[CanonicalKey(module.component, module.path, role)] = array.astype(store)
        tensors[CanonicalKey(module.component, module.path, "alpha")] = np.array(summary.rank, dtype=np.float32)
    if not report.modules:
        raise UsageError(f"the checkpoints do not differ in any of the {len(modules)} modules compared",
                         hint="is --tuned the fine-tuned model? lower --min-diff to keep tiny differences")
    if to == "kohya" and family is not None:  # original names: [shift, scale] rows as the original stores them
        from .fused import reorder_scale_shift

        tensors = reorder_scale_shift(tensors, {k.module for k in tensors if k.component == "transformer"})
    written = write_op_output(output, tensors, format=to, dialect=_dialect(to, tensors, family),
                              metadata=_metadata(a, b, report, dtype=dtype, min_diff=min_diff, seed=seed,
                                                 power_iterations=power_iterations),
                              inputs=[base, tuned], force=force, base=str(a.path))
    report.sha256, report.tensor_sha256, report.forced = written.sha256, written.tensor_sha256, written.forced
    return report


def _check_ranks(rank: int, conv_rank: int | None) -> None:
    for name, value in (("--rank", rank), ("--conv-rank", conv_rank)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"got {name} {value!r}, expected a positive integer")


def _resolve_architecture(architecture: str | None) -> str | None:
    if architecture is None:
        return None
    from ..architectures import resolve
    from ..architectures.ids import ARCHITECTURES
    from ..errors import UnknownArchitecture

    arch = resolve(architecture)
    if arch is None:
        raise UnknownArchitecture(f"unknown architecture {architecture!r}",
                                  hint=f"known ids: {', '.join(ARCHITECTURES)}")
    return arch.id


def _selected(module: ModuleKey, shape: tuple[int, ...], with_conv: bool) -> bool:
    """kohya's default targets; ResNet/sampler modules only when a conv rank is given."""
    if module.component.startswith("text_encoder"):
        return bool(_CLIP.match(module.path))
    if module.component == "transformer":
        return bool(_TRANSFORMER.match(module.path)) and len(shape) == 2
    if module.component != "unet":
        return False
    one_by_one = len(shape) == 2 or shape[2:] == (1, 1)
    return bool(_ATTENTION.match(module.path)) and one_by_one or with_conv and bool(_CONV_BLOCKS.match(module.path))


def _units(wanted: list[ModuleKey], *, fused: bool) -> list[ModuleKey]:
    """The modules to extract: SD3/FLUX q/k/v (and FLUX's proj_mlp) fused into the original module when ``fused``
    (kohya names), else the diffusers modules (a single file addresses both, see ``mmdit_checkpoint``; a fused
    weight it could not split stays fused)."""
    from ..formats import fused_targets, is_fused
    from .targets import fused_path_of

    present = set(wanted)
    units = set()
    for module in wanted:
        if module.component != "transformer":
            units.add(module)
        elif fused:
            path = module.path if is_fused(module.path) else fused_path_of(module.path) or module.path
            units.add(ModuleKey(module.component, path))
        elif not is_fused(module.path) or not all(ModuleKey(module.component, t) in present
                                                  for t in fused_targets(module.path)):
            units.add(module)
    return sorted(units)


def _paired_modules(a: Checkpoint, b: Checkpoint, *, with_conv: bool, fused: bool = False) -> list[ModuleKey]:
    selected = sorted(m for m, loc in a.modules.items() if _selected(m, loc.shape, with_conv))
    wanted = [m for m in _units(selected, fused=fused) if a.shape(m) is not None]
    missing = [str(m) for m in wanted if b.shape(m) is None]
    differ = [f"{m} ({list(a.shape(m))} vs {list(b.shape(m))})" for m in wanted
              if b.shape(m) is not None and a.shape(m) != b.shape(m)]
    if missing or differ:
        problems = ([f"{len(missing)} modules missing from the tuned model, e.g. {missing[0]}"] if missing else []) + \
                   ([f"{len(differ)} modules differ in shape, e.g. {differ[0]}"] if differ else [])
        raise IncompatibleArchitecture(f"the checkpoints do not share a layout: {'; '.join(problems)}", path=b.path,
                                       hint="extract needs a base and a model fine-tuned from it")
    if not wanted:
        raise UsageError("the base has no modules a LoRA patches", path=a.path)
    return wanted


def _is_linear_like(checkpoint: Checkpoint, module: ModuleKey) -> bool:
    shape = checkpoint.shape(module)
    return len(shape) == 2 or shape[2:] == (1, 1)


def _split_shapes(checkpoint: Checkpoint, modules: list[ModuleKey]) -> dict[ModuleKey, tuple[int, ...]]:
    """Weight shape per diffusers module (a fused unit by its targets): what the shipped fingerprints list."""
    from ..formats import fused_targets

    shapes = {}
    for module in modules:
        for target in fused_targets(module.path) if module.component == "transformer" else (module.path,):
            key = ModuleKey(module.component, target)
            shape = checkpoint.shape(key)
            if shape is not None:
                shapes[key] = shape
    return shapes


def _extract_module(a: Checkpoint, b: Checkpoint, module: ModuleKey, rank: int, *, min_diff: float, seed: int,
                    power_iterations: int) -> tuple[dict[str, np.ndarray], ModuleResult] | None:
    # fp32 holds any difference of fp16/bf16/fp32 weights exactly enough; fp64 weights keep fp64
    stored = {p.loc.dtype for checkpoint in (a, b) for p in checkpoint.locate(module)}
    dtype = np.float64 if "F64" in stored else np.float32
    base = a.read(module, dtype=dtype)
    diff = b.read(module, dtype=dtype)
    diff -= base
    shape = diff.shape
    matrix = diff.reshape(shape[0], -1)
    norm = float(np.linalg.norm(matrix))
    if norm == 0.0 or norm <= min_diff * float(np.linalg.norm(base)):
        return None
    del base
    module_seed = [seed, zlib.crc32(str(module).encode())]  # stable per module, whatever the order
    svd = truncated_svd(matrix, rank, seed=module_seed, power_iterations=power_iterations)
    kept = float(np.sum(svd.s**2)) / norm**2
    root = np.sqrt(svd.s)
    r = len(svd.s)
    up = (svd.u * root).reshape(shape[0], r, *([1] * (len(shape) - 2)))
    down = (root[:, None] * svd.vt).reshape(r, *shape[1:])
    summary = ModuleResult(str(module), r, tuple(shape), energy=min(kept, 1.0),
                           rel_error=max(0.0, 1.0 - kept) ** 0.5, method=svd.method)
    return {"up": up, "down": down}, summary


def _candidates(shapes: dict[ModuleKey, tuple[int, ...]]) -> list[str]:
    """Architectures whose shipped fingerprint holds every extracted module with its shape."""
    from ..architectures import fingerprint, fingerprint_names
    from ..architectures.ids import ARCHITECTURES

    found = []
    for name in fingerprint_names():
        fp = fingerprint(name)
        if all((spec := fp.lookup(m.component, m.path)) is not None and spec.weight_shape == shape
               for m, shape in shapes.items()):
            found += [a.id for a in ARCHITECTURES.values() if a.fingerprint == name]
    return found


def _architecture(requested: str | None, checkpoint: Checkpoint,
                  shapes: dict[ModuleKey, tuple[int, ...]]) -> str | None:
    """The requested id when the shapes fit it; else the one candidate, or the checkpoint's own modelspec
    declaration among several (sd2-512 / sd2-768-v share shapes); else None."""
    from ..architectures import resolve

    candidates = _candidates(shapes)
    if requested is not None:
        if requested not in candidates:
            raise IncompatibleArchitecture(
                f"--arch {requested} does not fit these checkpoints: their modules fit "
                f"{' / '.join(candidates) or 'no known architecture'}", path=checkpoint.path,
                hint="leave --arch out to record what the shapes tell")
        return requested
    if len(candidates) == 1:
        return candidates[0]
    declared = resolve(checkpoint.metadata.get("modelspec.architecture", "")) if candidates else None
    if declared is not None and declared.id in candidates:
        return declared.id
    if set(candidates) == {"flux1-dev", "flux1-schnell"}:  # one fingerprint; only dev embeds the guidance scale
        guided = ModuleKey("transformer", "time_text_embed.guidance_embedder.linear_1") in checkpoint.modules
        return "flux1-dev" if guided else "flux1-schnell"
    return None


def _dialect(to: str, tensors: dict[CanonicalKey, np.ndarray], family: str | None) -> dict[str, str]:
    """kohya SDXL files name UNet modules by SGM blocks, as kohya's own SDXL scripts write them; kohya SD3/FLUX
    files name the transformer's modules after the original model (``lora_unet_double_blocks_0_img_attn_qkv``)."""
    if to != "kohya":
        return {}
    if family is not None and any(k.component == "transformer" for k in tensors):
        return {"transformer_names": family}
    if any(k.component == "text_encoder_2" for k in tensors):
        return {"unet_names": "sgm", "unet_levels": "3"}
    return {}


def _parent(checkpoint: Checkpoint):
    from ..hashes import hash_file
    from ..schema import Parent

    if checkpoint.kind == "single-file":
        hashes = hash_file(checkpoint.path)
        return Parent(sha256=hashes.sha256, tensor_sha256=hashes.autov3, name=checkpoint.path.name[:500])
    return Parent(name=checkpoint.path.name[:500])  # a folder has no single file hash


def _metadata(a: Checkpoint, b: Checkpoint, report: ExtractReport, **params):
    from ..schema import BaseInfo
    from .io import op_metadata

    parents = [_parent(a), _parent(b)]
    record = op_metadata(None, operation="extract", parents=parents, params={
        "rank": report.rank, "conv_rank": report.conv_rank, "format": report.format, **params,
        "skipped_modules": len(report.skipped), "min_energy": report.min_energy,
    })
    return record.model_copy(update={"base": BaseInfo(architecture=report.architecture, sha256=parents[0].sha256,
                                                      model_name=a.path.name[:500])})
