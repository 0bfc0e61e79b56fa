"""Bounded HTTP through huggingface_hub's own session, whatever it is built on.

huggingface_hub 0.x hands out a ``requests.Session``, 1.x an ``httpx.Client``, 2.x an ``httpx2.Client``;
``get_session()`` is the one thing all of them export, so every request lorareg makes itself goes through
it (proxies, CA bundles and client factories the user configured keep working) and this module smooths
over the two APIs. What it adds, because a Hub-compatible server may be hostile:

* every body is read as a stream and bounded: ``read(cap)`` stops past ``cap`` bytes instead of loading
  whatever the server sends, and no compressed body is accepted (a gzip bomb would defeat the bound);
* redirects are followed here, at most ``MAX_REDIRECTS``, and the ``Authorization`` header goes only to the
  origin it was meant for;
* failures become ``HubError``s: before the response headers arrive, "cannot reach"; while the body
  streams, "the transfer broke off"; HTTP errors by the Hub's ``X-Error-Code``. Server text in messages
  is shortened, stripped of control characters and redacted (``errors.redact``).

Import only after ``env.prepare()``: it imports huggingface_hub.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers, get_session

from .. import __version__
from ..errors import LoraregError
from .errors import (
    HOSTILE_HINT,
    LOGIN_HINT,
    DownloadFailed,
    HubAuthError,
    HubError,
    HubUnreachable,
    RemoteFileNotFound,
    RepoNotFound,
    ResponseTooLarge,
    RevisionNotFound,
    remember_secret,
    server_text,
)

CHUNK = 1 << 20
JSON_CAP = 16 << 20  # model info, tree listings, search results: the Hub's largest are a few MB
ERROR_BODY_CAP = 64 << 10  # an error body is read only for its message
MAX_REDIRECTS = 5
TIMEOUT_S = 60.0  # per connect / per read; huggingface_hub's own client has none
READ_DEADLINE_S = 120.0  # a whole metadata answer (downloads are bounded by their size instead)
_REDIRECTS = (301, 302, 303, 307, 308)


def hub_headers(token: str | bool | None) -> dict[str, str]:
    """huggingface_hub's headers (user agent, the token from ``token`` or its usual sources), with the token
    remembered so that no message can show it."""
    headers = dict(build_hf_headers(token=token, library_name="lorareg", library_version=__version__))
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if auth:
        remember_secret(auth.split(" ", 1)[-1])
    headers["Accept-Encoding"] = "identity"
    return headers


@dataclass
class Response:
    """A streamed response: status and headers are here, the body is read on demand, bounded."""

    url: str
    status: int
    headers: Mapping[str, str]
    hops: list[Mapping[str, str]]  # headers of every response on the way, redirects included
    _chunks: Iterator[bytes] = field(repr=False)
    _what: str = field(repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def iter_chunks(self) -> Iterator[bytes]:
        """The body as it arrives; a transport failure midway is a ``DownloadFailed``."""
        try:
            yield from self._chunks
        except LoraregError:
            raise
        except Exception as exc:  # noqa: BLE001 - the backend's own transport errors differ per version
            if not _is_transport_error(exc):
                raise
            raise DownloadFailed(f"the transfer of {self._what} broke off ({_describe(exc)})",
                                 hint="nothing was kept; try again") from None

    def read(self, cap: int) -> bytes:
        """The whole body, refused as soon as it passes ``cap`` bytes or takes longer than ``READ_DEADLINE_S``
        (a server trickling a byte now and then would otherwise hold lorareg for ever)."""
        deadline = time.monotonic() + READ_DEADLINE_S
        declared = self.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise ResponseTooLarge(f"{self._what} is {int(declared):,} bytes, more than the {cap:,} bytes lorareg "
                                   "accepts", hint=HOSTILE_HINT)
        data = bytearray()
        for chunk in self.iter_chunks():
            data += chunk
            if time.monotonic() > deadline:
                raise HubError(f"{self._what} took more than {READ_DEADLINE_S:g} s to arrive ({len(data):,} bytes so "
                               "far)", hint="the server is overloaded, broken or hostile; try again later")
            if len(data) > cap:
                raise ResponseTooLarge(f"{self._what} is more than the {cap:,} bytes lorareg accepts",
                                       hint=HOSTILE_HINT)
        return bytes(data)

    def json(self, cap: int = JSON_CAP) -> Any:
        body = self.read(cap)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise HubError(f"{self._what} is not valid JSON", hint="check --endpoint: is it a Hub-compatible server?"
                           ) from None


NotFound = Callable[[str], HubError]


@dataclass(frozen=True)
class Where:
    """The repo, revision and file a request is about, for the messages of the Hub's errors."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None


