"""Say what a file is when it is not safetensors, from its first bytes.

Downloads go wrong in a handful of ways that all used to read "header length ... exceeds the cap": a Git LFS
pointer checked out without ``git lfs pull``, an HTML login or error page saved under the file's name, a JSON
error body from an API, a plain-text error ("Entry not found"), a gzip or zip archive, a PyTorch pickle
checkpoint renamed. ``sniff`` raises the specific error, with a hint that says what to do; it is called only
when the 8-byte header length is implausible, so a valid file is never second-guessed.

File contents shown in messages are cut short and reduced to printable ASCII: they come from strangers.
"""

from __future__ import annotations

import shlex
import struct
from pathlib import PurePath

from .errors import (
    CompressedFileError,
    GitLfsPointerError,
    HtmlPageError,
    JsonDocumentError,
    PickleCheckpointError,
    TextFileError,
)

SNIFF_BYTES = 1024  # how much of a file's start the sniffers look at
_LFS_MARKER = b"version https://git-lfs.github.com/spec/"
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<?xml")
_PICKLE_PROTOCOLS = (2, 3, 4, 5)  # 0x80 <protocol>: the start of every pickle torch.save writes


def printable(raw: bytes | str, limit: int = 80) -> str:
    """Untrusted text made safe for one terminal line: printable ASCII, runs of whitespace as one space."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    kept = "".join(ch if " " <= ch <= "~" else (" " if ch.isspace() else "?") for ch in text)
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[: limit - 3] + "..."


def _starts_like(prefix: bytes, marker: bytes) -> bool:
    """``prefix`` begins with ``marker``, or is a cut-off start of it of at least 8 bytes (a remote read of
    the length field alone)."""
    if prefix.startswith(marker):
        return True
    return 8 <= len(prefix) < len(marker) and marker.startswith(prefix)


def _lfs_size(prefix: bytes) -> int | None:
    """The ``size`` line of a Git LFS pointer, when it is in ``prefix``."""
    for line in prefix.splitlines()[1:4]:
        if line.startswith(b"size ") and line[5:].strip().isdigit() and len(line) < 30:
            return int(line[5:].strip())
    return None


def _html_title(prefix: bytes) -> str:
    lower = prefix.lower()
    start = lower.find(b"<title>")
    end = lower.find(b"</title>", start)
    if start == -1 or end == -1:
        return ""
    return printable(prefix[start + 7 : end], 60)


def _zip_first_member(prefix: bytes) -> str | None:
    """The name of a zip's first member from its local file header (None when not all of it is here)."""
    if len(prefix) < 30:
        return None
    (name_length,) = struct.unpack("<H", prefix[26:28])
    name = prefix[30 : 30 + name_length]
    return name.decode("utf-8", "replace") if len(name) == name_length and name_length else None


def _json_error_text(prefix: bytes, file_size: int | None) -> str:
    """The ``error`` / ``message`` of a small JSON body, when the whole body is in ``prefix``."""
    import json

    if file_size is None or file_size > len(prefix):
        return ""
    try:
        body = json.loads(prefix.decode("utf-8"))
    except (ValueError, RecursionError):
        return ""
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "errors"):
            if isinstance(body.get(key), str):
                return printable(body[key], 100)
    return ""


def _is_text(prefix: bytes) -> bool:
    try:
        text = prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(prefix) - 4:  # a cut in the middle of the last character is fine
            return False
        text = prefix[: exc.start].decode("utf-8")
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def sniff(prefix: bytes, *, path: str | None, file_size: int | None = None) -> None:
    """Raise the specific error when ``prefix`` (a file's first bytes) is a known non-safetensors file."""
    name = PurePath(path).name if path else "FILE"
    if prefix.startswith(b"\x1f\x8b"):
        raise CompressedFileError(
            "is a gzip-compressed file, not safetensors", path=path,
            hint=f"decompress it first: gzip -dc {shlex.quote(name)} > unpacked.safetensors, then use that file")
    if prefix.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        member = _zip_first_member(prefix)
        if member is None or member.endswith(".pkl") or "/data/" in member:
            raise PickleCheckpointError(
                "is a PyTorch zip checkpoint (torch.save), not safetensors", path=path,
                hint="lorareg never unpickles files: convert it with a trusted tool where you trust its origin, "
                     "e.g. safetensors.torch.save_file(torch.load(f, weights_only=True), 'out.safetensors')")
        raise CompressedFileError(
            f"is a zip archive (first member {printable(member, 60)!r}), not safetensors", path=path,
            hint=f"unpack it first: unzip {shlex.quote(name)}, then use the .safetensors file inside")
    if len(prefix) >= 2 and prefix[0] == 0x80 and prefix[1] in _PICKLE_PROTOCOLS:
        raise PickleCheckpointError(
            "is a PyTorch pickle checkpoint (torch.save), not safetensors", path=path,
            hint="lorareg never unpickles files: convert it with a trusted tool where you trust its origin, "
                 "e.g. safetensors.torch.save_file(torch.load(f, weights_only=True), 'out.safetensors')")
    if _starts_like(prefix, _LFS_MARKER):
        size = _lfs_size(prefix)
        real = f"; the real file is {size:,} bytes" if size is not None else ""
        raise GitLfsPointerError(
            f"is a Git LFS pointer, not the file itself{real}", path=path,
            hint="fetch the real file: run `git lfs pull` in the repository, "
                 f"or `git lfs pull --include={shlex.quote(name)}` for this file alone")
    body = prefix.lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 byte order mark and blank lines may come first
    lower = body[:16].lower()
    if any(_starts_like(lower, marker) or lower.startswith(marker) for marker in _HTML_MARKERS):
        title = _html_title(body)
        what = f"an HTML page ({title!r})" if title else "an HTML or XML page"
        raise HtmlPageError(
            f"is {what}, not safetensors: likely a login or error page saved in place of the file", path=path,
            hint="download the file itself: a Hub file with `lorareg pull USER/REPO/FILE.safetensors`, adding "
                 "--token for a gated or private one; elsewhere the site's direct-download link, not the page")
    if body[:1] in (b"{", b"["):
        error = _json_error_text(prefix, file_size)
        said = f" saying {error!r}" if error else ""
        raise JsonDocumentError(
            f"is a JSON document{said}, not safetensors: likely an API error body saved in place of the file",
            path=path, hint="the download failed: fix what the body says, such as a token, the URL or access, and "
                            "download again")
    if _is_text(prefix[: SNIFF_BYTES]):
        raise TextFileError(
            f"is a text file starting {printable(prefix, 60)!r}, not safetensors", path=path,
            hint="likely an error message saved in place of the file; download the file again")
