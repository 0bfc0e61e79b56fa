"""What a module's factor shapes multiply out to, and how that compares with a base module.

Two questions, kept apart because only the second depends on the base:

* ``factor_problems(info)``: do the factors make a delta at all (both LoRA factors present, ranks
  agree, LyCORIS inner dimensions chain)? ``delta_shape(info)`` is then the delta's shape: 2-D
  ``(out, in)`` (Linear, or a conv flattened to ``in * kh * kw`` the way LoHa/LoKr store it) or 4-D
  ``(out, in, kh, kw)``.
* ``fit_problems(info, delta, spec)``: does that delta fit the base module ``spec``?

Problems name their finding code, say what is wrong and, when one tensor is to blame, its role; checks
turn them into findings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..adapter import ModuleInfo
from ..architectures import ModuleSpec
from ..safetensors_io import FLOAT_DTYPES


class Problem(NamedTuple):
    name: str  # code name in the findings table
    message: str
    hint: str | None = None
    role: str | None = None  # the tensor to blame, when it is one


Shape = tuple[int, ...]

# Roles that are factors of the delta (alpha is a scale, dora_scale a magnitude, up_bias a bias).
NOT_FACTORS = frozenset({"alpha", "dora_scale", "up_bias", "diff_b"})
_LORA_NDIMS = (2, 4)
# Loaders call alpha.item(): an integer scalar works (diffusers' convert_state_dict_to_kohya writes I64).
_NUMBER_DTYPES = FLOAT_DTYPES | {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"}


_REEXPORT = "the factors do not belong together (a broken export or a bad merge); re-export the adapter"


class _Broken(Exception):
    def __init__(self, name: str, message: str, hint: str | None = None, role: str | None = None) -> None:
        self.problem = Problem(name, message, hint or _REEXPORT, role)


def _shape(info: ModuleInfo, role: str) -> Shape | None:
    t = info.tensors.get(role)
    return t.shape if t is not None else None


def _need(info: ModuleInfo, role: str, ndims: tuple[int, ...]) -> Shape:
    shape = _shape(info, role)
    if shape is None:
        raise _Broken("factors-do-not-compose", f"{info.algo} module has no {role} factor; got roles "
                      f"{sorted(info.tensors)}", "re-export the adapter with the tool that trained it")
    if len(shape) not in ndims:
        raise _Broken("malformed-factor", f"{role} has shape {list(shape)}, expected {' or '.join(map(str, ndims))} "
                      "dimensions", "the writer is broken; re-export the adapter", role)
    if 0 in shape:
        raise _Broken("malformed-factor", f"{role} has shape {list(shape)}, expected no zero-size dimension",
                      "the writer is broken; re-export the adapter", role)
    return shape


def _chain(info: ModuleInfo, left: str, right: str) -> tuple[int, int]:
    """(rows of left, columns of right) of ``left @ right`` for 2-D factors; inner sizes must agree."""
    a, b = _need(info, left, (2,)), _need(info, right, (2,))
    if a[1] != b[0]:
        raise _Broken("factors-do-not-compose", f"{left} {list(a)} @ {right} {list(b)}: got inner sizes "
                      f"{a[1]} and {b[0]}, expected equal")
    return a[0], b[1]


def _tucker(info: ModuleInfo, core: str, left: str, right: str) -> Shape:
    """LyCORIS Tucker: core [r1, r2, kh, kw], left [r1, out], right [r2, in] -> (out, in, kh, kw)."""
    t = _need(info, core, (3, 4))
    a, b = _need(info, left, (2,)), _need(info, right, (2,))
    if (a[0], b[0]) != t[:2]:
        raise _Broken("factors-do-not-compose", f"{core} {list(t)} with {left} {list(a)} and {right} {list(b)}: "
                      f"got ranks ({a[0]}, {b[0]}), expected {tuple(t[:2])}", None)
    return (a[1], b[1], *t[2:])


def _lora_delta(info: ModuleInfo) -> Shape:
    roles = set(info.tensors)
    if not {"down", "up"} <= roles:
        missing = "up" if "down" in roles else "down"
        raise _Broken("missing-factor", f"got only the {'down' if missing == 'up' else 'up'} factor, expected "
                      f"down and up", "the export lost half of the module; re-export it")
    down, up = _need(info, "down", _LORA_NDIMS), _need(info, "up", _LORA_NDIMS)
    if len(up) == 4 and up[2:] != (1, 1):
        raise _Broken("factors-do-not-compose", f"up has kernel {list(up[2:])}, expected 1x1", None)
    if "mid" in roles:  # LoCon Tucker: down [r, in, 1, 1] -> mid [r, r, kh, kw] -> up [out, r, 1, 1]
        mid = _need(info, "mid", (4,))
        if (mid[1], mid[0]) != (down[0], up[1]):
            raise _Broken("rank-mismatch", f"mid {list(mid)} between down {list(down)} and up {list(up)}: got "
                          f"ranks {mid[1]}/{mid[0]}, expected {down[0]}/{up[1]}", None)
        return (up[0], down[1], *mid[2:])
    if down[0] != up[1]:
        raise _Broken("rank-mismatch", f"got down rank {down[0]} ({list(down)}) and up rank {up[1]} ({list(up)}), "
                      "expected equal", "the factors come from different exports; re-export the adapter")
    return (up[0], *down[1:])


def _loha_delta(info: ModuleInfo) -> Shape:
    if "hada_t1" in info.tensors:
        one = _tucker(info, "hada_t1", "hada_w1_a", "hada_w1_b")
        two = _tucker(info, "hada_t2", "hada_w2_a", "hada_w2_b")
    else:
        one, two = _chain(info, "hada_w1_a", "hada_w1_b"), _chain(info, "hada_w2_a", "hada_w2_b")
    if one != two:
        raise _Broken("factors-do-not-compose", f"LoHa halves multiply out to {list(one)} and {list(two)}, "
                      "expected the same shape (they are multiplied element-wise)", None)
    return one


def _lokr_half(info: ModuleInfo, n: str) -> Shape:
    if f"lokr_w{n}" in info.tensors:
        return _need(info, f"lokr_w{n}", (2, 4))
    if f"lokr_t{n}" in info.tensors:
        return _tucker(info, f"lokr_t{n}", f"lokr_w{n}_a", f"lokr_w{n}_b")
    return _chain(info, f"lokr_w{n}_a", f"lokr_w{n}_b")


def _lokr_delta(info: ModuleInfo) -> Shape:
    w1, w2 = _lokr_half(info, "1"), _lokr_half(info, "2")
    if len(w1) != 2:
        raise _Broken("malformed-factor", f"lokr_w1 has shape {list(w1)}, expected 2 dimensions", None)
    return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])  # kron(w1, w2)


def delta_shape(info: ModuleInfo) -> Shape:
    """The shape of the module's delta; raises ``_Broken`` (see ``factor_problems``)."""
    if info.algo == "lora":
        return _lora_delta(info)
    if info.algo == "loha":
        return _loha_delta(info)
    if info.algo == "lokr":
        return _lokr_delta(info)
    if info.algo == "full":
        return _need(info, "diff", (2, 4))
    raise _Broken("unchecked-algorithm", f"roles {sorted(info.tensors)} are no algorithm verify checks", None)


