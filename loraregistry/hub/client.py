"""The one place that builds ``HfApi`` clients (for uploads) and turns huggingface_hub's errors into ``HubError``s.

Works with huggingface_hub 0.34 to 2.x: nothing here imports the HTTP library under it (requests, httpx or
httpx2); its error classes are looked up through the session huggingface_hub hands out. Reads do not use
``HfApi`` (see ``api``): its answers are unbounded and its cache trusts server-sent names.

Import this module only after ``env.prepare()``: it imports huggingface_hub.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from huggingface_hub import HfApi
from huggingface_hub import errors as hf_errors

from .. import __version__
from .transport import transport_errors
from ..errors import LoraregError
from .errors import (
    LOGIN_HINT,
    DownloadFailed,
    HubAuthError,
    HubError,
    HubUnreachable,
    InvalidRepoId,
    RemoteFileNotFound,
    RepoNotFound,
    RevisionNotFound,
    server_text,
)

# huggingface_hub 1.x+ says RemoteEntryNotFoundError; 0.x only has EntryNotFoundError (LocalEntryNotFoundError,
# raised for a cache miss offline, is a subclass there and is told apart below).
_REMOTE_ENTRY_NOT_FOUND = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)


def hub_api(endpoint: str, token: str | bool | None) -> HfApi:
    """``token=None`` uses huggingface_hub's usual sources (``HF_TOKEN``, the saved login)."""
    from .transport import hub_headers

    hub_headers(token)  # remembers the token that will be sent, so that no message can show it
    return HfApi(endpoint=endpoint, token=token, library_name="lorareg", library_version=__version__)


@contextlib.contextmanager
def default_endpoint(endpoint: str) -> Iterator[None]:
    """Make ``endpoint`` huggingface_hub's default while the block runs.

    huggingface_hub before 1.0 parses some URLs it gets back against ``constants.ENDPOINT`` instead of the
    ``HfApi``'s own endpoint (``CommitInfo.repo_url``): against any endpoint other than the default, every
    ``create_commit`` then raised "Unable to retrieve user and repo ID". Restored afterwards."""
    from huggingface_hub import constants

    previous = constants.ENDPOINT
    constants.ENDPOINT = endpoint
    try:
        yield
    finally:
        constants.ENDPOINT = previous


@contextlib.contextmanager
def hub_errors(*, endpoint: str, repo_id: str | None = None, revision: str | None = None,
               filename: str | None = None) -> Iterator[None]:
    """Re-raise anything huggingface_hub or the transport raises as a specific ``HubError``."""
    try:
        yield
    except LoraregError:
        raise
    except Exception as exc:
        ours = _lorareg_cause(exc)
        if ours is not None:  # raised by lorareg inside huggingface_hub (bounded.py), which wrapped it
            raise ours from None
        translated = translate(exc, endpoint=endpoint, repo_id=repo_id, revision=revision, filename=filename)
        if translated is None:
            raise
        raise translated from None


def _lorareg_cause(exc: BaseException) -> LoraregError | None:
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return None
        if isinstance(current, LoraregError):
            return current
        current = current.__cause__ or current.__context__
    return None


def translate(exc: BaseException, *, endpoint: str, repo_id: str | None = None, revision: str | None = None,
              filename: str | None = None) -> HubError | None:
    repo = f"{repo_id!r}" if repo_id else "the repo"
    where = f"on {endpoint}"
    connection = _connection_problem(exc)
    if connection is not None:
        return HubUnreachable(f"cannot reach {endpoint} ({connection})",
                              hint="check --endpoint / HF_ENDPOINT and that the server is running")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubError(f"cannot reach {endpoint}: offline mode is on", hint="unset HF_HUB_OFFLINE")
    if isinstance(exc, hf_errors.HFValidationError):
        return InvalidRepoId(server_text(str(exc).splitlines()[0] if str(exc) else "invalid repo id"))
    status = _status(exc)
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return RevisionNotFound(f"revision {revision!r} does not exist in {repo} {where}",
                                hint="give a branch, tag or commit sha of the repo")
    if isinstance(exc, _REMOTE_ENTRY_NOT_FOUND) and not isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return RemoteFileNotFound(f"{filename!r} does not exist in {repo} at {revision or 'main'} {where}",
                                  hint="list the repo's files on the Hub, or omit the file name")
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubAuthError(f"{repo} is gated {where}: accept its conditions on the repo page",
                            hint=LOGIN_HINT)
    if isinstance(exc, hf_errors.RepositoryNotFoundError) and status == 404:
        return RepoNotFound(f"repo {repo} does not exist {where}",
                            hint=f"check the name; if it is private, {LOGIN_HINT}")
    if status in (401, 403) or isinstance(exc, hf_errors.RepositoryNotFoundError):
        reason = "no valid token" if status == 401 else "the token lacks permission"
        return HubAuthError(f"{endpoint} refused access to {repo} (HTTP {status}: {reason})", hint=LOGIN_HINT)
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return HubError(f"{endpoint} answered HTTP {status} for {repo}: {_server_message(exc)}")
    if isinstance(exc, transport_errors()) and not isinstance(exc, LoraregError):
        return DownloadFailed(f"the transfer from {endpoint} broke off ({type(exc).__name__}: "
                              f"{server_text(str(exc).splitlines()[0]) if str(exc) else 'no detail'})",
                              hint="nothing was kept; try again")
    return None


def _connection_problem(exc: BaseException) -> str | None:
    """The connection failure anywhere in the cause chain (hf_hub_download wraps it in LocalEntryNotFoundError)."""
    seen = 0
    current: BaseException | None = exc
    connect_errors = _connect_errors()
    while current is not None and seen < 10:
        if isinstance(current, connect_errors):
            return server_text(str(current).splitlines()[0]) if str(current) else "connection refused"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _connect_errors() -> tuple[type[BaseException], ...]:
    """Failures to connect, in the library under huggingface_hub's session (httpx2, httpx or requests)."""
    import importlib

    from huggingface_hub.utils import get_session

    module = importlib.import_module(type(get_session()).__module__.split(".")[0])
    names = ("ConnectError", "ConnectTimeout", "ConnectionError")
    found = [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    exceptions = getattr(module, "exceptions", None)  # requests.exceptions.ConnectionError
    found += [getattr(exceptions, n) for n in names if isinstance(getattr(exceptions, n, None), type)]
    return tuple(found) or (ConnectionRefusedError,)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _server_message(exc: BaseException) -> str:
    message = getattr(exc, "server_message", None) or (str(exc).splitlines()[0] if str(exc) else "no message")
    return server_text(message)
