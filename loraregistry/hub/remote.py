"""Read a remote safetensors header with two HTTP range requests: the 8-byte length, then the header.

No tensor byte is fetched, however large the file, and no more than was asked is read even from a server
that ignores ``Range``. Works for ``hf://[datasets/|spaces/]user/repo[@rev]/file.safetensors`` (resolved
against the endpoint; parsed as huggingface_hub parses it) and any ``https://`` URL of a server that
honours ``Range``. The token is sent only to the Hub endpoint, never to other hosts (redirects included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
        from .api import resolve_url as file_url

        spec = parse_hf_uri(uri)
        return file_url(endpoint, spec.repo_id, spec.filename or "", revision or spec.revision or "main",
                        spec.repo_type)
    if uri.startswith(("https://", "http://")):
        return uri
    raise RemoteHeaderError(f"{uri!r} is neither an hf:// URI nor an http(s) URL",
                            hint="use hf://user/repo/file.safetensors or https://host/path/file.safetensors")


def read_remote_header(uri: str, *, endpoint: str | None = None, token: str | None = None,
                       revision: str | None = None, cap: int = DEFAULT_HEADER_CAP) -> RemoteHeader:
    """Fetch and validate only the header of a remote safetensors file."""
    endpoint = env.prepare(endpoint)
    url = resolve_url(uri, endpoint=endpoint, revision=revision)
    from .transport import hub_headers

    same_host = urlsplit(url).netloc == urlsplit(endpoint).netloc
    headers = hub_headers(token) if same_host else {"Accept-Encoding": "identity"}
    server = endpoint if same_host else f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    prefix, total = _fetch_range(url, headers, 0, 8, uri=uri, server=server)
    n = header_length(prefix, path=uri, file_size=total, cap=cap)
    body, _ = _fetch_range(url, headers, 8, n, uri=uri, server=server)
    header = parse_header(prefix + body, path=uri, cap=cap, file_size=total)
    return RemoteHeader(url=url, header=header, file_size=total, bytes_read=len(prefix) + len(body))


def _fetch_range(url: str, headers: dict[str, str], start: int, length: int, *, uri: str,
                 server: str) -> tuple[bytes, int | None]:
    """``length`` bytes from ``start``; stops reading at ``length`` even if the server ignores Range."""
    from .transport import request

    request_headers = {**headers, "Range": f"bytes={start}-{start + length - 1}"}
    with request("GET", url, headers=request_headers, what=uri, endpoint=server) as response:
        if response.status == 200 and start > 0:
            raise RemoteHeaderError(f"{_host(url)} ignores HTTP Range requests, so the header cannot be read alone",
                                    path=uri, hint="download the file and verify it locally")
        data = bytearray()
        for chunk in response.iter_chunks():
            data += chunk[: length - len(data)]
            if len(data) >= length:
                break
        return bytes(data), _total_size(response)


def _total_size(response: Any) -> int | None:
    match = re.fullmatch(r"bytes \d+-\d+/(\d{1,20})", (response.header("Content-Range") or "").strip())
    if match:
        return int(match.group(1))
    length = (response.header("Content-Length") or "").strip()
    if response.status == 200 and length.isdigit() and len(length) <= 20:
        return int(length)
    return None


def _host(url: str) -> str:
    return urlsplit(url).netloc


def verify_remote(uri: str, *, base: str | None = None, endpoint: str | None = None, token: str | None = None,
                  revision: str | None = None):
    """Header-level verify of a remote file; see ``verify_remote_targets``."""
    return verify_remote_targets(uri, (), base=base, endpoint=endpoint, token=token, revision=revision)[0]


def verify_remote_targets(uri: str, targets, *, base: str | None = None, endpoint: str | None = None,
                          token: str | None = None, revision: str | None = None):
    """(report, verdicts): header-level verify of a remote file (integrity, format, architecture,
    compatibility, metadata).

    Fetches only the 8 + N header bytes and runs ``loraregistry.verify.verify_header`` on them; tensor checks
    need the data and never run here (``tensors_checked`` is False), and stored alpha values count as unknown.
    A header that is no valid safetensors container gives a report with its integrity finding, as a local
    file does; network and Hub errors raise.

    ``targets`` (names as for ``verify --target``): each loader's verdict, judged from the header as for a
    local file (the verdicts depend on keys and shapes, which the header holds). A header that gives no
    adapter gets no verdicts: its report already fails with the reason.
    """
    from ..errors import InvalidSafetensorsError, UnknownAdapterFormat
    from ..verify import Report, load_base, verify_header
    from ..verify.integrity import container_finding

    if base is not None:
        load_base(base)  # a bad --base is a usage error before any request
    if targets:
        from ..verify.consumers import parse_targets

        targets = parse_targets(targets)  # an unknown target is a usage error before any request
    try:
        remote = read_remote_header(uri, endpoint=endpoint, token=token, revision=revision)
    except InvalidSafetensorsError as exc:
        report = Report(path=uri, requested_base=load_base(base).label if base is not None else None)
        report.findings.append(container_finding(exc))
        return report, []
    report = verify_header(remote.header, base=base, source=uri, file_size=remote.file_size)
    if not targets or report.format is None:
        return report, []
    from ..adapter import AdapterFile
    from ..verify.consumers import consumer_verdicts

    try:
        adapter = AdapterFile.from_header(remote.header, path=uri, file_size=remote.file_size)
    except (InvalidSafetensorsError, UnknownAdapterFormat):
        return report, []
    return report, consumer_verdicts(adapter, targets, base=base)
