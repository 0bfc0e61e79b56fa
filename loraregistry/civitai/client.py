"""A small, strict client for one Civitai endpoint: no redirects (a token never follows one), capped bodies."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import LoraregError

DEFAULT_ENDPOINT = "https://civitai.com"
ENV_ENDPOINT = "CIVITAI_ENDPOINT"
ENV_TOKEN = "CIVITAI_TOKEN"
MAX_BODY = 4 << 20  # a model-version answer with its image metadata is well below this
TIMEOUT_S = 20.0
_HASH = re.compile(r"[0-9a-fA-F]{8,64}")


class CivitaiError(LoraregError):
    """Civitai answered, but not with something lorareg can use."""


class CivitaiUnreachable(CivitaiError):
    """No answer at all: offline, DNS, refused connection, timeout."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        raise CivitaiError(f"{req.full_url} answered with a redirect to {newurl}", hint="the API does not "
                           "redirect; check CIVITAI_ENDPOINT (lorareg never sends your token to another address)")


@dataclass(frozen=True)
class CivitaiClient:
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    timeout: float = TIMEOUT_S

    @classmethod
    def from_env(cls, endpoint: str | None = None) -> CivitaiClient:
        chosen = (endpoint or os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT).rstrip("/")
        if not chosen.startswith(("https://", "http://")):
            raise LoraregError(f"the Civitai endpoint {chosen!r} is not an http(s) URL",
                               hint=f"set {ENV_ENDPOINT} to e.g. {DEFAULT_ENDPOINT}")
        return cls(endpoint=chosen, token=os.environ.get(ENV_TOKEN) or None)

    def version_url(self, file_hash: str) -> str:
        return f"{self.endpoint}/api/v1/model-versions/by-hash/{file_hash}"

    def by_hash(self, file_hash: str) -> dict[str, Any] | None:
        """The model version whose file has this hash (AutoV2, SHA256, ...), or None when Civitai has none."""
        if not _HASH.fullmatch(file_hash):
            raise LoraregError(f"{file_hash!r} is not a file hash", hint="give hex digits (AutoV2 or SHA256)")
        url = self.version_url(file_hash)
        request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                       "User-Agent": "lorareg (civitai lookup)"})
        if self.token:
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(_NoRedirects())
        try:
            with opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise _status_error(url, exc.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CivitaiUnreachable(f"Civitai is unreachable at {self.endpoint} ({reason})",
                                     hint="offline? the lookup needs the network; nothing was changed") from None
        if len(body) > MAX_BODY:
            raise CivitaiError(f"{url} sent more than {MAX_BODY:,} bytes", hint="not a model-version answer")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise CivitaiError(f"{url} did not answer with JSON", hint="check CIVITAI_ENDPOINT") from None
        if not isinstance(data, dict):
            raise CivitaiError(f"{url} answered with a JSON {type(data).__name__}, expected an object")
        return data


def _status_error(url: str, code: int) -> CivitaiError:
    if code in (401, 403):
        return CivitaiError(f"{url}: HTTP {code}, the token was refused",
                            hint=f"set {ENV_TOKEN} to a valid Civitai API key, or unset it")
    if code == 429:
        return CivitaiError(f"{url}: HTTP 429, rate limited", hint="wait a minute and run it again")
    return CivitaiError(f"{url}: HTTP {code}", hint="Civitai may be down; try again later")
