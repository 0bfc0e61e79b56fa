"""Hub errors: one per failure, each saying what to do next. Tokens never appear in messages.

A server may echo the ``Authorization`` header into its error text, so every ``HubError`` passes its
message, hint and path through ``redact``: the tokens lorareg sent (remembered when the headers are built),
anything shaped like a Hugging Face token (``hf_...``) and any ``Bearer ...`` value become ``***``.
"""

from __future__ import annotations

import re
import threading

from ..errors import LoraregError

LOGIN_HINT = "log in with `hf auth login` or pass --token"
HOSTILE_HINT = "the server is broken or hostile; use another endpoint"

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
# Hub tokens (hf_ + 30-odd letters and digits), OAuth ones (hf_oauth_...), and whatever follows "Bearer".
_TOKEN_SHAPES = re.compile(r"\bhf_[A-Za-z0-9_]{8,}|(?i:bearer)\s+\S+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def remember_secret(secret: str | None) -> None:
    """A token that must never appear in a message (tokens under 4 characters are not redacted: too common)."""
    if secret and len(secret) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(secret)


def redact(text: str) -> str:
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    return _TOKEN_SHAPES.sub(lambda m: "Bearer ***" if m.group().lower().startswith("bearer") else "hf_***", text)


def server_text(text: str, limit: int = 300) -> str:
    """Text a server chose, fit for one terminal line: control characters visible, shortened, redacted."""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else
                         f"\\u{ord(m.group()):04x}", text)
    shown = redact(shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class HubError(LoraregError):
    """Root of the errors talking to a Hub endpoint."""

    def __init__(self, message: str, *, path=None, hint: str | None = None) -> None:
        super().__init__(redact(message), path=redact(str(path)) if path is not None else None,
                         hint=redact(hint) if hint is not None else None)


class InvalidRepoId(HubError, ValueError):
    """A repo id that cannot name a Hub repository."""


class UnsafeFileName(HubError, ValueError):
    """A file name that would escape the target folder (``..``, absolute, backslashes)."""


class HubAuthError(HubError):
    """401/403: no token, a wrong one, or one without the needed permission."""


class RepoNotFound(HubError):
    pass


class RevisionNotFound(HubError):
    pass


class RemoteFileNotFound(HubError):
    pass


class AmbiguousFile(HubError):
    """``pull REPO`` without a file, and the repo holds several top-level .safetensors files."""


class HubUnreachable(HubError):
    """The endpoint does not answer (connection refused, DNS, timeout)."""


class DownloadFailed(HubError):
    """The transfer broke off; nothing was kept."""


class HashMismatch(HubError):
    """The downloaded bytes are not the ones the Hub's LFS oid names; the file was deleted."""


class ResponseTooLarge(HubError):
    """A response longer than lorareg accepts (the declared file size, or the cap on metadata answers)."""


class UntrustedServerData(HubError):
    """The server sent an identifier that is not what it must be (a commit sha that is no sha, an oid that is
    no hash, a commit other than the pinned one): refused before it reaches the filesystem."""


class PushRefused(HubError):
    """verify found errors: nothing was uploaded."""

    def __init__(self, path: str, findings: list) -> None:
        self.findings = findings
        listed = "; ".join(f"{f.code} {f.message}" for f in findings[:5])
        more = f" (and {len(findings) - 5} more)" if len(findings) > 5 else ""
        super().__init__(f"verify found {len(findings)} error(s), nothing was uploaded: {listed}{more}", path=path,
                         hint="fix them (see `lorareg verify`) and push again")


class RemoteHeaderError(HubError):
    """The server does not serve byte ranges, or answered with something that is no safetensors header."""
