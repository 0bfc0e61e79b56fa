"""Names on a Hub: repo ids, ``REPO[/FILE]`` specs, ``hf://`` URIs, and file names that stay in their folder.

Pure string handling (no huggingface_hub import), so the CLI can validate input before the environment
for huggingface_hub is settled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


def check_file_name(name: str) -> str:
    """A path inside a repo that stays inside any folder it is joined to; returned normalized."""
    bad = (not name or "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name)
           or any(part in ("", ".", "..") for part in name.split("/")))
    if bad:
        raise UnsafeFileName(f"file name {name!r} would leave the target folder",
                             hint="file names must be relative paths without '..', '\\' or empty parts")
    return str(PurePosixPath(name))


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused when it resolves outside ``folder`` (e.g. through a symlink)."""
    target = (folder / check_file_name(name)).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise UnsafeFileName(f"file name {name!r} resolves outside {folder}")
    return target


@dataclass(frozen=True)
class RepoFileSpec:
    repo_id: str
    filename: str | None = None
    revision: str | None = None


def parse_spec(spec: str) -> RepoFileSpec:
    """``user/repo``, ``user/repo/path/file.safetensors`` (``@REV`` after the repo or at the end)."""
    body = spec.strip().strip("/")
    revision = None
    parts = body.split("/")
    if len(parts) < 2:
        raise InvalidRepoId(f"{spec!r} names no repo", hint="use user/repo or user/repo/file.safetensors")
    if "@" in parts[1]:  # canonical hf:// form: user/repo@rev/file
        parts[1], revision = parts[1].split("@", 1)
    elif len(parts) > 2 and "@" in parts[-1]:  # user/repo/file.safetensors@rev
        parts[-1], revision = parts[-1].rsplit("@", 1)
    repo_id = check_repo_id("/".join(parts[:2]))
    filename = check_file_name("/".join(parts[2:])) if len(parts) > 2 else None
    return RepoFileSpec(repo_id=repo_id, filename=filename, revision=revision or None)


def parse_hf_uri(uri: str) -> RepoFileSpec:
    """``hf://user/repo/file.safetensors[@rev]`` or ``hf://user/repo@rev/file.safetensors`` (models only)."""
    if not uri.startswith("hf://"):
        raise InvalidRepoId(f"{uri!r} is not an hf:// URI")
    body = uri[len("hf://"):]
    if body.startswith("models/"):
        body = body[len("models/"):]
    spec = parse_spec(body)
    if spec.filename is None:
        raise InvalidRepoId(f"{uri!r} names no file", hint="use hf://user/repo/file.safetensors")
    return spec
