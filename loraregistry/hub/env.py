"""Environment for ``huggingface_hub``, settled before it is imported.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET`` and ``HF_HUB_OFFLINE`` once, at import time.
Self-hosted Hub-compatible servers (olah, KohakuHub, a test server) usually speak plain LFS, not Xet; with
``hf_xet`` installed, uploads and downloads would then try Xet and fail. So ``prepare(endpoint)`` sets
``HF_HUB_DISABLE_XET=1`` for any endpoint other than huggingface.co, unless the user set the variable
themselves. The CLI calls it before anything imports huggingface_hub; every hub function calls it too, and
when huggingface_hub was already imported it also updates the constant that the library reads per call.

Every hub function also passes ``endpoint=`` explicitly, so ``--endpoint`` wins over a stale import-time
``HF_ENDPOINT``.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
_HF_HOSTS = ("huggingface.co", "hf.co")


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT``, else https://huggingface.co (no trailing slash)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_huggingface_co(endpoint: str) -> bool:
    host = (urlsplit(endpoint).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in _HF_HOSTS)


def prepare(endpoint: str | None = None) -> str:
    """Settle the environment for ``endpoint`` and return it resolved. Call before importing huggingface_hub."""
    resolved = resolve_endpoint(endpoint)
    if not is_huggingface_co(resolved) and "HF_HUB_DISABLE_XET" not in os.environ:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:  # imported already (library use): the flag is read from here per call
            constants.HF_HUB_DISABLE_XET = True
    return resolved
