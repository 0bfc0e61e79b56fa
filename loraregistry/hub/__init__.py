"""Share adapters through the Hugging Face Hub or any Hub-compatible endpoint (olah, KohakuHub, ...).

    from loraregistry.hub import push, pull, search, read_remote_header
    push("style.safetensors", "me/style-lora", endpoint="http://127.0.0.1:8090")
    pull("me/style-lora", revision="main")          # pinned to the commit sha, hash-checked, registered

Importing this package does not import huggingface_hub: each function first settles the environment
(``env.prepare``: ``HF_HUB_DISABLE_XET`` for non-huggingface.co endpoints), then imports it.
"""

from .download import PullResult, pull
from .env import prepare, resolve_endpoint
from .find import SearchHit, search, search_hub
from .remote import RemoteHeader, read_remote_header, verify_remote
from .upload import PushResult, push

__all__ = [
    "PullResult",
    "PushResult",
    "RemoteHeader",
    "SearchHit",
    "prepare",
    "pull",
    "push",
    "read_remote_header",
    "resolve_endpoint",
    "search",
    "search_hub",
    "verify_remote",
]
