"""Look files or registry entries up on Civitai by AutoV2 and keep the answers in the registry record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..registry.sidecars import SOURCE_CIVITAI_API, Sidecars, civitai_version_facts
from .client import CivitaiClient, CivitaiError


@dataclass
class LookupResult:
    """One lookup: ``found`` False means Civitai has no file with this hash. ``recorded``: stored with the
    registry entry of the same sha256 (None: no entry to store it with)."""

    name: str
    sha256: str
    autov2: str
    url: str
    found: bool
    facts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recorded: bool | None = None

    def value(self, name: str) -> Any:
        return next((f["value"] for f in self.facts if f["field"] == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "autov2": self.autov2, "url": self.url,
                "found": self.found, "facts": self.facts, "problems": self.problems, "recorded": self.recorded}


def answer_facts(data: dict[str, Any], *, url: str, sha256: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Facts (source ``civitai-api``) from a model-version answer, after checking it is about this file."""
    files = data.get("files") if isinstance(data.get("files"), list) else []
    listed = {f["hashes"]["SHA256"].lower() for f in files if isinstance(f, dict) and isinstance(f.get("hashes"), dict)
              and isinstance(f["hashes"].get("SHA256"), str)}
    if listed and sha256.lower() not in listed:
        raise CivitaiError(f"{url}: Civitai's version lists other files (SHA256 {', '.join(sorted(listed))[:80]}), "
                           "not this one", hint="the 10-digit AutoV2 matched by chance; nothing was recorded")
    out = Sidecars()
    civitai_version_facts(data, url, out, source=SOURCE_CIVITAI_API)
    return out.facts, out.problems


def _lookup(client: CivitaiClient, *, name: str, sha256: str) -> LookupResult:
    autov2 = sha256[:10].upper()  # Civitai prints AutoV2 in upper case; the endpoint matches either
    url = client.version_url(autov2)
    data = client.by_hash(autov2)
    if data is None:
        return LookupResult(name, sha256, autov2, url, found=False)
    facts, problems = answer_facts(data, url=url, sha256=sha256)
    return LookupResult(name, sha256, autov2, url, found=True, facts=facts, problems=problems)


def lookup_files(paths: list[str | os.PathLike[str]], *, client: CivitaiClient, registry: Any = None
                 ) -> list[LookupResult]:
    """Look each file up; when ``registry`` holds an entry with the file's sha256, store the answer there."""
    from ..hashes import hash_file
    from ..registry.scan import record_civitai

    results = []
    for path in paths:
        sha256 = hash_file(path).sha256
        result = _lookup(client, name=str(path), sha256=sha256)
        if registry is not None:
            if _has_entry(registry, sha256):
                record_civitai(registry, sha256, url=result.url, found=result.found, facts=result.facts)
                result.recorded = True
        results.append(result)
    return results


def lookup_registry(registry: Any, *, client: CivitaiClient, refresh: bool = False) -> list[LookupResult]:
    """Look up every entry not looked up before (every entry with ``refresh``) and store the answers."""
    from ..registry.scan import record_civitai

    sql = "SELECT sha256, name, file_name FROM entries"
    if not refresh:
        sql += " WHERE sha256 NOT IN (SELECT sha256 FROM civitai_lookups)"
    rows = registry._conn.execute(sql + " ORDER BY file_name, sha256").fetchall()
    results = []
    for row in rows:
        result = _lookup(client, name=row["name"] or row["file_name"], sha256=row["sha256"])
        record_civitai(registry, row["sha256"], url=result.url, found=result.found, facts=result.facts)
        result.recorded = True
        results.append(result)
    return results


def _has_entry(registry: Any, sha256: str) -> bool:
    return registry._conn.execute("SELECT 1 FROM entries WHERE sha256 = ?", (sha256,)).fetchone() is not None
