"""Checkpoints: everything a killed run needs to continue bit for bit, written atomically.

A checkpoint is a folder ``checkpoints/step-00000040/`` with the LoRA parameters (by parameter name, in
safetensors format, named ``lora.state`` so that tools collecting ``*.safetensors`` files, ``lorareg verify`` on the
run folder, A1111 and ComfyUI among them, never take training state for an adapter), the optimizer and lr-scheduler states, every RNG state (python, numpy, torch CPU and CUDA, the trainer's noise
generator), the data position and the config that made it. It is written under a temporary name and renamed
into place, so a ``step-*`` folder is always complete; ``latest`` is the highest step.

Resuming never runs code from a checkpoint: every ``.pt`` is read with ``torch.load(weights_only=True)``
(tensors and plain values only), so the RNG states are stored as tensors, ints and tuples, not numpy
objects. A file holding anything else is refused with a one-line CheckpointError.
"""

from __future__ import annotations


import json
import os
import pickle
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

_PREFIX = "step-"
# Settings a checkpoint cannot be resumed under when they change (the state would not fit or would mean
# something else). Everything else (steps, sampling, output) may change between runs.
# ``flow`` (FLUX/SD3 timestep sampling, shift, guidance, T5 length) changes what the saved state was trained
# towards; ``model`` holds the base and its architecture.
_FIXED = ("model", "network", "data", "flow", "optim.optimizer", "train.batch_size", "train.seed",
          "optim.grad_accumulation")


@dataclass
class Position:
    """Where training stands: optimizer steps done, and the next micro-batch (epoch, index in it)."""

    step: int
    epoch: int
    batch_index: int


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save(run_dir: Path, position: Position, *, models: dict[str, Any], optimizer, scheduler, generator,
         config_json: dict[str, Any], keep: int) -> Path:
    import torch
    from safetensors.torch import save_file

    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{position.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file(trainable_state(models), str(tmp / LORA_STATE))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(generator), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"position": asdict(position), "config": config_json},
                                                   indent=2, sort_keys=True, default=str))
        _fsync_tree(tmp)
        if final.exists():  # the same step again (a resumed run repeating it): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def trainable_state(models: dict[str, Any]) -> dict[str, Any]:
    return {f"{component}/{name}": p.detach().cpu().contiguous()
            for component, model in models.items()
            for name, p in _unwrap(model).named_parameters() if p.requires_grad}


def _unwrap(model):
    return getattr(model, "module", model)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())


def _prune(root: Path, keep: int) -> None:
    for old in sorted(_steps(root))[:-keep]:
        shutil.rmtree(old[1], ignore_errors=True)
    for stale in root.glob(f".{_PREFIX}*"):  # temp folders of a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


def _steps(root: Path) -> list[tuple[int, Path]]:
    found = []
    for path in root.glob(f"{_PREFIX}*"):
        if path.is_dir() and (path / "state.json").is_file():
            try:
                found.append((int(path.name[len(_PREFIX):]), path))
            except ValueError:
                continue
    return found


def resolve(run_dir: Path, spec: str) -> Path:
    """``latest`` -> the newest checkpoint of this run; anything else is a checkpoint folder path."""
    if spec == "latest":
        steps = _steps(checkpoint_dir(run_dir))
        if not steps:
            raise CheckpointError("no checkpoint to resume from", path=checkpoint_dir(run_dir),
                                  hint="set train.checkpoint_every, or start without --resume")
        return max(steps)[1]
    path = Path(spec).expanduser()
    if not (path / "state.json").is_file():
        raise CheckpointError("not a checkpoint folder (no state.json)", path=path,
                              hint="pass --resume latest or a checkpoints/step-* folder")
    return path


def load(path: Path, *, models: dict[str, Any], optimizer, scheduler, generator,
         config_json: dict[str, Any]) -> Position:
    """Restore a checkpoint into live objects; refuses one made under incompatible settings or holding
    anything but tensors and plain values (nothing is restored then)."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    _check_compatible(path, state["config"], config_json)
    saved = load_file(str(path / LORA_STATE))
    optimizer_state = load_plain(path / "optimizer.pt")  # every file is read before anything is restored
    scheduler_state = load_plain(path / "scheduler.pt")
    rng = load_plain(path / "rng.pt")
    if not isinstance(rng, dict) or rng.get("format") != _RNG_FORMAT:
        raise CheckpointError("holds RNG state in a layout this lorareg does not read (written by an older "
                              "version?)", path=path / "rng.pt", hint="start a new run without --resume")
    _check_parameters(path, saved, models)
    with torch.no_grad():
        for component, model in models.items():
            for name, p in _unwrap(model).named_parameters():
                if p.requires_grad:
                    p.copy_(saved[f"{component}/{name}"])
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    _restore_rng(rng, generator)
    return Position(**state["position"])


# Version of the rng.pt layout: plain values and tensors only, so weights_only loading accepts it.
LORA_STATE = "lora.state"  # safetensors bytes; not *.safetensors (see module docstring)
_RNG_FORMAT = 2
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]{1,200})")


def _rng_state(generator) -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"format": _RNG_FORMAT, "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(rng: dict[str, Any], generator) -> None:
    import numpy as np
    import torch

    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_plain(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain values (``weights_only=True``): a checkpoint can never
    run code. Anything else is a one-line CheckpointError naming the file."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError("is missing from the checkpoint", path=path,
                              hint="resume from a complete checkpoints/step-* folder") from None
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED.search(str(exc))
        what = f" ({found[1]})" if found else ""
        raise CheckpointError(f"refused: it holds a pickled object outside the allowed types{what}; lorareg "
                              "loads only tensors and plain values from checkpoints", path=path,
                              hint="resume only from checkpoints lorareg wrote, or start without --resume") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot be read ({first})", path=path,
                              hint="the checkpoint is damaged; resume from another one") from None


def _check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    for dotted in _FIXED:
        if "." not in dotted and dotted not in saved:
            continue  # a section newer than the checkpoint (``flow``): its runs had nothing to set there
        old, new = _get(saved, dotted), _get(current, dotted)
        if old != new:
            where, old, new = _first_difference(dotted, old, new)
            raise CheckpointError(f"was made with a different {where} ({_short(old)} -> {_short(new)})", path=path,
                                  hint="resume with the config the run started with, or start a new run")


def _first_difference(dotted: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """The first setting inside a section that differs (``flow.shift``), so the message names it."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{dotted}.{key}", old.get(key), new.get(key)
    return dotted, old, new


def _check_parameters(path: Path, saved: dict[str, Any], models: dict[str, Any]) -> None:
    """The live LoRA layers are the saved ones, same names and shapes; else one line (a base of another
    architecture behind the same ``model.base`` path, say), and nothing is restored."""
    live = {f"{component}/{name}": tuple(p.shape) for component, model in models.items()
            for name, p in _unwrap(model).named_parameters() if p.requires_grad}
    stored = {name: tuple(tensor.shape) for name, tensor in saved.items()}
    if live != stored:
        odd = sorted(set(live) ^ set(stored)) or sorted(n for n in live if live[n] != stored[n])
        raise CheckpointError(f"holds LoRA parameters that do not fit the model being trained ({len(stored)} saved, "
                              f"{len(live)} now; first difference: {odd[0][:120]}): the base changed", path=path,
                              hint="resume with the base the run started with, or start a new run")


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) < 80 else text[:77] + "..."
