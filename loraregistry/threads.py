"""How many CPU threads torch and BLAS use, chosen so that a busy machine does not make them collapse.

OpenMP and OpenBLAS start one thread per core and spin while they wait for each other. When another process
holds a core, a spinning thread waits for one that is not running: 60 tiny training steps took 72-89 s on a busy
2-core machine against 4 s with one thread. So, unless told otherwise, lorareg uses the cores that are idle
*now* (sampled from /proc/stat over a few tens of milliseconds), at least one, and lets waiting threads sleep
instead of spin (``OMP_WAIT_POLICY=PASSIVE``).

Precedence: ``--threads N`` (given to ``lorareg`` or ``lorareg train``), then ``OMP_NUM_THREADS`` as the user
set it, then the idle-core count. The variables must be set before torch or numpy load their thread pools,
which is why the CLI calls ``configure`` first thing.
"""

from __future__ import annotations

import os
import sys
import time

ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_SAMPLE_SECONDS = 0.05


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    values = [int(v) for v in fields[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values)


def idle_cores(sample_seconds: float = _SAMPLE_SECONDS) -> float | None:
    """How many cores were idle during a short sample; None when it cannot be measured."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    idle_share = (second[0] - first[0]) / (second[1] - first[1])
    return idle_share * (os.cpu_count() or 1)


def pick_threads(requested: int | None = None) -> int:
    """The thread count to use (see module docstring for the precedence)."""
    if requested is not None:
        return max(1, int(requested))
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env)
    cores = usable_cores()
    idle = idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))


def configure(requested: int | None = None) -> int:
    """Choose the count and apply it: environment for pools not started yet, torch's setter if it is loaded."""
    n = pick_threads(requested)
    for var in ENV_VARS:
        if requested is not None or var not in os.environ:
            os.environ[var] = str(n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


def requested_in(argv: list[str]) -> int | None:
    """The value of ``--threads N`` / ``--threads=N`` in a command line, if any (validated by click later)."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None
