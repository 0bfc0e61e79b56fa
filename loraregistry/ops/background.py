"""A function run on a thread whose result (or exception) the caller collects: for work that releases the GIL
(hashlib, file writes, fsync) beside the caller's own. Leaner than ``concurrent.futures``, which an operation
would import for one worker."""

from __future__ import annotations

import threading
from typing import Any


class Background(threading.Thread):
    """``function(*args)`` on a thread; ``result()`` waits and returns it, or raises what it raised."""

    def __init__(self, function, args) -> None:
        super().__init__(daemon=True)
        self._function, self._args = function, args
        self._value: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._function(*self._args)
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value
