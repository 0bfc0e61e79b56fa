"""A cap on the answers ``HfApi`` reads while lorareg uploads through it.

Uploads go through ``HfApi.create_repo`` / ``create_commit`` (LFS batch, uploads, the commit itself), which
read every answer whole (and, in huggingface_hub 0.x, ask for the repo info too). A hostile endpoint could
answer with gigabytes. While ``capped_answers`` is active, every answer from the endpoint's origin passes
through a counter that stops it at the cap: a response hook on huggingface_hub's session wraps the body
stream before the body is read (``httpx``/``httpx2``: ``Response.stream``; ``requests``: ``Response.raw``).
The session is shared (per thread in 0.x): a file another thread downloads from the same endpoint with
huggingface_hub during a push is capped too; LFS uploads that huggingface_hub 0.x runs in worker threads
are not.

Import only after ``env.prepare()``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from huggingface_hub.utils import get_session

from .errors import HOSTILE_HINT, ResponseTooLarge


@contextlib.contextmanager
def capped_answers(endpoint: str, cap: int) -> Iterator[None]:
    session = get_session()
    origin = _origin(endpoint)
    if callable(getattr(session, "stream", None)):  # httpx / httpx2
        base = importlib.import_module(type(session).__module__.split(".")[0]).SyncByteStream
        hook = _httpx_hook(base, origin, cap)
        hooks = session.event_hooks["response"]
    else:  # requests
        hook = _requests_hook(origin, cap)
        hooks = session.hooks["response"]
    hooks.append(hook)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            hooks.remove(hook)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(str(url))
    return parts.scheme.lower(), parts.netloc.lower()


def _watched(url: str, origin: tuple[str, str]) -> bool:
    return _origin(url) == origin


def _counted(chunks, cap: int, url: str) -> Iterator[bytes]:
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > cap:
            raise ResponseTooLarge(f"{_origin(url)[1]} answered with more than the {cap:,} bytes "
                                   "lorareg accepts", hint=HOSTILE_HINT)
        yield chunk


def _httpx_hook(base: type, origin: tuple[str, str], cap: int):
    class Capped(base):  # the library checks isinstance(stream, SyncByteStream)
        def __init__(self, inner, url: str) -> None:
            self._inner, self._url = inner, url

        def __iter__(self) -> Iterator[bytes]:
            yield from _counted(self._inner, cap, self._url)

        def close(self) -> None:
            self._inner.close()

    def hook(response) -> None:
        request = response.request
        if _watched(str(request.url), origin):
            response.stream = Capped(response.stream, str(request.url))

    return hook


def _requests_hook(origin: tuple[str, str], cap: int):
    class Capped:
        def __init__(self, inner, url: str) -> None:
            self._inner, self._url = inner, url

        def stream(self, amt=2**16, decode_content=None) -> Iterator[bytes]:
            try:
                yield from _counted(self._inner.stream(amt, decode_content=decode_content), cap, self._url)
            except ResponseTooLarge:
                self._inner.close()  # drop the connection: releasing it would first drain the rest of the body
                raise

        def __getattr__(self, name: str):
            return getattr(self._inner, name)

    def hook(response, *args, **kwargs):
        if _watched(response.url, origin):
            response.raw = Capped(response.raw, response.url)
        return response

    return hook
