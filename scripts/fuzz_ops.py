"""Fuzz the adapter operations: mutated valid adapters through ``lorareg convert / resize / merge / fix``.

Structure-preserving: every case starts from a small valid adapter (kohya LoRA, LoCon conv, LoHa, LoKr, DoRA,
full, peft, diffusers; real SD1.5 module paths, built with ``tests/adapters.py``), applies one to three mutations
of its tensors or metadata (shapes, dtypes, alphas, NaN/Inf, key names, metadata JSON, missing halves of pairs,
rank 0, huge ranks claimed in metadata), writes it as a valid safetensors file and runs one operation through
the CLI's ``main()`` in-process (case i runs ``OPERATIONS[i % 5]``).

A case passes when the exit code is 0, 1 or 2, nothing printed a traceback or an "internal error", an exit-2
message is one line naming a file of the case, a failed run left no output, and no temporary file is left
behind. Run ``python scripts/fuzz_ops.py --cases 100000 --jobs 2``; it prints the counts per outcome, per
operation and per distinct failure cause, and writes reproducers of failures under ``--out``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzz_common, beside this file however it is loaded
from fuzz_common import CaseTimeout, parse_args, time_limit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OPERATIONS = ("convert-peft", "convert-kohya", "resize-2", "merge", "fix")

# Real SD1.5 modules with small sides (320 / 768), so cases stay a few kB and a case takes milliseconds.
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
K2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
CONV = "down_blocks.0.resnets.0.conv1"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a",
                  ".hada_w2_b", ".lokr_w1", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lora_mid.weight",
                  ".dora_scale", ".diff", ".lora_A.weight", ".lora_B.weight", ".weight", "")
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
OTHER_DTYPES = ("int8", "int32", "int64", "uint8", "bool")


@dataclass
class Seed:
    name: str
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]


def _kohya(prefix: str, path: str) -> str:
    from tests.adapters import kohya_name

    return kohya_name(prefix, path)


def _factors(path: str, component: str, rank: int, rng: np.random.Generator):
    from loraregistry.architectures import fingerprint
    from tests.adapters import lora_factors

    return lora_factors(fingerprint("sd1").lookup(component, path), rank, rng)


def seeds(folder: Path) -> list[Seed]:
    """The valid starting adapters; peft and diffusers ones are written by ``lorareg convert`` itself."""
    from loraregistry.safetensors_io import read_header, write_safetensors

    rng = np.random.default_rng(7)
    q, k2, conv, te = (_kohya("lora_unet", Q), _kohya("lora_unet", K2), _kohya("lora_unet", CONV),
                       _kohya("lora_te", TE_Q))
    lora: dict[str, np.ndarray] = {}
    for name, path, component in ((q, Q, "unet"), (k2, K2, "unet"), (te, TE_Q, "text_encoder")):
        down, up = _factors(path, component, 2, rng)
        lora.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                     f"{name}.alpha": np.asarray(1.0, np.float16)})
    down, up = _factors(CONV, "unet", 2, rng)
    locon = {f"{conv}.lora_down.weight": down, f"{conv}.lora_up.weight": up,
             f"{conv}.alpha": np.asarray(2.0, np.float16),
             f"{q}.lora_down.weight": lora[f"{q}.lora_down.weight"], f"{q}.lora_up.weight": lora[f"{q}.lora_up.weight"]}
    small = lambda *shape: rng.normal(0, 0.05, shape).astype(np.float16)  # noqa: E731
    loha = {f"{q}.hada_w1_a": small(320, 2), f"{q}.hada_w1_b": small(2, 320), f"{q}.hada_w2_a": small(320, 2),
            f"{q}.hada_w2_b": small(2, 320), f"{q}.alpha": np.asarray(2.0, np.float16)}
    lokr = {f"{q}.lokr_w1": small(4, 4), f"{q}.lokr_w2_a": small(80, 2), f"{q}.lokr_w2_b": small(2, 80),
            f"{q}.alpha": np.asarray(2.0, np.float16)}
    dora = {**{k: v for k, v in lora.items() if k.startswith(q)}, f"{q}.dora_scale": small(320, 1) + 1}
    full = {f"{q}.diff": small(320, 2) @ small(2, 320)}  # to_q is 320 x 320
    peft_meta = {"ss_network_dim": "2", "ss_network_alpha": "1", "ss_base_model_version": "sd_v1"}
    made = [Seed("kohya_lora", lora, peft_meta), Seed("kohya_locon", locon, {}), Seed("kohya_loha", loha, {}),
            Seed("kohya_lokr", lokr, {}), Seed("kohya_dora", dora, {}), Seed("kohya_full", full, {})]
    source = folder / "seed-kohya.safetensors"
    write_safetensors(source, lora, peft_meta)
    for fmt in ("peft", "diffusers"):
        target = folder / f"seed-{fmt}.safetensors"
        _quiet_main(["convert", str(source), "-o", str(target), "--to", fmt])
        from loraregistry.safetensors_io import load_tensors

        made.append(Seed(f"{fmt}_lora", dict(load_tensors(target)), dict(read_header(target).metadata)))
    return made


# --- mutations: (rng, tensors, metadata) -> None, in place --------------------------------------------------


def _pick(rng: random.Random, tensors: dict, suffixes: tuple[str, ...] = ()) -> str | None:
    keys = sorted(k for k in tensors if not suffixes or k.endswith(suffixes))
    return rng.choice(keys) if keys else None


def _cast(array: np.ndarray, name: str) -> np.ndarray:
    if name == "bfloat16":
        import ml_dtypes

        return array.astype(np.float32).astype(ml_dtypes.bfloat16)
    with np.errstate(all="ignore"):  # np.asarray: nan_to_num turns a 0-d array into a numpy scalar
        return np.asarray(np.nan_to_num(array.astype(np.float64)).clip(-1e6, 1e6).astype(name) if name in OTHER_DTYPES
                          else array.astype(np.float32).astype(name))


def m_shape(rng, tensors, metadata):
    """A new shape for one tensor: transposed, flattened, a dim off by one, an extra or missing dim, empty."""
    key = _pick(rng, tensors)
    if key is None:
        return
    a = tensors[key]
    shape = list(a.shape)
    choice = rng.randrange(8)
    if choice == 0 and a.ndim >= 2:
        tensors[key] = np.ascontiguousarray(np.swapaxes(a, 0, 1))
        return
    if choice == 1:
        tensors[key] = a.reshape(-1)
        return
    if choice == 2:
        tensors[key] = a.reshape(*shape, 1)
        return
    if choice == 3 and shape:
        tensors[key] = a.reshape(-1)[:0].reshape(*shape[:-1], 0) if len(shape) > 1 else a[:0]
        return
    if choice == 4:
        tensors[key] = np.zeros([], a.dtype) if a.ndim else np.zeros((1, 1, 1, 1, 1), a.dtype)
        return
    if shape:
        axis = rng.randrange(len(shape))
        shape[axis] = max(0, shape[axis] + rng.choice([-1, 1, 3, shape[axis]]))
        tensors[key] = np.resize(a, shape) if a.size else np.zeros(shape, a.dtype)


def m_rank(rng, tensors, metadata):
    """A module's rank: 0, up/down disagreeing, or a rank above the module's sides."""
    key = _pick(rng, tensors, (".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".lokr_w2_b"))
    if key is None:
        return
    a = tensors[key]
    if a.ndim == 0:
        return
    new = rng.choice([0, 0, 1, a.shape[0] + 1, 900])
    tensors[key] = np.resize(a, (new, *a.shape[1:])) if a.size and new else np.zeros((new, *a.shape[1:]), a.dtype)
    if rng.random() < 0.5:  # the partner too: a consistent rank-0 / rank-900 module
        for old, partner in ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
                             (".hada_w1_b", ".hada_w1_a"), (".lokr_w2_b", ".lokr_w2_a")):
            other = key.removesuffix(old) + partner if key.endswith(old) else None
            if other in tensors and tensors[other].ndim >= 2:
                p = tensors[other]
                tensors[other] = np.zeros((p.shape[0], new, *p.shape[2:]), p.dtype) + 0.01


def m_dtype(rng, tensors, metadata):
    key = _pick(rng, tensors)
    if key is not None:
        tensors[key] = _cast(tensors[key], rng.choice(FLOAT_DTYPES + OTHER_DTYPES))


def m_values(rng, tensors, metadata):
    """NaN, Inf, huge, tiny or all-zero values in one factor."""
    key = _pick(rng, tensors)
    if key is None or tensors[key].dtype.kind not in "fV" or tensors[key].size == 0:
        return
    a = tensors[key].astype(np.float32).copy()
    value = rng.choice([math.nan, math.inf, -math.inf, 6e4, 1e30, 1e-30, 0.0])
    if rng.random() < 0.3:
        a[...] = value
    else:
        a.reshape(-1)[rng.randrange(a.size)] = value
    with np.errstate(all="ignore"):
        tensors[key] = _cast(a, tensors[key].dtype.name if tensors[key].dtype.name in FLOAT_DTYPES else "float16")


def m_alpha(rng, tensors, metadata):
    """An alpha: NaN, Inf, 0, negative, huge; not a scalar; an integer or bool dtype."""
    key = _pick(rng, tensors, (".alpha",))
    if key is None:
        key = (_pick(rng, tensors) or "lora_unet_x.lora_down.weight").rsplit(".", 2)[0] + ".alpha"
    value = rng.choice([math.nan, math.inf, -math.inf, 0.0, -4.0, 1e30, 1e-30, 3.0])
    shape = rng.choice([(), (), (1,), (2,), (1, 1)])
    dtype = rng.choice(["float16", "float32", "float64", "int64", "uint8", "bool"])
    with np.errstate(all="ignore"):
        base = np.full(shape, value, np.float64)
        tensors[key] = _cast(base, dtype) if dtype != "float16" else base.astype(np.float16)


def m_drop(rng, tensors, metadata):
    """A missing half of a pair (or any other tensor)."""
    key = _pick(rng, tensors)
    if key is not None and len(tensors) > 1:
        del tensors[key]


def m_key(rng, tensors, metadata):
    """A renamed key: another suffix, another module, another prefix, or a foreign spelling."""
    key = _pick(rng, tensors)
    if key is None:
        return
    stem, _, _ = key.partition(".")
    choice = rng.randrange(6)
    if choice == 0:
        new = stem + rng.choice(KOHYA_SUFFIXES)
    elif choice == 1:
        new = key.replace("to_q", rng.choice(["to_k", "to_out_0", "ff_net_2", "nonexistent", "to_q_to_q"]), 1)
    elif choice == 2:
        new = key.replace("lora_unet", rng.choice(["lora_te", "lora_te2", "lora_transformer", "lycoris", ""]), 1)
    elif choice == 3:
        new = "unet." + Q + rng.choice([".lora_A.weight", ".lora_B.weight", ".alpha", ".lora_magnitude_vector"])
    elif choice == 4:
        new = rng.choice(["", ".", "x" * 300, "lora_unet_\u202e.lora_up.weight", "lora_unet_" + "_" * 40 + ".alpha"])
    else:
        new = key.replace(".", "..", 1)
    if new and new not in tensors:
        tensors[new] = tensors.pop(key)


def m_add_module(rng, tensors, metadata):
    """An extra role on an existing module (mid, Tucker core, DoRA scale, bias) with a plausible or wrong shape."""
    key = _pick(rng, tensors)
    if key is None:
        return
    stem = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
    role = rng.choice([".lora_mid.weight", ".hada_t1", ".hada_t2", ".dora_scale", ".lokr_w1", ".lokr_t2",
                       ".lora_up.bias", ".hada_w1_a", ".lora_down.weight"])
    shape = rng.choice([(2, 2, 3, 3), (2, 2, 1, 1), (320, 1), (1, 320), (4, 4), (320,), (2, 320), (7,)])
    tensors[stem + role] = np.full(shape, 0.01, np.float16)


def m_metadata(rng, tensors, metadata):
    """Header metadata: broken JSON, wrong types, r = 0, huge ranks claimed, NaN alphas, odd patterns."""
    key = rng.choice(["lora_adapter_metadata", "ss_network_dim", "ss_network_alpha", "ss_network_args", "lorareg",
                      "modelspec.architecture", "ss_base_model_version", "ss_network_module", "ss_tag_frequency"])
    huge = str(rng.choice([0, -1, 10**12, 2**63, 10**400]))
    peft = {"r": rng.choice([0, -3, 10**12, 2.5, "8", None, 2]),
            "lora_alpha": rng.choice([math.nan, 0, -1, 1e308, "x", 2]),
            "target_modules": rng.choice([["to_q"], "to_q", [], None, [1, 2], "(.|.)*Z"]),
            "rank_pattern": rng.choice([{}, {"to_q": 10**9}, {"(.|.)*Z": 4}, {"to_q": "x"}, [1]]),
            "alpha_pattern": rng.choice([{}, {"to_q": math.nan}, {"(.|.)*Z": 8}, {"": 1}, "x"]),
            "use_dora": rng.choice([False, True, "yes"])}
    values = {
        "lora_adapter_metadata": [json.dumps(peft), json.dumps({"unet": peft}), "{", "[]", "null", json.dumps(huge)],
        "ss_network_dim": [huge, "nan", "", "2", "-2"],
        "ss_network_alpha": ["nan", "inf", "-1", huge, "1e999"],
        "ss_network_args": ["{", json.dumps({"conv_dim": huge, "algo": "lokr", "factor": "-1"}), "[1]",
                            json.dumps({"algo": "loha", "conv_alpha": "nan"})],
        "lorareg": ["{", json.dumps({"schema_version": "1", "network": {"rank": 10**12}}), json.dumps([1]),
                    json.dumps({"schema_version": "1", "name": "\x1b[31m[/bold]"})],
        "modelspec.architecture": ["stable-diffusion-xl-v1-base/lora", "flux-1-dev/lora", "x" * 1000, ""],
        "ss_base_model_version": ["sdxl_base_v1-0", "sd_v2", "sd3", ""],
        "ss_network_module": ["lycoris.kohya", "networks.lora", "x"],
        "ss_tag_frequency": ["{", json.dumps({"a": {"b": huge}})],
    }[key]
    metadata[key] = rng.choice(values)


MUTATIONS: dict[str, Callable] = {
    "shape": m_shape, "rank": m_rank, "dtype": m_dtype, "values": m_values, "alpha": m_alpha, "drop": m_drop,
    "key": m_key, "add": m_add_module, "metadata": m_metadata,
}


def mutate(rng: random.Random, seed: Seed) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    tensors = {k: v.copy() for k, v in seed.tensors.items()}
    metadata = dict(seed.metadata)
    applied = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name = rng.choice(list(MUTATIONS))
        MUTATIONS[name](rng, tensors, metadata)
        applied.append(name)
    return tensors, metadata, applied


# --- running a case ----------------------------------------------------------------------------------------




def _quiet_main(argv: list[str]) -> tuple[int, str, str]:
    from loraregistry.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def command(operation: str, case: Path, partner: Path, output: Path) -> list[str]:
    return {
        "convert-peft": ["convert", str(case), "-o", str(output), "--to", "peft"],
        "convert-kohya": ["convert", str(case), "-o", str(output), "--to", "kohya"],
        "resize-2": ["resize", str(case), "-o", str(output), "--rank", "2"],
        "merge": ["merge", f"{case}:0.5", str(partner), "-o", str(output)],
        "fix": ["fix", str(case), "-o", str(output)],
    }[operation]


@dataclass
class Outcome:
    kind: str  # ok / check-failed / refused / crash / hang / bad-output
    exit_code: int | None = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def cause(self) -> str:
        """The distinct cause of a failure: the last traceback frame's place and the exception type."""
        lines = [line for line in self.detail.strip().splitlines() if line.strip()]
        frames = [line.strip() for line in lines if line.strip().startswith("File ")]
        last = frames[-1].split(", in ")[0].rsplit("/", 1)[-1] if frames else ""
        kind = lines[-1].split(":")[0] if lines else self.kind
        return f"{self.kind}: {kind} at {last}" if last else f"{self.kind}: {lines[0] if lines else ''}"[:160]


