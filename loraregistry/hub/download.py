"""``pull``: download an adapter at a pinned commit, prove its bytes, verify it, register it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hashes import file_sha256
from . import env
from .errors import AmbiguousFile, HashMismatch, RemoteFileNotFound
from .uri import check_file_name, inside, parse_spec

_CHUNK = 1 << 20


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
    The download goes through huggingface_hub's cache; its sha256 must equal the Hub's LFS oid (or, for a
    plain git file, its git blob id), else the cached file is deleted and ``HashMismatch`` raised. The file
    is then verified and added to ``registry`` (default: the local registry) with its origin; the verify
    verdict is recorded, not enforced. ``dest``: also copy it there (never outside that folder).
    """
    endpoint = env.prepare(endpoint)
    wanted = parse_spec(spec)
    revision = revision or wanted.revision or "main"
    from .client import hub_api, hub_errors

    api = hub_api(endpoint, token)
    with hub_errors(endpoint=endpoint, repo_id=wanted.repo_id, revision=revision, filename=wanted.filename):
        info = api.model_info(wanted.repo_id, revision=revision)
        commit = info.sha
        filename = wanted.filename or _single_adapter([s.rfilename for s in info.siblings or []], wanted.repo_id)
        remote = _remote_file(api, wanted.repo_id, filename, commit)
    with hub_errors(endpoint=endpoint, repo_id=wanted.repo_id, revision=commit, filename=filename):
        local = Path(api.hf_hub_download(wanted.repo_id, filename, revision=commit, cache_dir=cache_dir))
    _check_bytes(local, remote, endpoint=endpoint, repo_id=wanted.repo_id, filename=filename)

    from ..registry import Origin, Registry
    from ..verify import verify

    report = verify(local, base=base)
    origin = Origin.hub(endpoint=endpoint, repo=wanted.repo_id, revision=commit, file=filename)
    own_registry = registry is None
    reg = Registry.open() if own_registry else registry
    try:
        entry = reg.add(local, origin=origin, report=report)
    finally:
        if own_registry:
            reg.close()
    path = entry.path
    if dest is not None:
        path = str(_copy_into(Path(entry.path), Path(dest), filename))
    return PullResult(repo_id=wanted.repo_id, endpoint=endpoint, commit=commit, filename=filename, path=path,
                      entry=entry, report=report)


def _single_adapter(files: list[str], repo_id: str) -> str:
    top = sorted(f for f in files if "/" not in f and f.endswith(".safetensors"))
    if len(top) == 1:
        return check_file_name(top[0])
    if not top:
        raise RemoteFileNotFound(f"{repo_id!r} has no .safetensors file at its root",
                                 hint="name the file: REPO/path/to/file.safetensors")
    raise AmbiguousFile(f"{repo_id!r} has {len(top)} .safetensors files at its root: {', '.join(top)}",
                        hint=f"name one: {repo_id}/{top[0]}")


def _remote_file(api, repo_id: str, filename: str, commit: str):
    from huggingface_hub.hf_api import RepoFile

    infos = api.get_paths_info(repo_id, [filename], revision=commit)
    found = [i for i in infos if isinstance(i, RepoFile) and i.path == filename]
    if not found:
        raise RemoteFileNotFound(f"{filename!r} is not a file in {repo_id!r} at {commit}")
    return found[0]


def _check_bytes(local: Path, remote, *, endpoint: str, repo_id: str, filename: str) -> None:
    """The downloaded bytes against the Hub's own record of them."""
    if remote.lfs is not None:
        kind, expected, actual = "LFS sha256", remote.lfs.sha256, file_sha256(local)
    else:
        kind, expected, actual = "git blob id", remote.blob_id, _git_blob_sha1(local)
    if actual != expected:
        _discard_cached(local)
        raise HashMismatch(f"{filename!r} from {endpoint}/{repo_id}: downloaded bytes have {kind} {actual}, the Hub "
                           f"says {expected}; the download was deleted", hint="try again; if it persists, the "
                           "server or a proxy serves the wrong bytes")




def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _discard_cached(local: Path) -> None:
    """Delete a cached download: the snapshot link and the blob it points to."""
    blob = local.resolve()
    for p in (local, blob):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _copy_into(source: Path, folder: Path, filename: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = inside(folder, Path(filename).name)
    tmp = target.with_name(f".{target.name}.lorareg-tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target
