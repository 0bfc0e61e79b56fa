"""fork_map (cli/fork_map.py) gives what a loop gives: the results in order, or the first item's exception; and
``lorareg verify`` over many files prints the same through it as file by file."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from loraregistry.cli import main
from loraregistry.cli import verify_run
from loraregistry.cli.fork_map import RemoteTraceback, WorkerLost, fork_map
from tests.adapters import KNOWN_BAD_ADAPTERS, lora_tensors, write_adapter

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork_map runs a plain loop without fork")


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


# 2500 items: more than the job numbers a pipe holds, so a job is several items
@pytest.mark.parametrize(("items", "processes"), [(0, 3), (1, 3), (2, 3), (3, 3), (50, 2), (50, 4), (2500, 3),
                                                  (50, 1)])
def test_results_come_back_in_order(items, processes):
    results = fork_map(_pid_and_square, list(range(items)), processes)
    assert [square for _, square in results] == [x * x for x in range(items)]
    pids = {pid for pid, _ in results}
    assert len(pids) <= max(1, min(processes, items))  # each job in one process, this one included


class Odd(ValueError):
    pass


def _fail_on_odd_from(start: int):
    def fn(x: int) -> int:
        if x >= start and x % 2:
            raise Odd(f"item {x}")
        return x

    return fn


@pytest.mark.parametrize("start", [0, 17, 38])
def test_the_first_failing_item_in_order_raises(start):
    with pytest.raises(Odd, match=f"^item {start + 1 if start % 2 == 0 else start}$") as caught:
        fork_map(_fail_on_odd_from(start), list(range(40)), 3)
    cause = caught.value.__cause__
    assert cause is None or (isinstance(cause, RemoteTraceback) and "Odd: item" in str(cause))


def _in_parent_wait_for_a_worker(marker: Path, timeout: float = 30.0) -> None:
    """Hold this process's first item until a worker has drawn one, so that workers surely take part."""
    deadline = time.monotonic() + timeout
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert marker.exists(), "no worker drew a job"


def _split(parent_does, worker_does, marker: Path):
    parent = os.getpid()

    def fn(x: int):
        if os.getpid() == parent:
            _in_parent_wait_for_a_worker(marker)
            return parent_does(x)
        marker.write_text(str(os.getpid()))
        return worker_does(x)

    return fn


def test_a_result_that_cannot_be_sent_back_is_an_error_for_that_item(tmp_path):
    fn = _split(lambda x: x, lambda x: (lambda: x), tmp_path / "started")  # a lambda does not pickle
    with pytest.raises(RuntimeError, match="could not be sent back from a worker process"):
        fork_map(fn, list(range(40)), 2)


def test_a_killed_worker_is_an_error_not_a_hang(tmp_path):
    fn = _split(lambda x: x, lambda x: os.kill(os.getpid(), signal.SIGKILL), tmp_path / "started")
    with pytest.raises(WorkerLost):
        fork_map(fn, list(range(40)), 2)


def test_an_interrupt_here_stops_and_reaps_the_workers(tmp_path):
    marker = tmp_path / "started"

    def interrupted(x):
        raise KeyboardInterrupt

    def slow(x):
        time.sleep(0.05)
        return x

    with pytest.raises(KeyboardInterrupt):
        fork_map(_split(interrupted, slow, marker), list(range(200)), 3)
    worker = int(marker.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped: not even a zombie is left
        os.kill(worker, 0)


# --- lorareg verify over many files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    paths = []
    for i in range(12):
        paths.append(write_adapter(folder / f"good{i:02d}.safetensors", lora_tensors("sd1", rank=2, seed=i),
                                   {"modelspec.trigger_phrase": "sks", "modelspec.license": "mit"}))
    for bad in KNOWN_BAD_ADAPTERS[:12]:
        paths.append(bad.build(folder))
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 12)
    return [str(p) for p in paths] + [str(garbage), str(folder / "missing.safetensors")]


@pytest.mark.parametrize("args", [["--json"], ["--no-tensors", "--json", "--strict"], ["-q"],
                                  ["--format", "github", "--target", "all"]])
def test_many_files_print_the_same_forked_and_one_by_one(args, many, capsys, monkeypatch):
    assert len(many) >= verify_run._PARALLEL_FROM
    monkeypatch.setattr(verify_run, "_PARALLEL_FROM", 1)
    forked = main(["verify", *args, *many]), capsys.readouterr()
    monkeypatch.setattr(verify_run, "_PARALLEL_FROM", 10**9)
    in_order = main(["verify", *args, *many]), capsys.readouterr()
    assert forked == in_order
    assert forked[0] == 2  # the missing file
    if "--json" in args:
        assert len(json.loads(forked[1].out)["files"]) == len(many) - 1
