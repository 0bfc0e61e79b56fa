"""Names on a Hub: repo ids, ``REPO[/FILE]`` specs, ``hf://`` URIs, and file names that stay in their folder.

Pure string handling (no huggingface_hub import), so the CLI can validate input before the environment
for huggingface_hub is settled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from .errors import InvalidRepoId, UnsafeFileName

# huggingface_hub's rule (utils/_validators.py): 1-96 chars of [A-Za-z0-9._-], no '--' or '..', and no
# leading/trailing '-' or '.'; we require the namespace (user/name) because lorareg pushes to users' repos.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.fullmatch(repo_id or "") or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise InvalidRepoId(f"{repo_id!r} is not a Hub repo id",
                            hint="use 'user/name': letters, digits, '-', '_', '.' (no '--' or '..'), 96 at most each")
    return repo_id


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_file_name(name: str) -> str:
    """A path inside a repo that stays inside any folder it is joined to; returned normalized.

    Control characters are refused too: a name is printed and becomes a local file name, and a server
    could otherwise send terminal escape sequences in it."""
    bad = (not name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name)
           or any(part in ("", ".", "..") for part in name.split("/")))
    if bad:
        raise UnsafeFileName(f"file name {name!r} would leave the target folder",
                             hint="file names must be relative paths without '..', '\\' or empty parts")
    if _CONTROL.search(name):
        raise UnsafeFileName(f"file name {name!r} holds control characters",
                             hint="file names must be printable text")
    return str(PurePosixPath(name))


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused when it resolves outside ``folder`` (e.g. through a symlink)."""
    target = (folder / check_file_name(name)).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise UnsafeFileName(f"file name {name!r} resolves outside {folder}")
    return target


_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_commit_sha(text: object) -> bool:
    """A full git commit id as the Hub writes it: 40 lowercase hex digits."""
    return isinstance(text, str) and _COMMIT_SHA.fullmatch(text) is not None


def is_sha256(text: object) -> bool:
    """An LFS oid: 64 lowercase hex digits."""
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


def is_git_blob_id(text: object) -> bool:
    return is_commit_sha(text)


# Repo types of hf:// URIs (huggingface_hub's constants.HF_URI_TYPE_PREFIXES) that lorareg can read files of;
# buckets and kernels have other APIs.
REPO_TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SPECIAL_REFS = re.compile(r"refs/(?:convert/[\w.-]+|pr/\d+)")  # revisions with '/' (huggingface_hub's rule)


@dataclass(frozen=True)
class RepoFileSpec:
    repo_id: str
    filename: str | None = None
    revision: str | None = None
    repo_type: str = "model"


def parse_spec(spec: str) -> RepoFileSpec:
    """``user/repo``, ``user/repo/path/file.safetensors`` (``@REV`` after the repo or at the end)."""
    body = spec.strip().strip("/")
    if "/" not in body:
        raise InvalidRepoId(f"{spec!r} names no repo", hint="use user/repo or user/repo/file.safetensors")
    return _parse_repo_body(body, spec)


def parse_hf_uri(uri: str) -> RepoFileSpec:
    """``hf://[TYPE/]USER/REPO[@REVISION]/PATH``, split as huggingface_hub's ``parse_hf_uri`` splits it.

    ``TYPE`` is ``models/`` (the default), ``datasets/`` or ``spaces/``. The revision follows the repo id;
    ``refs/pr/N`` and ``refs/convert/NAME`` keep their slashes, other revisions with a slash are written
    url-encoded (``feature%2Fx``). An ``@`` further on belongs to the file name, except lorareg's older
    spelling ``hf://user/repo/file.safetensors@REV``, still read as a revision at the end.
    """
    if not uri.startswith("hf://"):
        raise InvalidRepoId(f"{uri!r} is not an hf:// URI")
    body = uri[len("hf://"):].strip("/")
    first, _, rest = body.partition("/")
    repo_type = "model"
    if first in REPO_TYPE_PREFIXES:
        repo_type, body = REPO_TYPE_PREFIXES[first], rest
    elif first in ("buckets", "kernels") or first in ("model", "dataset", "space"):
        raise InvalidRepoId(f"{uri!r}: lorareg reads files of models/, datasets/ and spaces/ repos only",
                            hint="use hf://[datasets/|spaces/]user/repo/file.safetensors")
    spec = _parse_repo_body(body, uri, repo_type=repo_type)
    if spec.filename is None:
        raise InvalidRepoId(f"{uri!r} names no file", hint="use hf://user/repo/file.safetensors")
    return spec


def _parse_repo_body(body: str, original: str, *, repo_type: str = "model") -> RepoFileSpec:
    """``user/repo[@rev][/path]``: the ``@`` marks a revision only right after the repo id."""
    at = body.find("@")
    revision: str | None = None
    if at != -1 and body[:at].count("/") == 1:
        repo_id, rev_and_path = body[:at], body[at + 1:]
        special = _SPECIAL_REFS.match(rev_and_path)
        if special and rev_and_path[special.end():special.end() + 1] in ("", "/"):
            revision, path = special.group(), rev_and_path[special.end() + 1:]
        else:
            revision, _, path = rev_and_path.partition("/")
        revision = unquote(revision)
        if not revision:
            raise InvalidRepoId(f"{original!r} has an empty revision after '@'")
    else:
        parts = body.split("/", 2)
        repo_id, path = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
        last = path.rsplit("/", 1)[-1]
        if "@" in last and last.rsplit("@", 1)[0].endswith(".safetensors"):  # lorareg's older file@rev spelling
            path, revision = path.rsplit("@", 1)
            revision = unquote(revision) or None
    check_repo_id(repo_id)
    filename = check_file_name(path) if path else None
    return RepoFileSpec(repo_id=repo_id, filename=filename, revision=revision, repo_type=repo_type)
