"""``search``: adapters on a Hub (its ``/api/models`` search, read bounded) and in the local registry, one shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import env
from .errors import HOSTILE_HINT, HubError, InvalidRepoId, server_text
from .uri import check_repo_id

LORA_TAG = "lora"
METADATA_FILE = "lorareg.json"
METADATA_CAP = 1 << 20  # a lorareg.json is a few KB


@dataclass
class SearchHit:
    source: str  # "hub" or "local"
    id: str  # repo id, or registry id
    name: str | None = None
    architecture: str | None = None
    trigger_words: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    content_rating: str | None = None
    downloads: int | None = None
    likes: int | None = None
    base_model: str | None = None
    has_lorareg_metadata: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def search(query: str | None = None, *, base: str | None = None, trigger: str | None = None, tag: str | None = None,
           hub: bool = True, local: bool = True, endpoint: str | None = None, token: str | None = None,
           limit: int = 20, registry: Any = None) -> list[SearchHit]:
    """Local hits first, then Hub hits. ``base``: an architecture id or alias; ``trigger``: a trigger word."""
    hits: list[SearchHit] = []
    if local:
        hits += _search_local(query, base=base, trigger=trigger, tag=tag, limit=limit, registry=registry)
    if hub:
        hits += search_hub(query, base=base, trigger=trigger, tag=tag, endpoint=endpoint, token=token, limit=limit)
    return hits


def _search_local(query, *, base, trigger, tag, limit, registry) -> list[SearchHit]:
    from ..registry import Registry

    own = registry is None
    reg = Registry.open() if own else registry
    try:
        entries = reg.search(query, architecture=base, trigger=trigger, tag=tag, limit=limit)
    finally:
        if own:
            reg.close()
    return [SearchHit(source="local", id=e.id, name=e.title, architecture=e.architecture,
                      trigger_words=list(e.trigger_words), tags=list(e.tags), content_rating=e.content_rating)
            for e in entries]


def search_hub(query: str | None = None, *, base: str | None = None, trigger: str | None = None,
               tag: str | None = None, endpoint: str | None = None, token: str | None = None,
               limit: int = 20) -> list[SearchHit]:
    """LoRA repos on the Hub: ``filter`` tags (lora + family tag of ``base`` + ``tag``) and ``search`` text
    (the Hub matches it against repo ids). Repos carrying ``lorareg.json`` contribute their trigger words and
    architecture; ``trigger`` keeps the repos whose trigger words (lorareg.json, else the card's
    instance_prompt) include it, case-insensitively."""
    endpoint = env.prepare(endpoint)
    from ..architectures import get
    from .transport import get_json, hub_headers

    arch = get(base) if base else None
    tags = [LORA_TAG, *([arch.hub_tag] if arch else []), *([tag] if tag else [])]
    headers = hub_headers(token)
    params = {"filter": tags, "limit": limit, "expand": ["cardData", "siblings", "downloads", "likes", "tags"]}
    if query:
        params["search"] = query
    models = get_json(f"{endpoint}/api/models", params=params, headers=headers, what="the model search",
                      endpoint=endpoint)
    if not isinstance(models, list):
        raise HubError(f"{endpoint} answered the model search with no JSON list", hint=HOSTILE_HINT)
    hits: list[SearchHit] = []
    for model in models[:limit]:
        hit = _hub_hit(model)
        if hit is None:
            continue
        if hit.has_lorareg_metadata:
            _add_lorareg_json(endpoint, headers, hit)
        if trigger and trigger.lower() not in (w.lower() for w in hit.trigger_words):
            continue
        if arch and hit.architecture and hit.architecture != arch.id and not _same_family(hit.architecture, arch):
            continue
        hits.append(hit)
    return hits


def _hub_hit(model: Any) -> SearchHit | None:
    """A search result as the Hub's JSON gives it; entries without a usable repo id are left out."""
    if not isinstance(model, dict):
        return None
    repo_id = model.get("id") or model.get("modelId")
    try:
        check_repo_id(repo_id if isinstance(repo_id, str) else "")
    except InvalidRepoId:
        return None
    card = model.get("cardData") if isinstance(model.get("cardData"), dict) else {}
    tags = [_text(t) for t in model.get("tags") if isinstance(t, str)] if isinstance(model.get("tags"), list) else []
    siblings = model.get("siblings") if isinstance(model.get("siblings"), list) else []
    files = {s.get("rfilename") for s in siblings if isinstance(s, dict)}
    prompt = card.get("instance_prompt")
    base_model = card.get("base_model")
    return SearchHit(source="hub", id=repo_id, name=repo_id.split("/")[-1],
                     trigger_words=[_text(w.strip()) for w in prompt.split(",")] if isinstance(prompt, str) else [],
                     tags=tags, downloads=_count(model.get("downloads")), likes=_count(model.get("likes")),
                     base_model=_text(base_model) if isinstance(base_model, str) else None,
                     content_rating="adult" if "not-for-all-audiences" in tags else None,
                     has_lorareg_metadata="lorareg.json" in files)


def _text(value: str) -> str:
    """A string a server chose, as shown: control characters visible (no terminal escapes), bounded."""
    return server_text(value, 200)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _add_lorareg_json(endpoint: str, headers, hit: SearchHit) -> None:
    """Best effort: a repo whose lorareg.json is unreadable is still a hit, with what its card says."""
    from .api import small_file

    try:
        data = small_file(endpoint, headers, hit.id, METADATA_FILE, "main", cap=METADATA_CAP)
        record = json.loads(data) if data is not None else None
    except (HubError, ValueError, RecursionError):
        return
    if isinstance(record, dict):
        name, words = record.get("name"), record.get("trigger_words")
        arch, rating = (record.get("base") or {}), record.get("content_rating")
        hit.name = _text(name) if isinstance(name, str) and name else hit.name
        if isinstance(words, list) and all(isinstance(w, str) for w in words):
            hit.trigger_words = [_text(w) for w in words] or hit.trigger_words
        architecture = arch.get("architecture") if isinstance(arch, dict) else None
        hit.architecture = _text(architecture) if isinstance(architecture, str) else None
        hit.content_rating = _text(rating) if isinstance(rating, str) and rating else hit.content_rating


def _same_family(arch_id: str, arch) -> bool:
    from ..architectures import resolve

    other = resolve(arch_id)
    return other is not None and other.family == arch.family