@contextlib.contextmanager
def request(method: str, url: str, *, headers: Mapping[str, str], what: str, endpoint: str,
            data: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
            not_found: NotFound | None = None, where: Where | None = None) -> Iterator[Response]:
    """Send ``method url`` and yield the final (non-redirect, non-error) streamed ``Response``.

    ``what`` names the thing asked for in messages; ``not_found`` builds the error for a 404 that carries
    no ``X-Error-Code`` (default: ``RemoteFileNotFound``); ``where`` names repo, revision and file in the
    messages of the Hub's own errors."""
    hops: list[Mapping[str, str]] = []
    origin = _origin(url)
    current = url
    sent = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        with _open(method, current, sent, data, params, endpoint) as response:
            hops.append(response.headers)
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location and method in ("GET", "HEAD"):
                target = urljoin(current, location)
                if urlsplit(target).scheme not in ("http", "https"):
                    raise HubError(f"{endpoint} redirected {what} to a non-HTTP location",
                                   hint=HOSTILE_HINT)
                if _origin(target) != origin:  # never hand the token to another host (a CDN, or worse)
                    sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                current, params = target, None
                continue  # leaving the block closes this response
            if response.status >= 400:
                raise _http_error(response, what=what, endpoint=endpoint, not_found=not_found, where=where)
            if response.status >= 300:
                raise HubError(f"{endpoint} answered HTTP {response.status} for {what} without a usable redirect")
            encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("identity", ""):
                raise HubError(f"{endpoint} sent {what} compressed ({server_text(encoding, 40)}) though lorareg "
                               "asked for plain bytes", hint=HOSTILE_HINT)
            yield Response(current, response.status, response.headers, hops, response.chunks, what)
            return
    raise HubError(f"{endpoint} redirected {what} more than {MAX_REDIRECTS} times",
                   hint=HOSTILE_HINT)


def get_json(url: str, *, headers: Mapping[str, str], what: str, endpoint: str, params: Mapping[str, Any] | None = None,
             data: Mapping[str, Any] | None = None, method: str = "GET", not_found: NotFound | None = None,
             where: Where | None = None, cap: int = JSON_CAP) -> Any:
    """A JSON answer, read with at most ``cap`` bytes in memory."""
    with request(method, url, headers=headers, what=what, endpoint=endpoint, params=params, data=data,
                 not_found=not_found, where=where) as response:
        return response.json(cap)


# --- the two session APIs -----------------------------------------------------------------------------


@dataclass
class _Raw:
    status: int
    headers: Mapping[str, str]  # case-insensitive in both libraries
    chunks: Iterator[bytes]


@contextlib.contextmanager
def _open(method: str, url: str, headers: Mapping[str, str], data, params, endpoint: str) -> Iterator[_Raw]:
    session = get_session()
    try:
        if callable(getattr(session, "stream", None)):  # httpx / httpx2 (requests.Session.stream is a bool)
            context = session.stream(method, url, headers=dict(headers), data=data, params=params,
                                     follow_redirects=False, timeout=TIMEOUT_S)
            response = context.__enter__()
            # raw: no decompression, the bound holds on the wire bytes; no chunk size: each piece as it
            # arrives (a chunk size makes httpx wait until it has that much, and a trickle never gets there)
            chunks = response.iter_raw()
            close = lambda: context.__exit__(None, None, None)  # noqa: E731
        else:  # requests
            response = session.request(method, url, headers=dict(headers), data=data, params=params, stream=True,
                                       allow_redirects=False, timeout=TIMEOUT_S)
            chunks = _pieces(response.raw)
            close = response.close
    except LoraregError:
        raise
    except hf_errors.OfflineModeIsEnabled:
        raise HubError(f"cannot reach {endpoint}: offline mode is on", hint="unset HF_HUB_OFFLINE") from None
    except Exception as exc:  # noqa: BLE001 - the backend's transport errors
        if not _is_transport_error(exc):
            raise
        raise HubUnreachable(f"cannot reach {endpoint} ({_describe(exc)})",
                             hint="check --endpoint / HF_ENDPOINT and that the server is running") from None
    try:
        yield _Raw(response.status_code, response.headers, chunks)
    finally:
        with contextlib.suppress(Exception):
            close()


