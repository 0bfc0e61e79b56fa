"""Check each module's tensors before any maths: the operations then never meet a shape, dtype or value
that numpy would trip over, and a bad input becomes one message naming the file and the module.

What ``delta`` needs, per algorithm (shapes as ``delta``'s docstring gives them): factors that are float
arrays with no empty side and only finite values; ranks that agree between the factors of a pair; halves
of a LoHa/LoKr that describe the same matrix; a scalar, finite alpha; a DoRA magnitude sized for the
output rows or input channels; a bias sized for the output. The work an operation does on a module grows
with its delta's size and the width of its exact factorization (``Geometry``); both are bounded (over any
real base model's largest module by a wide margin), so that a small file cannot claim gigabytes of work.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod
from typing import NamedTuple

import numpy as np

from ..alphas import algorithm
from ..safetensors_io import INF_BITS
from .errors import MalformedModule

# The largest delta any supported base has is Flux's MLP, 3072 x 12288 (38M entries); SD convs 1280*1280*9.
MAX_DELTA_ENTRIES = 1 << 27
# Entries of the exact factors (out + in) * width, in fp64: 2^26 is 512 MiB, a LoKr on Flux's MLP needs 47M.
MAX_FACTOR_ENTRIES = 1 << 26

ALLOWED_ROLES = {
    "lora": {"down", "up", "mid", "alpha", "up_bias", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "dora_scale"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha",
             "dora_scale"},
    "full": {"diff", "diff_b", "alpha"},
}


class Geometry(NamedTuple):
    """A module's delta as a matrix [out, inner] and the width of its exact factorization."""

    out: int
    inner: int
    width: int


class _Bad(Exception):
    """What is wrong with a module (turned into MalformedModule with the file and module by ``check_module``)."""


def _alpha_value(alpha: float) -> float:
    if not np.isfinite(alpha) or alpha < 0:
        raise _Bad(f"alpha is {alpha}; it must be a finite number >= 0 (0 means alpha = rank)")
    return alpha


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def _need(roles: Mapping[str, np.ndarray], *names: str) -> list[np.ndarray]:
    missing = [n for n in names if n not in roles]
    if missing:
        raise _Bad(f"has no {', '.join(missing)} (the {'pair' if len(names) == 2 else 'factors'} "
                   f"{' + '.join(names)} are needed)")
    return [roles[n] for n in names]


def _ndim(role: str, a: np.ndarray, *allowed: int) -> None:
    if a.ndim not in allowed:
        want = " or ".join(f"{n}-D" for n in allowed)
        raise _Bad(f"{role} is {a.ndim}-D {tuple(a.shape)}, expected {want}")


def _agree(what: str, left: int, right: int) -> None:
    if left != right:
        raise _Bad(f"{what} disagree ({left} vs {right})")


def _tucker(core_role: str, core: np.ndarray, b_role: str, b: np.ndarray) -> tuple[int, int]:
    """A Tucker core [r, s, *k] over b [s, n...]: (r, n*K)."""
    _ndim(core_role, core, 3, 4)
    _agree(f"{core_role} columns and {b_role} rows", core.shape[1], b.shape[0])
    return core.shape[0], prod(b.shape[1:]) * prod(core.shape[2:])


def _lora(roles) -> Geometry:
    down, up = _need(roles, "down", "up")
    _ndim("down", down, 2, 4)
    _ndim("up", up, 2, 4)
    if up.ndim == 4 and up.shape[2:] != (1, 1):
        raise _Bad(f"up has a {tuple(up.shape[2:])} kernel; an up factor's kernel is 1x1")
    if "mid" in roles:  # Tucker: the kernel is mid's; down is [r, in] or [r, in, 1, 1]
        if down.shape[2:] not in ((), (1, 1)):
            raise _Bad(f"down has a {tuple(down.shape[2:])} kernel beside lora_mid's; a Tucker down is 1x1")
        width, inner = _tucker("mid", roles["mid"], "down", down)
    else:
        width, inner = down.shape[0], prod(down.shape[1:])
    _agree("the rank of up and down", up.shape[1], width)
    out = up.shape[0]
    if "dora_scale" in roles and roles["dora_scale"].size not in (out, down.shape[1]):
        raise _Bad(f"dora_scale has {roles['dora_scale'].size} values; it needs one per output row ({out}) "
                   f"or per input channel ({down.shape[1]})")
    if "up_bias" in roles and roles["up_bias"].size != out:
        raise _Bad(f"the bias has {roles['up_bias'].size} values for {out} output rows")
    return Geometry(out, inner, width)


