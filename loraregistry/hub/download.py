"""``pull``: download an adapter at a pinned commit, prove its bytes, verify it, register it.

The download never goes through huggingface_hub's cache, whose paths come from the ETag, oid and commit a
server sends: lorareg resolves the revision to a commit sha, reads the file's size and hash from the Hub
(``api``, checked for shape), and streams the bytes through huggingface_hub's session into a private folder
of its own (``staging``), hashing as they arrive and stopping at the declared size. A server that names
another commit than the pinned one, or another LFS object, is refused before a byte is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import env
from .errors import HOSTILE_HINT, AmbiguousFile, DownloadFailed, HashMismatch, RemoteFileNotFound, ResponseTooLarge
from .errors import UntrustedServerData, server_text
from .uri import inside, parse_spec

DOWNLOADS_FOLDER = "downloads"  # under the registry root: same file system as the store


@dataclass
class PullResult:
    repo_id: str
    endpoint: str
    commit: str
    filename: str
    path: str  # the file in the registry's store (or in dest when given)
    entry: Any = field(repr=False)  # registry Entry
    report: Any = field(repr=False)  # verify Report

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "endpoint": self.endpoint, "commit": self.commit,
                "filename": self.filename, "path": self.path, "entry": self.entry.to_dict(),
                "verify": self.report.to_dict()}


def pull(spec: str, *, revision: str | None = None, endpoint: str | None = None, token: str | None = None,
         dest: str | os.PathLike[str] | None = None, registry: Any = None, cache_dir: str | None = None,
         base: str | None = None) -> PullResult:
    """Pull ``REPO[/FILE]`` (``FILE`` defaults to the repo's single top-level .safetensors).

    The revision (default ``main``) is resolved to a commit sha first and everything after uses the sha.
    The bytes must hash to the Hub's LFS oid (or, for a plain git file, its git blob id), else nothing is
    kept and ``HashMismatch`` is raised. The file is then verified and added to ``registry`` (default: the
    local registry) with its origin; the verify verdict is recorded, not enforced. ``dest``: also copy it
    there (never outside that folder). ``cache_dir``: the download folder (default: ``downloads/`` in the
    registry's root); only a private folder inside it is ever written, and it is removed afterwards.
    """
    endpoint = env.prepare(endpoint)
    wanted = parse_spec(spec)
    revision = revision or wanted.revision or "main"
    from ..registry import Origin, Registry
    from ..verify import verify
    from .api import file_at, repo_at
    from .staging import staging_folder
    from .transport import hub_headers

    headers = hub_headers(token)
    repo = repo_at(endpoint, headers, wanted.repo_id, revision)
    filename = wanted.filename or _single_adapter(repo.files, repo.unsafe_files, wanted.repo_id)
    remote = file_at(endpoint, headers, wanted.repo_id, filename, repo.commit)
    own_registry = registry is None
    reg = Registry.open() if own_registry else registry
    try:
        with staging_folder(Path(cache_dir) if cache_dir else Path(reg.root) / DOWNLOADS_FOLDER) as folder:
            local = _download(endpoint, headers, wanted.repo_id, repo.commit, remote, folder)
            report = verify(local, base=base)
            origin = Origin.hub(endpoint=endpoint, repo=wanted.repo_id, revision=repo.commit, file=filename)
            entry = reg.add(local, origin=origin, report=report)
    finally:
        if own_registry:
            reg.close()
    path = entry.path
    if dest is not None:
        path = str(_copy_into(Path(entry.path), Path(dest), filename))
    report.path = path  # it was made on the download, which is gone now; these are the same bytes
    return PullResult(repo_id=wanted.repo_id, endpoint=endpoint, commit=repo.commit, filename=filename, path=path,
                      entry=entry, report=report)


def _single_adapter(files: tuple[str, ...], unsafe: tuple[str, ...], repo_id: str) -> str:
    from .errors import UnsafeFileName

    top = sorted(f for f in files if "/" not in f and f.endswith(".safetensors"))
    hostile = [f for f in unsafe if f.endswith(".safetensors")]
    if hostile:
        raise UnsafeFileName(f"{repo_id!r} lists the unsafe file name {server_text(repr(hostile[0]), 120)} (it would "
                             "leave the target folder, or holds control characters)", hint=HOSTILE_HINT)
    if len(top) == 1:
        return top[0]
    if not top:
        raise RemoteFileNotFound(f"{repo_id!r} has no .safetensors file at its root",
                                 hint="name the file: REPO/path/to/file.safetensors")
    raise AmbiguousFile(f"{repo_id!r} has {len(top)} .safetensors files at its root: {', '.join(top)}",
                        hint=f"name one: {repo_id}/{top[0]}")


def _download(endpoint: str, headers, repo_id: str, commit: str, remote, folder: Path) -> Path:
    """Stream the file into ``folder``: at most its declared size, hashed on the way, checked at the end."""
    from .api import resolve_url
    from .staging import fresh_file
    from .transport import Where, request

    what = f"{remote.path!r} from {repo_id!r} at {commit[:12]}"
    target = fresh_file(folder, PurePosixPath(remote.path).name)
    if remote.sha256 is not None:
        kind, expected, digest = "LFS sha256", remote.sha256, hashlib.sha256()
    else:  # a plain git file: its git blob id is the sha1 of a "blob <size>" header and the bytes
        kind, expected = "git blob id", remote.blob_id
        digest = hashlib.sha1(f"blob {remote.size}\0".encode(), usedforsecurity=False)
    received = 0
    url = resolve_url(endpoint, repo_id, remote.path, commit)
    with request("GET", url, headers=headers, what=what, endpoint=endpoint,
                 where=Where(repo_id, commit, remote.path)) as response, target.open("wb") as out:
        _check_served(response, remote, commit, endpoint=endpoint, what=what)
        for chunk in response.iter_chunks():
            received += len(chunk)
            if received > remote.size:
                raise ResponseTooLarge(f"{endpoint} sent more than the {remote.size:,} bytes it declared for {what}; "
                                       "the download stopped there and nothing was kept", hint=HOSTILE_HINT)
            digest.update(chunk)
            out.write(chunk)
    if received < remote.size:
        raise DownloadFailed(f"the transfer of {what} broke off after {received:,} of {remote.size:,} bytes",
                             hint="nothing was kept; try again")
    actual = digest.hexdigest()
    if actual != expected:
        raise HashMismatch(f"{remote.path!r} from {endpoint}/{repo_id}: downloaded bytes have {kind} {actual}, the "
                           f"Hub says {expected}; the download was deleted", hint="try again; if it persists, the "
                           "server or a proxy serves the wrong bytes")
    return target


def _check_served(response, remote, commit: str, *, endpoint: str, what: str) -> None:
    """What the server says it serves must be what was asked: the pinned commit, the declared object and size."""
    for headers in response.hops:
        served = headers.get("X-Repo-Commit")
        if served is not None and served != commit:
            raise UntrustedServerData(f"{endpoint} served {what} from commit {server_text(repr(served), 60)}, not the "
                                      f"pinned {commit}; nothing was kept", hint=HOSTILE_HINT)
        linked = headers.get("X-Linked-Etag")
        if linked is not None and remote.sha256 is not None and _etag(linked) != remote.sha256:
            raise UntrustedServerData(f"{endpoint} serves {what} as object {server_text(repr(linked), 80)}, not the "
                                      f"{remote.sha256} the Hub lists; nothing was kept", hint=HOSTILE_HINT)
    length = response.header("Content-Length")
    if length is not None and (not length.isdigit() or int(length) != remote.size):
        raise UntrustedServerData(f"{endpoint} sends {server_text(length, 40)} bytes for {what}, which the Hub lists "
                                  f"at {remote.size:,}; nothing was kept", hint=HOSTILE_HINT)


def _etag(value: str) -> str:
    value = value.strip()
    return value[2:].strip('"') if value.startswith("W/") else value.strip('"')


def _copy_into(source: Path, folder: Path, filename: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = inside(folder, Path(filename).name)
    tmp = target.with_name(f".{target.name}.lorareg-tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target
