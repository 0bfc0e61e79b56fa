"""``fork_map``: a function over a list, shared by this process and forked copies of it; results in order.

Made for many small jobs after a warm-up here (``lorareg verify`` over many files: the first file loads the
fingerprints and key indexes that the copies then share). Leaner than concurrent.futures for that: no
multiprocessing import (~20 ms), no threads, and this process works too instead of waiting. Every process draws
job numbers from one pipe, so a slow item holds up only the process that drew it; each copy pickles its results
back once, when the pipe is empty, and leaves with ``os._exit`` (no flush of inherited buffers, no atexit
handlers, no teardown).

What goes wrong is told as in a loop: the exception of the first item (in order) that raised one is raised here,
with the copy's traceback attached as its cause.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

_JOB_BYTES = 2
# Every job number is written before any process starts reading, so they must fit in a pipe at once: 2 KB is
# half a page, the least a pipe holds anywhere (Linux shrinks pipes to one page for a user over its quota).
_MAX_JOBS = 1024


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a forked copy (shown with ``--debug`` as the cause)."""

    def __str__(self) -> str:
        return self.args[0]


class WorkerLost(RuntimeError):
    """A forked copy ended without sending its results back (killed, out of memory)."""


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any], processes: int) -> list[Any]:
    """``[fn(item) for item in items]``, computed by this process and ``processes - 1`` forked copies."""
    if processes < 2 or len(items) < 2 or not hasattr(os, "fork"):
        return [fn(item) for item in items]
    per_job = -(-len(items) // _MAX_JOBS)
    jobs = -(-len(items) // per_job)
    read_jobs, write_jobs = os.pipe()
    _write_all(write_jobs, b"".join(j.to_bytes(_JOB_BYTES, "little") for j in range(jobs)))
    os.close(write_jobs)  # before any fork: once the pipe is empty, every reader sees its end
    children: list[tuple[int, int]] = []
    try:
        for _ in range(min(processes, jobs) - 1):
            read_results, write_results = os.pipe()
            pid = os.fork()
            if pid == 0:  # the copy: never returns
                _child(fn, items, per_job, read_jobs, write_results)
            os.close(write_results)
            children.append((pid, read_results))
        outcomes = dict(_draw(fn, items, per_job, read_jobs))
        while children:
            pid, read_results = children[0]
            data = _read_all(read_results)
            children.pop(0)
            os.close(read_results)
            os.waitpid(pid, 0)
            try:
                outcomes.update(pickle.loads(data))
            except Exception as exc:  # an empty or cut-off message: the copy died on the way
                raise WorkerLost("a worker process ended without sending its results (killed, or out of "
                                 "memory?)") from exc
    except BaseException:
        for pid, read_results in children:  # an interrupt, or a copy lost: the others stop too
            _stop(pid, read_results)
        raise
    finally:
        os.close(read_jobs)
    if len(outcomes) != len(items):
        raise WorkerLost("a worker process ended without sending all its results")
    results = []
    for i in range(len(items)):
        ok, value = outcomes[i]
        if not ok:
            exc, remote_traceback = value
            if remote_traceback is not None:
                exc.__cause__ = RemoteTraceback(remote_traceback)
            raise exc
        results.append(value)
    return results


def _draw(fn, items, per_job: int, read_jobs: int):
    """(index, (True, result) or (False, (exception, None))) for each item of each job drawn from the pipe."""
    while True:
        number = os.read(read_jobs, _JOB_BYTES)  # pipe reads are atomic: each job goes to one process
        if not number:
            return
        start = int.from_bytes(number, "little") * per_job
        for i in range(start, min(start + per_job, len(items))):
            try:
                yield i, (True, fn(items[i]))
            except Exception as exc:
                yield i, (False, (exc, None))


def _child(fn, items, per_job: int, read_jobs: int, write_results: int) -> None:
    code = 1
    try:
        _write_all(write_results, _pickled([(i, _sendable(outcome))
                                            for i, outcome in _draw(fn, items, per_job, read_jobs)]))
        os.close(write_results)  # the parent reads its end now, not once this process's memory is torn down
        code = 0
    finally:  # whatever happened (an interrupt included), leave without running the parent's code
        os._exit(code)


def _sendable(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    """A failure with its traceback as text (a pickled exception loses it), and one that does not survive
    pickling replaced by an error that says what it was."""
    ok, value = outcome
    if ok:
        return outcome
    import traceback

    exc = value[0]
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
    except Exception as problem:
        exc = RuntimeError(f"{type(exc).__name__}: {exc} (raised in a worker process, and not sendable: "
                           f"{problem})")
    return False, (exc, text)


def _pickled(outcomes: list) -> bytes:
    """The outcomes pickled; a result that cannot be becomes the error saying so (as concurrent.futures does)."""
    try:
        return pickle.dumps(outcomes, pickle.HIGHEST_PROTOCOL)
    except Exception:
        sendable = []
        for i, outcome in outcomes:
            try:
                pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                outcome = (False, (RuntimeError(f"a result could not be sent back from a worker process: {exc}"),
                                   None))
            sendable.append((i, outcome))
        return pickle.dumps(sendable, pickle.HIGHEST_PROTOCOL)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _stop(pid: int, read_results: int) -> None:
    import signal

    for step in (lambda: os.kill(pid, signal.SIGKILL), lambda: os.waitpid(pid, 0), lambda: os.close(read_results)):
        try:
            step()
        except OSError:  # already gone, already reaped
            pass