def _loha_half(roles, i: int) -> tuple[int, int, int]:
    a, b = _need(roles, f"hada_w{i}_a", f"hada_w{i}_b")
    _ndim(f"hada_w{i}_a", a, 2)
    if f"hada_t{i}" in roles:  # a [r, out], b [r, in]
        _ndim(f"hada_w{i}_b", b, 2)
        rank, inner = _tucker(f"hada_t{i}", roles[f"hada_t{i}"], f"hada_w{i}_b", b)
        _agree(f"the rank of hada_w{i}_a and hada_t{i}", a.shape[0], rank)
        return a.shape[1], inner, rank
    _ndim(f"hada_w{i}_b", b, 2, 4)
    _agree(f"the rank of hada_w{i}_a and hada_w{i}_b", a.shape[1], b.shape[0])
    return a.shape[0], prod(b.shape[1:]), b.shape[0]


def _loha(roles) -> Geometry:
    out1, inner1, r1 = _loha_half(roles, 1)
    out2, inner2, r2 = _loha_half(roles, 2)
    _agree("the output sides of the LoHa halves", out1, out2)
    _agree("the input sides of the LoHa halves", inner1, inner2)
    return Geometry(out1, inner1, r1 * r2)


def _lokr(roles) -> Geometry:
    if "lokr_w1" in roles:
        (w1,) = _need(roles, "lokr_w1")
        _ndim("lokr_w1", w1, 2)
        a, c, width1 = w1.shape[0], w1.shape[1], min(w1.shape)
    else:
        w1a, w1b = _need(roles, "lokr_w1_a", "lokr_w1_b")
        _ndim("lokr_w1_a", w1a, 2)
        _ndim("lokr_w1_b", w1b, 2)
        _agree("the rank of lokr_w1_a and lokr_w1_b", w1a.shape[1], w1b.shape[0])
        a, c, width1 = w1a.shape[0], w1b.shape[1], w1a.shape[1]
    if "lokr_w2" in roles:
        w2 = roles["lokr_w2"]
        _ndim("lokr_w2", w2, 2, 4)
        b, inner2 = w2.shape[0], prod(w2.shape[1:])
        width2 = min(b, inner2)
    elif "lokr_t2" in roles:
        w2a, w2b = _need(roles, "lokr_w2_a", "lokr_w2_b")
        _ndim("lokr_w2_a", w2a, 2)
        _ndim("lokr_w2_b", w2b, 2)
        width2, inner2 = _tucker("lokr_t2", roles["lokr_t2"], "lokr_w2_b", w2b)
        _agree("the rank of lokr_w2_a and lokr_t2", w2a.shape[0], width2)
        b = w2a.shape[1]
    else:
        w2a, w2b = _need(roles, "lokr_w2_a", "lokr_w2_b")
        _ndim("lokr_w2_a", w2a, 2)
        _ndim("lokr_w2_b", w2b, 2, 4)
        _agree("the rank of lokr_w2_a and lokr_w2_b", w2a.shape[1], w2b.shape[0])
        b, inner2, width2 = w2a.shape[0], prod(w2b.shape[1:]), w2a.shape[1]
    return Geometry(a * b, c * inner2, width1 * width2)


