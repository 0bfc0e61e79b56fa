"""Hub errors: one per failure, each saying what to do next. Tokens never appear in messages."""

from __future__ import annotations

from ..errors import LoraregError

LOGIN_HINT = "log in with `hf auth login` or pass --token"


class HubError(LoraregError):
    """Root of the errors talking to a Hub endpoint."""


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
