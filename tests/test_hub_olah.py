"""Pulls through olah (a Hub mirror, PyPI ``olah``) serving local git repos, offline.

olah's ``mirrors-path`` serves git repositories laid out as ``<mirrors>/models/<user>/<repo>``; files
stored as git-LFS pointers are served from ``.git/lfs/objects``. ``offline = true`` keeps it from ever
asking huggingface.co. Skipped when olah or git is not installed.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraregistry.hub import pull
from loraregistry.hub.errors import HashMismatch
from loraregistry.registry import Registry

from .adapters import lora_tensors, write_adapter
from .test_hub import hf_env  # noqa: F401  (fixture)

pytest.importorskip("olah")
if shutil.which("git") is None:
    pytest.skip("git is not installed", allow_module_level=True)

STARTUP_TIMEOUT_S = 30


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _commit_lfs_file(repo: Path, name: str, data: bytes, message: str) -> str:
    """Commit ``data`` as a git-LFS pointer (no git-lfs binary needed) and return the commit sha."""
    oid = hashlib.sha256(data).hexdigest()
    objects = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4]
    objects.mkdir(parents=True, exist_ok=True)
    (objects / oid).write_bytes(data)
    (repo / name).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n")
    _git(repo, "add", name)
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def olah(tmp_path_factory):
    """One olah for the module (it takes seconds to start); each test adds its own repo under mirrors/."""
    root = tmp_path_factory.mktemp("olah")
    port = _free_port()
    config = root / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'repos-path = "{root / "olah-repos"}"\nmirrors-path = ["{root / "mirrors"}"]\n'
        "metadata-cache-ttl = 0\n"
        "[accessibility]\noffline = true\n")
    _new_repo(root / "mirrors", "probe/ready")
    log = (root / "olah.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", "from olah.server import cli; cli()", "-c", str(config),
                             "--log-path", str(root / "olah-logs")], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, proc)
        yield endpoint, root / "mirrors"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _new_repo(mirrors: Path, repo_id: str) -> Path:
    repo = mirrors / "models" / repo_id
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("---\ntags:\n- lora\n---\n# cat\n")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-q", "-m", "card")
    return repo


def _wait_until_up(endpoint: str, proc: subprocess.Popen) -> None:
    """Polls with the standard library: the HTTP client under huggingface_hub differs per version."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"olah exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/api/models/probe/ready/revision/main", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"olah did not answer within {STARTUP_TIMEOUT_S} s")


def test_pull_through_olah_pins_the_commit_and_registers(olah, hf_env, tmp_path):  # noqa: F811
    endpoint, mirrors = olah
    mirror = _new_repo(mirrors, "alice/cat")
    first = write_adapter(tmp_path / "v1.safetensors", lora_tensors("sd1", seed=1)).read_bytes()
    first_commit = _commit_lfs_file(mirror, "cat.safetensors", first, "v1")
    second = write_adapter(tmp_path / "v2.safetensors", lora_tensors("sd1", seed=2)).read_bytes()
    _commit_lfs_file(mirror, "cat.safetensors", second, "v2")

    with Registry.open(tmp_path / "reg") as registry:
        latest = pull("alice/cat", endpoint=endpoint, registry=registry)
        pinned = pull("alice/cat/cat.safetensors", revision=first_commit, endpoint=endpoint, registry=registry)
        assert Path(latest.entry.path).read_bytes() == second
        assert Path(pinned.entry.path).read_bytes() == first
        assert pinned.commit == first_commit and pinned.entry.origins[0].revision == first_commit
        assert latest.report.ok and len(registry.list()) == 2


def test_lfs_object_that_does_not_match_its_pointer_is_refused(olah, hf_env, tmp_path):  # noqa: F811
    endpoint, mirrors = olah
    mirror = _new_repo(mirrors, "alice/rotten")
    data = write_adapter(tmp_path / "v1.safetensors", lora_tensors("sd1", seed=1)).read_bytes()
    _commit_lfs_file(mirror, "cat.safetensors", data, "v1")
    oid = hashlib.sha256(data).hexdigest()
    obj = mirror / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    obj.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the mirror's storage rotted
    with Registry.open(tmp_path / "reg") as registry:
        with pytest.raises(HashMismatch):
            pull("alice/rotten", endpoint=endpoint, registry=registry)
        assert registry.list() == []
