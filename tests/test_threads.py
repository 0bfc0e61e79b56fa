"""Thread-count choice: --threads, then OMP_NUM_THREADS, then the cores idle now; applied before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loraregistry import threads


@pytest.mark.parametrize(("argv", "expected"), [
    (["--threads", "3", "train"], 3),
    (["train", "--threads=2", "--config", "x.toml"], 2),
    (["--threads", "0", "train"], None),  # not a count: click refuses it later
    (["--threads", "many"], None),
    (["train", "--config", "x.toml"], None),
    (["--threads"], None),
])
def test_requested_in(argv, expected):
    assert threads.requested_in(argv) == expected


def test_precedence(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.pick_threads(2) == 2
    assert threads.pick_threads(None) == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "idle_cores", lambda: 1.2)
    assert threads.pick_threads(None) == 1
    monkeypatch.setattr(threads, "idle_cores", lambda: 0.1)
    assert threads.pick_threads(None) == 1  # never zero
    monkeypatch.setattr(threads, "idle_cores", lambda: 7.9)
    assert threads.pick_threads(None) == 4  # never more than this process may use
    monkeypatch.setattr(threads, "idle_cores", lambda: None)
    assert threads.pick_threads(None) == 4


def test_idle_cores_is_measured_here():
    idle = threads.idle_cores(0.02)
    assert idle is None or 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def _child(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """Run lorareg's main() in a fresh process and report the thread settings torch would start with."""
    code = ("import json, os, sys\n"
            "from loraregistry.cli import main\n"
            "main(sys.argv[1:])\n"
            "print(json.dumps({k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', "
            "'OMP_WAIT_POLICY')} | {'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_sets_the_count_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS + ("OMP_WAIT_POLICY",)}
    seen = _child(["--threads", "1", "schema", "--help"], env)
    assert seen["OMP_NUM_THREADS"] == seen["OPENBLAS_NUM_THREADS"] == "1" and seen["OMP_WAIT_POLICY"] == "PASSIVE"
    assert seen["torch"] is False
    user = _child(["resize", "--help"], dict(env, OMP_NUM_THREADS="3"))
    assert user["OMP_NUM_THREADS"] == "3"  # the user's setting stands
    quiet = _child(["inspect", "--help"], env)
    assert quiet["OMP_NUM_THREADS"] is None  # header-level commands do not sample or set anything