def factor_problems(info: ModuleInfo) -> tuple[Shape | None, list[Problem]]:
    """The delta shape (None when the factors do not make one) and every base-independent problem.

    Reads only the module's algo, alpha, rank and its tensors' roles, dtypes and shapes: ``Context.build`` keeps
    one answer per such signature (extend that signature when this reads more)."""
    problems: list[Problem] = []
    for role, t in info.tensors.items():
        if role != "alpha" and t.dtype not in FLOAT_DTYPES:
            problems.append(Problem("non-float-factor", f"{role} has dtype {t.dtype}, expected a float dtype "
                                    f"({', '.join(sorted(FLOAT_DTYPES))})", "re-export the adapter in F16/BF16/F32",
                                    role))
    problems += alpha_problems(info)
    try:
        delta: Shape | None = delta_shape(info)
    except _Broken as broken:
        return None, problems + [broken.problem]
    dora = info.tensors.get("dora_scale")
    if dora is not None and dora.numel not in (delta[0], math.prod(delta[1:])):
        problems.append(Problem("dora-scale-shape", f"dora_scale {list(dora.shape)} holds {dora.numel} values, "
                                f"expected {delta[0]} (one per output feature)", "re-export the adapter", "dora_scale"))
    return delta, problems


def alpha_problems(info: ModuleInfo) -> list[Problem]:
    t = info.tensors.get("alpha")
    if t is None:
        return []
    if t.numel != 1 or t.dtype not in _NUMBER_DTYPES:
        return [Problem("alpha-not-scalar", f"got alpha {t.dtype} {list(t.shape)}, expected one number",
                        "store alpha as a 0-dim float tensor (kohya: torch.tensor(alpha))", "alpha")]
    alpha = info.alpha
    if alpha is None:
        return []
    if not math.isfinite(alpha):
        return [Problem("alpha-not-finite", f"got alpha {alpha}, expected a finite number",
                        "set alpha to the rank or the value the adapter was trained with", "alpha")]
    if alpha < 0:
        return [Problem("alpha-non-positive", f"got alpha {alpha:g}, expected > 0: a negative alpha flips the delta",
                        "set alpha to the value the adapter was trained with", "alpha")]
    if alpha == 0:
        return [Problem("alpha-non-positive", "got alpha 0, expected > 0: kohya/A1111 read 0 as alpha = rank, "
                        "diffusers scales the module by 0",
                        f"set alpha explicitly (alpha = rank = {info.rank} keeps kohya's meaning)", "alpha")]
    return []


