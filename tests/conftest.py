"""Shared test set-up: offline, isolated caches, deterministic."""

from __future__ import annotations

import os
import tempfile

import pytest

# huggingface_hub reads HF_HOME (and from it the token and cache paths) once, when first imported:
# point it at a throwaway folder before anything imports it, so no test can see the user's token.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="lorareg-tests-hf-")
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # test servers speak plain LFS; read at import time
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Point every cache and token path at a temporary folder: no test touches the user's files."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LORAREG_HOME", str(home / "lorareg"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield
