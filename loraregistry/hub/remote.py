"""Read a remote safetensors header with two HTTP range requests: the 8-byte length, then the header.

No tensor byte is fetched, however large the file. Works for ``hf://user/repo/file.safetensors[@rev]``
(resolved against the endpoint) and any ``https://`` URL of a server that honours ``Range``. The token is
sent only to the Hub endpoint, never to other hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..safetensors_io import DEFAULT_HEADER_CAP, SafetensorsHeader, header_length, parse_header
from . import env
from .errors import RemoteHeaderError
from .uri import parse_hf_uri


@dataclass(frozen=True)
class RemoteHeader:
    url: str
    header: SafetensorsHeader
    file_size: int | None
    bytes_read: int  # what the two requests transferred: 8 + header length


def resolve_url(uri: str, *, endpoint: str, revision: str | None = None) -> str:
    if uri.startswith("hf://"):
        spec = parse_hf_uri(uri)
        rev = revision or spec.revision or "main"
        return f"{endpoint}/{spec.repo_id}/resolve/{quote(rev, safe='')}/{quote(spec.filename or '')}"
    if uri.startswith(("https://", "http://")):
        return uri
    raise RemoteHeaderError(f"{uri!r} is neither an hf:// URI nor an http(s) URL",
                            hint="use hf://user/repo/file.safetensors or https://host/path/file.safetensors")


def read_remote_header(uri: str, *, endpoint: str | None = None, token: str | None = None,
                       revision: str | None = None, cap: int = DEFAULT_HEADER_CAP) -> RemoteHeader:
    """Fetch and validate only the header of a remote safetensors file."""
    endpoint = env.prepare(endpoint)
    url = resolve_url(uri, endpoint=endpoint, revision=revision)
    from huggingface_hub.utils import build_hf_headers

    from .client import hub_errors

    same_host = urlsplit(url).netloc == urlsplit(endpoint).netloc
    headers = build_hf_headers(token=token) if same_host else {}
    spec = parse_hf_uri(uri) if uri.startswith("hf://") else None
    with hub_errors(endpoint=endpoint if same_host else url, repo_id=spec.repo_id if spec else None,
                    revision=revision or (spec.revision if spec else None), filename=spec.filename if spec else None):
        prefix, total = _fetch_range(url, headers, 0, 8)
        n = header_length(prefix, path=uri, file_size=total, cap=cap)
        body, _ = _fetch_range(url, headers, 8, n)
    header = parse_header(prefix + body, path=uri, cap=cap, file_size=total)
    return RemoteHeader(url=url, header=header, file_size=total, bytes_read=len(prefix) + len(body))


def _fetch_range(url: str, headers: dict[str, str], start: int, length: int) -> tuple[bytes, int | None]:
    """``length`` bytes from ``start``; stops reading at ``length`` even if the server ignores Range."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    request_headers = {**headers, "Range": f"bytes={start}-{start + length - 1}", "Accept-Encoding": "identity"}
    with get_session().stream("GET", url, headers=request_headers) as response:
        hf_raise_for_status(response)
        if response.status_code == 200 and start > 0:
            raise RemoteHeaderError(f"{_host(url)} ignores HTTP Range requests, so the header cannot be read alone",
                                    path=url, hint="download the file and verify it locally")
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk[: length - len(data)]
            if len(data) >= length:
                break
        return bytes(data), _total_size(response)


def _total_size(response: Any) -> int | None:
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    if response.status_code == 200 and response.headers.get("Content-Length"):
        return int(response.headers["Content-Length"])
    return None


def _host(url: str) -> str:
    return urlsplit(url).netloc


def verify_remote(uri: str, *, base: str | None = None, endpoint: str | None = None, token: str | None = None,
                  revision: str | None = None):
    """Header-level verify of a remote file (integrity, format, architecture, compatibility, metadata).

    Fetches only the 8 + N header bytes and runs ``loraregistry.verify.verify_header`` on them; tensor checks
    need the data and never run here (``tensors_checked`` is False), and stored alpha values count as unknown.
    A header that is no valid safetensors container gives a report with its integrity finding, as a local
    file does; network and Hub errors raise.
    """
    from ..errors import InvalidSafetensorsError
    from ..verify import Report, load_base, verify_header
    from ..verify.integrity import container_finding

    if base is not None:
        load_base(base)  # a bad --base is a usage error before any request
    try:
        remote = read_remote_header(uri, endpoint=endpoint, token=token, revision=revision)
    except InvalidSafetensorsError as exc:
        report = Report(path=uri, requested_base=load_base(base).label if base is not None else None)
        report.findings.append(container_finding(exc))
        return report
    return verify_header(remote.header, base=base, source=uri, file_size=remote.file_size)