def _dims(shape: Shape) -> str:
    return "x".join(map(str, shape))


def fit_problems(info: ModuleInfo, delta: Shape, spec: ModuleSpec) -> list[Problem]:
    """How a delta of shape ``delta`` fits the base module ``spec``; empty when it fits exactly."""
    out, kernel = delta[0], tuple(delta[2:]) or None
    flat_in = math.prod(delta[1:])
    want_kernel = spec.kernel
    want_flat = spec.in_features * math.prod(want_kernel or ())
    if out != spec.out_features or (kernel and delta[1] != spec.in_features) or (not kernel and flat_in != want_flat
                                                                                  and flat_in != spec.in_features):
        got_in = delta[1]
        return [Problem("shape-mismatch", f"got in={got_in} out={out}, expected in={spec.in_features} "
                 f"out={spec.out_features} ({spec.kind} {_dims(spec.weight_shape)})",
                 "the adapter was made for another base model")]
    if kernel is None and want_kernel is not None:
        if flat_in == want_flat and info.algo != "lora":
            return []  # LoHa/LoKr store conv deltas flattened to in * kh * kw
        if want_kernel == (1, 1):
            return [Problem("linear-shaped-conv", f"got 2-D factors, expected 1x1 conv factors for this Conv2d "
                     f"({_dims(spec.weight_shape)})", "for peft/diffusers, `lorareg convert FILE --to peft -o OUT` "
                     "writes them as [r, in, 1, 1] / [out, r, 1, 1]")]
        return [Problem("conv-kernel-mismatch", f"got Linear-shaped factors, expected a {_dims(want_kernel)} kernel "
                 f"(conv {_dims(spec.weight_shape)})", "the adapter was made for another base model")]
    if kernel is not None and want_kernel is None:
        if kernel == (1, 1):
            return [Problem("conv-shaped-linear", f"got 1x1 conv factors, expected Linear factors "
                     f"({_dims(spec.weight_shape)}): A1111/ComfyUI load them, diffusers/peft refuse",
                     "for peft/diffusers, `lorareg convert FILE --to peft -o OUT` squeezes them to "
                     "[r, in] / [out, r]")]
        return [Problem("conv-kernel-mismatch", f"got a {_dims(kernel)} kernel, expected a Linear module "
                 f"({_dims(spec.weight_shape)})", "the adapter was made for another base model")]
    if kernel is not None and kernel != want_kernel:
        return [Problem("conv-kernel-mismatch", f"got a {_dims(kernel)} kernel, expected {_dims(want_kernel or ())} "
                 f"(conv {_dims(spec.weight_shape)})", "the adapter was made for another base model")]
    return []


def fits(info: ModuleInfo, delta: Shape | None, spec: ModuleSpec | None) -> bool:
    """True when the module loads into ``spec`` (warnings such as conv-shaped-linear still load)."""
    if spec is None or delta is None:
        return False
    return all(p.name in _LOADS_ANYWAY for p in fit_problems(info, delta, spec))


_LOADS_ANYWAY = frozenset({"conv-shaped-linear", "linear-shaped-conv"})
