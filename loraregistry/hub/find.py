"""``search``: adapters on a Hub (``HfApi.list_models``) and in the local registry, one result shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import env

LORA_TAG = "lora"


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
    from .client import hub_api, hub_errors

    arch = get(base) if base else None
    tags = [LORA_TAG, *([arch.hub_tag] if arch else []), *([tag] if tag else [])]
    api = hub_api(endpoint, token)
    hits: list[SearchHit] = []
    with hub_errors(endpoint=endpoint):
        models = list(api.list_models(search=query or None, filter=tags, limit=limit,
                                      expand=["cardData", "siblings", "downloads", "likes", "tags"]))
        for model in models:
            hit = _hub_hit(model)
            if hit.has_lorareg_metadata:
                _add_lorareg_json(api, model.id, hit)
            if trigger and trigger.lower() not in (w.lower() for w in hit.trigger_words):
                continue
            if arch and hit.architecture and hit.architecture != arch.id and not _same_family(hit.architecture, arch):
                continue
            hits.append(hit)
    return hits


def _hub_hit(model) -> SearchHit:
    card = model.card_data.to_dict() if model.card_data is not None and hasattr(model.card_data, "to_dict") else {}
    files = {s.rfilename for s in model.siblings or []}
    prompt = card.get("instance_prompt")
    base_model = card.get("base_model")
    return SearchHit(source="hub", id=model.id, name=model.id.split("/")[-1],
                     trigger_words=[w.strip() for w in prompt.split(",")] if isinstance(prompt, str) else [],
                     tags=list(model.tags or []), downloads=model.downloads, likes=model.likes,
                     base_model=base_model if isinstance(base_model, str) else None,
                     content_rating="adult" if "not-for-all-audiences" in (model.tags or []) else None,
                     has_lorareg_metadata="lorareg.json" in files)


def _add_lorareg_json(api, repo_id: str, hit: SearchHit) -> None:
    """Best effort: a repo whose lorareg.json is unreadable is still a hit, with what its card says."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="lorareg-search-") as tmp:
            path = api.hf_hub_download(repo_id, "lorareg.json", cache_dir=tmp)
            record = json.loads(open(path, encoding="utf-8").read())
    except Exception:  # noqa: BLE001 - any failure just leaves the card's facts
        return
    if isinstance(record, dict):
        hit.name = record.get("name") or hit.name
        hit.trigger_words = list(record.get("trigger_words") or hit.trigger_words)
        hit.architecture = (record.get("base") or {}).get("architecture")
        hit.content_rating = record.get("content_rating") or hit.content_rating


def _same_family(arch_id: str, arch) -> bool:
    from ..architectures import resolve

    other = resolve(arch_id)
    return other is not None and other.family == arch.family
