"""What the registry records: an ``Entry`` per distinct adapter file, with the ``Origin``s it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ENTRY_SCHEMA_VERSION = "1"
BLOB_IN_PLACE, BLOB_GONE = "in_place", "gone"


@dataclass(frozen=True)
class Origin:
    """Where one copy of an entry came from: a local file, or a file of a Hub repo at a commit."""

    kind: str  # "file" or "hub"
    path: str | None = None  # kind "file": the absolute path it was added from
    endpoint: str | None = None  # kind "hub": the Hub endpoint, repo id, commit sha and file in the repo
    repo: str | None = None
    revision: str | None = None
    file: str | None = None

    @classmethod
    def local(cls, path: str) -> Origin:
        return cls(kind="file", path=path)

    @classmethod
    def hub(cls, *, endpoint: str, repo: str, revision: str, file: str) -> Origin:
        return cls(kind="hub", endpoint=endpoint, repo=repo, revision=revision, file=file)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Origin:
        return cls(**{k: data.get(k) for k in ("kind", "path", "endpoint", "repo", "revision", "file")})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        if self.kind == "hub":
            return f"{self.endpoint}/{self.repo}@{self.revision}:{self.file}"
        return self.path or "?"


@dataclass(frozen=True)
class Verdict:
    """The verify verdict recorded with an entry: ok, and the codes of its error findings."""

    ok: bool
    error_codes: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, report: Any) -> Verdict:
        return cls(ok=bool(report.ok), error_codes=tuple(sorted({f.code for f in report.findings
                                                                  if f.severity == "error"})))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error_codes": list(self.error_codes)}


@dataclass(frozen=True)
class Entry:
    """One adapter in the registry, identified by the sha256 of its bytes."""

    sha256: str
    path: str  # the blob in the store
    file_name: str
    size: int
    added_at: str
    name: str | None = None
    description: str | None = None
    architecture: str | None = None
    format: str | None = None
    network_type: str | None = None
    rank: int | None = None
    content_rating: str = "general"
    trigger_words: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tensor_sha256: str | None = None
    verdict: Verdict | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the canonical record (AdapterMetadata as JSON)
    origins: tuple[Origin, ...] = ()
    blob: str = "ok"  # the stored file by the cheap check: ok, missing, or changed (size/mtime differ);
    # for an entry indexed in place (no stored copy): in_place while a scanned location holds it, else gone
    sub_base: str | None = None  # the finer base a sidecar or Civitai names (Pony, Illustrious, ...)
    hashes: dict[str, Any] = field(default_factory=dict)  # sha256, autov1/2/3, crc32, blake3
    loaders: dict[str, str] = field(default_factory=dict)  # loader -> loads / loads_partly / fails / not_modelled
    findings: dict[str, Any] = field(default_factory=dict)  # {"verify": [...], "loaders": {name: [...]}}
    imported: dict[str, Any] = field(default_factory=dict)  # sidecar facts with sources, and conflicts
    locations: tuple[dict[str, Any], ...] = ()  # files indexed in place: path, state, preview, moved_to

    @classmethod
    def from_index(cls, **values: Any) -> Entry:
        """An entry from every one of its fields, as the index gives them (a search builds 1,000s): the same object
        ``Entry(**values)`` builds, without the frozen ``__init__``'s ``object.__setattr__`` per field (6 -> 0.5 ms a
        1,000-entry search). Every field must be given (a test checks the registry's reads do)."""
        entry = object.__new__(cls)
        entry.__dict__.update(values)
        return entry

    @property
    def in_place(self) -> bool:
        return self.blob in (BLOB_IN_PLACE, BLOB_GONE)

    def imported_values(self, name: str) -> list[tuple[Any, str]]:
        """(value, source) of each imported fact for the field ``name``."""
        return [(f["value"], f["source"]) for f in self.imported.get("facts", ()) if f.get("field") == name]

    @property
    def all_trigger_words(self) -> tuple[str, ...]:
        """Declared trigger words, then those sidecars and Civitai add, once each."""
        words = list(self.trigger_words)
        for value, _ in self.imported_values("trigger_words"):
            words += value
        seen: dict[str, str] = {}
        for word in words:
            seen.setdefault(word.lower(), word)
        return tuple(seen.values())

    @property
    def preview(self) -> str | None:
        return next((loc["preview"] for loc in self.locations if loc["state"] == "present" and loc.get("preview")),
                    None)

    @property
    def id(self) -> str:
        """Short id shown to users; any unique prefix of the sha256 works too."""
        return self.sha256[:12]

    @property
    def title(self) -> str:
        return self.name or self.file_name

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": ENTRY_SCHEMA_VERSION,
            "id": self.id,
            "sha256": self.sha256,
            "tensor_sha256": self.tensor_sha256,
            "name": self.name,
            "description": self.description,
            "file_name": self.file_name,
            "size": self.size,
            "path": self.path,
            "added_at": self.added_at,
            "architecture": self.architecture,
            "format": self.format,
            "network_type": self.network_type,
            "rank": self.rank,
            "content_rating": self.content_rating,
            "trigger_words": list(self.trigger_words),
            "tags": list(self.tags),
            "verify": self.verdict.to_dict() if self.verdict else None,
            "blob": self.blob,
            "metadata": self.metadata,
            "origins": [o.to_dict() for o in self.origins],
            "sub_base": self.sub_base,
            "hashes": self.hashes,
            "loaders": self.loaders,
            "findings": self.findings,
            "imported": self.imported,
            "locations": list(self.locations),
        }
