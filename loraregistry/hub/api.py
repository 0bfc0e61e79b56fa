"""The Hub's read API as lorareg uses it: bounded answers, every identifier checked before anyone uses it.

huggingface_hub's ``HfApi`` reads whole responses into memory and trusts the commit sha, oids and ETags a
server sends (its cache builds paths from them). lorareg asks the same endpoints itself, through
huggingface_hub's session (``transport``), and accepts from the answers only what has the right shape:
a commit is 40 lowercase hex digits, an LFS oid 64, a git blob id 40, a file name passes
``uri.check_file_name``, a size is a non-negative integer.

Import only after ``env.prepare()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import HOSTILE_HINT, RemoteFileNotFound, RepoNotFound, UnsafeFileName, UntrustedServerData, server_text
from .transport import JSON_CAP, Where, get_json, request
from .uri import check_file_name, is_commit_sha, is_git_blob_id, is_sha256

_API_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass(frozen=True)
class RemoteFile:
    """A file as the Hub records it at one commit."""

    path: str
    size: int
    sha256: str | None  # the LFS oid; None for a plain git file
    blob_id: str | None  # the git blob id (for a plain git file, what its bytes must hash to)


@dataclass(frozen=True)
class RepoAtCommit:
    repo_id: str
    commit: str
    files: tuple[str, ...]  # the repo's file names that are safe to use (others are left out)
    unsafe_files: tuple[str, ...]  # names that would leave a folder: never used, only reported


def resolve_url(endpoint: str, repo_id: str, filename: str, revision: str, repo_type: str = "model") -> str:
    """Where a file's bytes are served: huggingface_hub's ``hf_hub_url`` layout (revision url-encoded)."""
    return (f"{endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/resolve/{quote(revision, safe='')}/"
            f"{quote(filename, safe='/')}")


def repo_at(endpoint: str, headers: Mapping[str, str], repo_id: str, revision: str,
            repo_type: str = "model") -> RepoAtCommit:
    """The commit ``revision`` points to, and the repo's files there (model_info)."""
    url = f"{endpoint}/api/{_API_PREFIX[repo_type]}/{repo_id}/revision/{quote(revision, safe='')}"
    what = f"the info on {repo_id!r} at {revision!r}"
    info = get_json(url, headers=headers, what=what, endpoint=endpoint, where=Where(repo_id, revision),
                    not_found=lambda message: RepoNotFound(message, hint="check the name and the revision"))
    if not isinstance(info, dict):
        raise UntrustedServerData(f"{endpoint} answered {what} with no JSON object", hint=HOSTILE_HINT)
    commit = info.get("sha")
    if not is_commit_sha(commit):
        raise UntrustedServerData(f"{endpoint} gives {_shown(commit)} as the commit of {repo_id!r} at {revision!r}, "
                                  "which is no commit sha (40 lowercase hex digits)", hint=HOSTILE_HINT)
    if is_commit_sha(revision) and commit != revision:
        raise UntrustedServerData(f"{endpoint} answered for commit {revision} with commit {commit}", hint=HOSTILE_HINT)
    files: list[str] = []
    unsafe: list[str] = []
    for sibling in info.get("siblings") or []:
        name = sibling.get("rfilename") if isinstance(sibling, dict) else None
        if not isinstance(name, str):
            continue
        try:
            files.append(check_file_name(name))
        except UnsafeFileName:
            unsafe.append(name)
    return RepoAtCommit(repo_id=repo_id, commit=commit, files=tuple(files), unsafe_files=tuple(unsafe))


def file_at(endpoint: str, headers: Mapping[str, str], repo_id: str, filename: str, commit: str,
            repo_type: str = "model") -> RemoteFile:
    """The Hub's record of one file at a commit (paths-info): its size and the hash its bytes must have."""
    url = f"{endpoint}/api/{_API_PREFIX[repo_type]}/{repo_id}/paths-info/{quote(commit, safe='')}"
    what = f"{filename!r} in {repo_id!r} at {commit}"
    listing = get_json(url, method="POST", data={"paths": [filename], "expand": False}, headers=headers, what=what,
                       endpoint=endpoint, where=Where(repo_id, commit, filename))
    if not isinstance(listing, list):
        raise UntrustedServerData(f"{endpoint} answered the file list of {what} with no JSON list", hint=HOSTILE_HINT)
    found = [item for item in listing if isinstance(item, dict) and item.get("path") == filename
             and item.get("type", "file") == "file"]
    if not found:
        raise RemoteFileNotFound(f"{filename!r} is not a file in {repo_id!r} at {commit}")
    return _remote_file(found[0], what=what, endpoint=endpoint)


def _remote_file(item: dict[str, Any], *, what: str, endpoint: str) -> RemoteFile:
    lfs = item.get("lfs")
    size = item.get("size")
    blob_id = item.get("oid")
    if lfs is not None:
        oid = lfs.get("oid", lfs.get("sha256")) if isinstance(lfs, dict) else None
        if not is_sha256(oid):
            raise UntrustedServerData(f"{endpoint} names the LFS object of {what} {_shown(oid)}, which is no sha256 "
                                      "(64 lowercase hex digits)", hint=HOSTILE_HINT)
        size = lfs.get("size", size)
    else:
        oid = None
        if not is_git_blob_id(blob_id):
            raise UntrustedServerData(f"{endpoint} names the git blob of {what} {_shown(blob_id)}, which is no blob id "
                                      "(40 lowercase hex digits)", hint=HOSTILE_HINT)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UntrustedServerData(f"{endpoint} gives {what} the size {_shown(size)}, which is no byte count",
                                  hint=HOSTILE_HINT)
    return RemoteFile(path=item["path"], size=size, sha256=oid,
                      blob_id=blob_id if is_git_blob_id(blob_id) else None)


def small_file(endpoint: str, headers: Mapping[str, str], repo_id: str, filename: str, revision: str,
               *, cap: int = JSON_CAP) -> bytes | None:
    """A small text file of a repo (README.md, lorareg.json) read into memory, at most ``cap`` bytes; None
    when the repo has no such file."""
    url = resolve_url(endpoint, repo_id, filename, revision)
    try:
        with request("GET", url, headers=headers, what=f"{filename!r} of {repo_id!r}", endpoint=endpoint,
                     where=Where(repo_id, revision, filename)) as response:
            return response.read(cap)
    except RemoteFileNotFound:
        return None


def _shown(value: object) -> str:
    return server_text(repr(value), 80)
