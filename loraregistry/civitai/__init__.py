"""Civitai lookups by file hash: ``/api/v1/model-versions/by-hash/{hash}`` of Civitai's public REST API.

    from loraregistry.civitai import CivitaiClient, lookup_files, lookup_registry
    client = CivitaiClient.from_env()          # CIVITAI_ENDPOINT (default https://civitai.com), CIVITAI_TOKEN
    lookup_files(["style.safetensors"], client=client)

What the API answers is network input: the body is size-capped, parsed as JSON, each value type-checked
(the same reader as Civitai Helper's ``.civitai.info``, which stores the same object), and an answer whose
files list a SHA256 other than the file's own is refused (AutoV2 is only 10 hex digits).
"""

from .client import DEFAULT_ENDPOINT, CivitaiClient, CivitaiError, CivitaiUnreachable
from .lookup import LookupResult, lookup_files, lookup_registry

__all__ = ["DEFAULT_ENDPOINT", "CivitaiClient", "CivitaiError", "CivitaiUnreachable", "LookupResult",
           "lookup_files", "lookup_registry"]
