"""What both fuzzers (fuzz_verify.py, fuzz_ops.py) share: a per-case time limit."""

from __future__ import annotations

import contextlib
import signal
import threading


class CaseTimeout(BaseException):
    """A BaseException, so that lorareg's own catch-all (which turns an Exception into exit 70) lets it through
    and the case counts as a hang, not a crash."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt a case that runs over ``seconds`` (SIGALRM: main thread only; elsewhere, no guard)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_args(argv: list[str] | None, description: str, default_out: str):
    """The command line both fuzzers take."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    parser.add_argument("--out", type=Path, default=Path(default_out), help="where crash/hang reproducers go")
    return parser.parse_args(argv)