def run_case(operation: str, case: Path, partner: Path, timeout: float = 20.0) -> Outcome:
    """Run ``operation`` on ``case`` through the CLI in-process and judge the result (see module docstring)."""
    folder = case.parent
    output = folder / "out.safetensors"
    with contextlib.suppress(FileNotFoundError):
        output.unlink()
    before = set(os.listdir(folder))
    argv = ["--debug", *command(operation, case, partner, output)]
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            code, _, err = _quiet_main(argv[1:])
    except CaseTimeout as exc:
        return Outcome("hang", None, str(exc), time.perf_counter() - start)
    except BaseException:  # noqa: BLE001 - main() must never raise
        return Outcome("crash", None, traceback.format_exc(limit=-12), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if code not in (0, 1, 2) or "Traceback" in err or "internal error" in err:
        return Outcome("crash", code, _traceback_of(argv) if code == 70 else err, seconds)
    left = set(os.listdir(folder)) - before - {output.name}
    if left:
        return Outcome("bad-output", code, f"left behind: {sorted(left)}", seconds)
    if code != 0 and output.exists():
        return Outcome("bad-output", code, f"exit {code} but the output was written", seconds)
    if code == 0 and operation != "fix" and not output.exists():
        return Outcome("bad-output", code, "exit 0 without an output", seconds)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        names = (case.name, partner.name, output.name, str(folder))
        if len(lines) != 1 or not any(n in lines[0] for n in names):
            return Outcome("bad-output", code, f"exit-2 message is not one line naming the file: {err!r}", seconds)
    kind = {0: "ok", 1: "check-failed", 2: "refused"}[code]
    return Outcome(kind, code, err.strip()[:300], seconds)


def _traceback_of(argv: list[str]) -> str:
    """Run again with ``--debug`` to get the traceback of an exit 70."""
    try:
        _quiet_main(argv)
    except Exception:  # noqa: BLE001
        return traceback.format_exc(limit=-12)
    return "exit 70 without a traceback under --debug"


@dataclass
class Tally:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    by_operation: Counter = field(default_factory=Counter)
    mutations: Counter = field(default_factory=Counter)
    causes: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # cause -> "case i (seed, mutations): detail"
    slowest: float = 0.0
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return sum(self.outcomes[k] for k in ("crash", "hang", "bad-output"))

    def add(self, index: int, seed: Seed, operation: str, applied: list[str], outcome: Outcome) -> None:
        self.cases += 1
        self.outcomes[outcome.kind] += 1
        self.by_operation[f"{operation} {outcome.kind}"] += 1
        self.mutations.update(applied)
        self.slowest = max(self.slowest, outcome.seconds)
        self.seconds += outcome.seconds
        if outcome.kind in ("crash", "hang", "bad-output"):
            cause = outcome.cause
            self.causes[cause] += 1
            self.examples.setdefault(cause, f"case {index} ({seed.name}, {operation}, {applied}):\n{outcome.detail}")

    def merge(self, other: Tally) -> None:
        self.cases += other.cases
        self.outcomes += other.outcomes
        self.by_operation += other.by_operation
        self.mutations += other.mutations
        self.causes += other.causes
        for cause, text in other.examples.items():
            self.examples.setdefault(cause, text)
        self.slowest = max(self.slowest, other.slowest)
        self.seconds += other.seconds


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"ops:{seed}:{index}")


