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