def _full(roles) -> Geometry:
    (diff,) = _need(roles, "diff")
    _ndim("diff", diff, 2, 4)
    out, inner = diff.shape[0], prod(diff.shape[1:])
    return Geometry(out, inner, min(out, inner))


_GEOMETRY = {"lora": _lora, "loha": _loha, "lokr": _lokr, "full": _full}


EXPONENT_MASKS = {"float16": INF_BITS["F16"], "bfloat16": INF_BITS["BF16"]}  # an all-ones exponent: infinity or NaN


def _finite(a: np.ndarray) -> bool:
    """No NaN or infinity (nor, for wider floats, a float64 sum that overflows). 16-bit floats by their exponent
    bits: a float64 sum converts every value, 80x slower, and was the costliest step of reading an fp16 file."""
    mask = EXPONENT_MASKS.get(a.dtype.name)
    if mask is not None:
        return int((a.view(np.uint16) & mask).max()) != mask
    return bool(np.isfinite(a.sum(dtype=np.float64)))  # one pass, no temporary: NaN/Inf propagate


def _check(roles: Mapping[str, np.ndarray], values_checked: bool = False) -> Geometry:
    algo = algorithm(roles)
    if algo not in _GEOMETRY:
        raise _Bad(f"has no factors, only {', '.join(sorted(roles))}")
    foreign = sorted(set(roles) - ALLOWED_ROLES[algo])
    if foreign:
        raise _Bad(f"mixes {algo} factors with {', '.join(foreign)}")
    for role, a in roles.items():
        if role == "alpha":
            if a.size != 1 or a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
                raise _Bad(f"alpha is {a.dtype.name} {tuple(a.shape)}; it must be one number")
            _alpha_value(float(np.asarray(a, dtype=np.float64).reshape(-1)[0]))
            continue
        if not _is_float(a):
            raise _Bad(f"{role} is {a.dtype.name}; factors are floating point")
        if a.size == 0:
            raise _Bad(f"{role} is empty {tuple(a.shape)} (rank 0?)")
        if not values_checked and not _finite(a):
            raise _Bad(f"{role} holds NaN, infinite or overflowing values")
    geometry = _GEOMETRY[algo](roles)
    if geometry.out * geometry.inner > MAX_DELTA_ENTRIES:
        raise _Bad(f"describes a {geometry.out} x {geometry.inner} delta, larger than any base model's module")
    if (geometry.out + geometry.inner) * geometry.width > MAX_FACTOR_ENTRIES:
        raise _Bad(f"needs {geometry.width} columns to factor its {geometry.out} x {geometry.inner} delta exactly, "
                   "more than any real adapter")
    return geometry


def check_module(module, roles: Mapping[str, np.ndarray], path, *, values_checked: bool = False) -> Geometry:
    """The module's geometry, or MalformedModule naming ``path`` and ``module``. ``values_checked``: the caller
    found every factor finite already (``io.load_canonical``: one pass over a 16-bit file's data)."""
    try:
        return _check(roles, values_checked)
    except _Bad as exc:
        raise MalformedModule(f"module {module} {exc}", path=path,
                              hint="`lorareg verify` lists every problem of the file") from None


def check_alpha(module, alpha: float, path) -> float:
    """An alpha from a peft config (``lora_alpha`` / ``alpha_pattern``), checked like a stored one."""
    try:
        value = _alpha_value(float(alpha))
    except _Bad as exc:
        raise MalformedModule(f"module {module} {exc} (from lora_adapter_metadata)", path=path,
                              hint="fix lora_alpha / alpha_pattern in the peft config") from None
    if value > np.finfo(np.float32).max:
        raise MalformedModule(f"module {module} alpha is {value}, too large to store (from lora_adapter_metadata)",
                              path=path, hint="fix lora_alpha / alpha_pattern in the peft config")
    return value


def check_modules(modules: Mapping[object, Mapping[str, np.ndarray]], path, *, values_checked: bool = False) -> None:
    for module, roles in modules.items():
        check_module(module, roles, path, values_checked=values_checked)