def build_case(index: int, seed: int, seed_files: list[Seed]) -> tuple[Seed, str, dict, dict, list[str]]:
    rng = case_rng(seed, index)
    base = seed_files[index % len(seed_files)]
    operation = OPERATIONS[(index // len(seed_files)) % len(OPERATIONS)]
    tensors, metadata, applied = mutate(rng, base)
    return base, operation, tensors, metadata, applied


def write_case(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from loraregistry.safetensors_io import write_safetensors

    write_safetensors(path, tensors, metadata)


def fuzz(seed_files: list[Seed], indices, *, seed: int, scratch: Path, out: Path | None = None,
         timeout: float = 20.0, progress: int = 0) -> Tally:
    """Run the cases ``indices`` (case i mutates seed i % len(seeds) and runs OPERATIONS[(i // len(seeds)) % 5])."""
    tally = Tally()
    folder = scratch / f"cases-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    case, partner = folder / "case.safetensors", folder / "partner.safetensors"
    write_case(partner, seed_files[0].tensors, seed_files[0].metadata)
    for index in indices:
        if progress and tally.cases and tally.cases % progress == 0:
            print(f"[{os.getpid()}] {tally.cases} cases: {dict(tally.outcomes)}", file=sys.stderr, flush=True)
        base = seed_files[index % len(seed_files)]
        operation, applied = OPERATIONS[(index // len(seed_files)) % len(OPERATIONS)], []
        try:
            base, operation, tensors, metadata, applied = build_case(index, seed, seed_files)
            write_case(case, tensors, metadata)
        except Exception:  # noqa: BLE001 - a mutation that fails, or one the writer refuses: a bug of this script
            tally.add(index, base, operation, applied, Outcome("mutator-bug", None, traceback.format_exc(limit=-12)))
            continue
        outcome = run_case(operation, case, partner, timeout)
        tally.add(index, base, operation, applied, outcome)
        if out is not None and outcome.kind in ("crash", "hang", "bad-output"):
            out.mkdir(parents=True, exist_ok=True)
            stem = out / f"{outcome.kind}-{base.name}-{operation}-{index}"
            stem.with_suffix(".safetensors").write_bytes(case.read_bytes())
            stem.with_suffix(".txt").write_text(f"{' '.join(command(operation, case, partner, case))}\n"
                                                f"mutations: {applied}\n\n{outcome.detail}\n")
    return tally


def _worker(args) -> Tally:
    indices, seed, scratch, out, timeout = args
    return fuzz(_SEEDS, indices, seed=seed, scratch=Path(scratch), out=out, timeout=timeout, progress=5000)


_SEEDS: list[Seed] = []


def report(tally: Tally, elapsed: float, jobs: int) -> str:
    lines = [f"{tally.cases} cases in {elapsed:.0f} s ({tally.cases / max(elapsed, 1e-9):.0f} cases/s, {jobs} job(s));"
             f" slowest case {tally.slowest:.2f} s",
             "outcomes: " + ", ".join(f"{k} {v}" for k, v in tally.outcomes.most_common()),
             "per operation: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.by_operation.items())),
             "mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.mutations.items())),
             f"distinct failure causes: {len(tally.causes)}"]
    for cause, count in tally.causes.most_common():
        lines.append(f"  {count:6d}  {cause}")
    for cause, example in list(tally.examples.items())[:10]:
        lines.append(f"\n{cause}\n{example[:2000]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0], "fuzz-ops-failures")
    import resource

    os.environ.setdefault("NO_COLOR", "1")
    with tempfile.TemporaryDirectory(prefix="lorareg-fuzz-ops-") as scratch:
        _SEEDS[:] = seeds(Path(scratch))
        start = time.perf_counter()
        if args.jobs > 1:
            import multiprocessing

            parts = [(range(j, args.cases, args.jobs), args.seed, scratch, args.out, args.timeout)
                     for j in range(args.jobs)]
            with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
                tallies = pool.map(_worker, parts)
            tally = Tally()
            for t in tallies:
                tally.merge(t)
        else:
            tally = fuzz(_SEEDS, range(args.cases), seed=args.seed, scratch=Path(scratch), out=args.out,
                         timeout=args.timeout, progress=5000)
        elapsed = time.perf_counter() - start
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(report(tally, elapsed, args.jobs))
    print(f"peak RSS {peak_mb:.0f} MB")
    return 1 if tally.failures or tally.outcomes["mutator-bug"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
