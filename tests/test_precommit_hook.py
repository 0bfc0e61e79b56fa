"""The pre-commit hook, run for real by pre-commit (from PyPI) in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loraregistry.demo import DEMO_ADAPTERS, build_adapter
from loraregistry.safetensors_io import load_tensors, write_safetensors

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture(scope="module")
def hook_source(tmp_path_factory):
    """A committed snapshot of this working tree: pre-commit installs hooks from a git repository."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src = tmp_path_factory.mktemp("hook-src") / "loraregistry"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "demo-output",
                                    "*.egg-info", "golden")
    shutil.copytree(REPO, src, ignore=ignore)
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "snapshot")
    return src


def _run_hook(hook_source: Path, work: Path, files: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(hook_source), "lorareg-verify",
                           "--files", *files], cwd=work, capture_output=True, text=True, env=env, timeout=900)


def test_hook_passes_good_and_fails_bad_with_its_code(hook_source, tmp_path):
    work = tmp_path / "adapters-repo"
    work.mkdir()
    _git(work, "init", "-q")
    good = build_adapter(DEMO_ADAPTERS[0], work)
    tensors = load_tensors(good)
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = np.full_like(tensors[key], np.inf)
    write_safetensors(work / "inf_up.safetensors", tensors)
    _git(work, "add", "-A")
    home = tmp_path / "pre-commit-home"
    passed = _run_hook(hook_source, work, [good.name], home)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    failed = _run_hook(hook_source, work, ["inf_up.safetensors"], home)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "LRG4" in failed.stdout