def _pieces(raw) -> Iterator[bytes]:
    """urllib3's body as it arrives (``read1``, urllib3 2.3+), else in ``CHUNK``s; never decompressed."""
    read1 = getattr(raw, "read1", None)
    if read1 is None:
        yield from raw.stream(CHUNK, decode_content=False)
        return
    while piece := read1(CHUNK, decode_content=False):
        yield piece


def transport_errors() -> tuple[type[BaseException], ...]:
    """The root transport error of the library under huggingface_hub's session, plus OSError."""
    module = importlib.import_module(type(get_session()).__module__.split(".")[0])
    roots = [getattr(module, name) for name in ("TransportError", "RequestException") if hasattr(module, name)]
    exceptions = getattr(module, "exceptions", None)  # requests keeps them in requests.exceptions
    if exceptions is not None and hasattr(exceptions, "RequestException"):
        roots.append(exceptions.RequestException)
    stream_errors = [getattr(module, n) for n in ("StreamError",) if hasattr(module, n)]
    return (*roots, *stream_errors, OSError)


def _is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, transport_errors()):
        return True
    # urllib3 errors surface unwrapped from requests' raw stream
    return type(exc).__module__.split(".")[0] in ("urllib3", "http", "h11", "httpcore")


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "no detail"
    return f"{type(exc).__name__}: {server_text(text, 200)}"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _http_error(response: _Raw, *, what: str, endpoint: str, not_found: NotFound | None,
                where: Where | None) -> HubError:
    """The Hub's error, as huggingface_hub's ``hf_raise_for_status`` reads it (``X-Error-Code`` first)."""
    code = response.headers.get("X-Error-Code")
    message = _error_message(response)
    status = response.status
    repo = f"{where.repo_id!r}" if where else what
    if code == "RevisionNotFound":
        revision = f"revision {where.revision!r}" if where and where.revision else "the revision"
        return RevisionNotFound(f"{revision} does not exist in {repo} on {endpoint}",
                                hint="give a branch, tag or commit sha of the repo")
    if code == "EntryNotFound":
        name = f"{where.filename!r} does not exist in {repo} at {where.revision or 'main'}" if where and \
            where.filename else f"{what} does not exist"
        return RemoteFileNotFound(f"{name} on {endpoint}",
                                  hint="list the repo's files on the Hub, or omit the file name")
    if code == "GatedRepo":
        return HubAuthError(f"{repo} is gated on {endpoint}: accept its conditions on the repo page", hint=LOGIN_HINT)
    if status == 404 and code == "RepoNotFound":
        return RepoNotFound(f"repo {repo} does not exist on {endpoint}",
                            hint=f"check the name; if it is private, {LOGIN_HINT}")
    if status in (401, 403):
        reason = "no valid token" if status == 401 else "the token lacks permission"
        return HubAuthError(f"{endpoint} refused access to {what} (HTTP {status}: {reason})", hint=LOGIN_HINT)
    if status == 404:
        return (not_found or RemoteFileNotFound)(f"{what} does not exist on {endpoint}")
    return HubError(f"{endpoint} answered HTTP {status} for {what}: {message}")


def _error_message(response: _Raw) -> str:
    header = response.headers.get("X-Error-Message")
    if header:
        return server_text(header)
    body = bytearray()
    with contextlib.suppress(Exception):
        for chunk in response.chunks:
            body += chunk
            if len(body) >= ERROR_BODY_CAP:
                break
    text = bytes(body[:ERROR_BODY_CAP]).decode("utf-8", "replace")
    with contextlib.suppress(ValueError, RecursionError):
        parsed = json.loads(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            text = parsed["error"]
    return server_text(text.strip().splitlines()[0] if text.strip() else "no message")
