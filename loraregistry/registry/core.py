"""``Registry``: the embedded local index of adapters (SQLite + content-addressed store), zero setup.

Layout under the root (``LORAREG_HOME`` or the user data dir)::

    registry.db                     SQLite in WAL mode: entries, origins, FTS5 index
    store/sha256/ab/cdef....safetensors   the adapters, by the sha256 of their bytes
    store/sha256/ab/cdef....jsonl         append-only journal per blob (origins, verdicts)

Writes are ordered blob -> journal -> index, so a crash at any point leaves at most an unindexed blob,
which ``rebuild`` picks up: the index can always be recreated from the store.

Integrity: every entry records its blob's size and mtime, and ``list``/``show`` compare them (cheap);
``check`` re-hashes every blob; ``export`` refuses while a blob is missing or changed; ``rebuild`` reports
the entries it could not bring back.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from ..errors import UsageError
from .db import connect, sqlite_errors, transaction
from .entry import BLOB_GONE, BLOB_IN_PLACE, Entry, Origin, Verdict
from .errors import AmbiguousEntry, BlobIntegrityError, EntryNotFound, RegistryNotWritable
from .civitai_bases import finer_base
from .paths import DB_NAME, default_root
from ..hashes import file_sha256
from .store import BLOB_CHANGED, BLOB_MISSING, BLOB_OK, Store, hash_blob

RATINGS = ("general", "mature", "adult")
_SHA_PREFIX = re.compile(r"[0-9a-f]{4,64}")  # shorter prefixes match too much to be useful


@dataclass
class RebuildResult:
    """What ``rebuild`` did: entries indexed, blobs it could not index (path, reason), entries it dropped
    because their stored file is gone (sha256, title, reason), and where the old index was kept aside."""

    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str, str]] = field(default_factory=list)
    moved_aside: str | None = None

    @property
    def ok(self) -> bool:
        """True when every entry came back."""
        return not self.skipped and not self.dropped

    def to_dict(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "dropped": [{"sha256": h, "title": t, "reason": r} for h, t, r in self.dropped],
                "moved_aside": self.moved_aside}


# ``check`` statuses beyond the blob states: unreadable (a problem), linked and unindexed (notes).
BLOB_UNREADABLE, BLOB_LINKED, BLOB_UNINDEXED = "unreadable", "linked", "unindexed"
_CHECK_PROBLEMS = (BLOB_MISSING, BLOB_CHANGED, BLOB_UNREADABLE)


@dataclass(frozen=True)
class BlobCheck:
    """``check``'s finding for one stored file."""

    sha256: str
    title: str
    path: str
    status: str  # ok, missing, changed, unreadable (problems); linked, unindexed (notes)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status not in _CHECK_PROBLEMS

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "title": self.title, "path": self.path, "status": self.status,
                "ok": self.ok, "detail": self.detail}


class Registry:
    """Open with ``Registry.open()``; one instance per process (connections are not shared across forks)."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.db_path = root / DB_NAME
        self.store = Store(root / "store")
        self._conn = conn

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Registry:
        """Open (creating if needed) the registry at ``root`` (default: ``default_root()``)."""
        path = Path(root) if root is not None else default_root()
        _ensure_writable(path)
        return cls(path, connect(path / DB_NAME))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------------

    def add(self, path: str | os.PathLike[str], *, origin: Origin | None = None, report: Any = None) -> Entry:
        """Store an adapter file and index it; adding the same bytes again only records the new origin.

        The file is not verified here: pass the verify ``report`` to record its verdict (and the detected
        architecture when the metadata declares none). Raises for files that are no adapter.
        """
        [entry] = self.add_many([path], origins=[origin], reports=[report])
        return entry

    def add_many(self, paths: Sequence[str | os.PathLike[str]], *, origins: Sequence[Origin | None] | None = None,
                 reports: Sequence[Any] | None = None, verify_with: Callable[[Path], Any] | None = None,
                 jobs: int | None = None) -> list[Entry]:
        """``add`` each file in order, faster than one ``add`` per file (see ``registry.add``): ``origins`` and
        ``reports`` give one per path, or ``verify_with`` makes each file's report just before it is added. A file
        that fails raises its error; the files before it stay added, the files after it are not added. ``jobs``:
        worker processes that read files ahead (default: the cores idle now, at most 8; 1 = none)."""
        from .add import add_files

        return add_files(self, paths, origins=origins, reports=reports, verify_with=verify_with, jobs=jobs)

    def scan(self, roots: list[str | os.PathLike[str]], *, verify_files: bool = True,
             jobs: int | None = None) -> Any:
        """Index folders in place (no copy): see ``registry.scan``. Returns a ``ScanResult``."""
        from .scan import scan

        return scan(self, list(roots), verify_files=verify_files, jobs=jobs)

    def export_sidecars(self, *, roots: list[str] | None = None, force: bool = False) -> list[Any]:
        """Write A1111/Forge ``name.json`` sidecars next to indexed files: see ``registry.export_sidecars``."""
        from .export_sidecars import export_sidecars

        return export_sidecars(self, roots=roots, force=force)

    def facets(self) -> dict[str, list[str]]:
        """The values present in the index to filter by: architectures, finer bases and tags, sorted."""
        with sqlite_errors(self.db_path):
            q = self._conn.execute
            return {
                "architectures": [r[0] for r in q("SELECT DISTINCT architecture FROM entries "
                                                  "WHERE architecture IS NOT NULL ORDER BY 1")],
                "sub_bases": [r[0] for r in q("SELECT DISTINCT sub_base FROM entries WHERE sub_base IS NOT NULL "
                                              "ORDER BY 1")],
                "tags": [r[0] for r in q("SELECT DISTINCT json_each.value FROM entries, json_each(entries.tags) "
                                         "ORDER BY 1")],
            }

    def roots(self) -> list[str]:
        """The folders ``scan`` has indexed: previews and files are served only from under these."""
        with sqlite_errors(self.db_path):
            return [row["path"] for row in self._conn.execute("SELECT path FROM scan_roots ORDER BY path")]

    def remove(self, ref: str) -> Entry:
        """Remove an entry (by id, sha256 prefix or name) and its stored file."""
        entry = self.show(ref)
        with sqlite_errors(self.db_path), transaction(self._conn) as conn:
            row = conn.execute("SELECT rowid FROM entries WHERE sha256 = ?", (entry.sha256,)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM entries_fts WHERE rowid = ?", (row["rowid"],))
                conn.execute("DELETE FROM entries WHERE sha256 = ?", (entry.sha256,))
                conn.execute("DELETE FROM locations WHERE sha256 = ?", (entry.sha256,))
        self.store.remove(entry.sha256)  # an entry indexed in place has no stored copy; its file stays
        return entry

    # --- reading -------------------------------------------------------------------------------

    def search(self, query: str | None = None, *, architecture: str | None = None, trigger: str | None = None,
               tag: str | None = None, rating: str | None = None, loader: str | None = None,
               outcome: str = "loads", limit: int | None = None, offset: int = 0) -> list[Entry]:
        """Entries matching every filter given. ``query`` searches name, description, trigger words and tags
        (FTS5, prefix match per word; trigger words and names from sidecars too); ``trigger`` matches a
        trigger word or phrase; ``architecture`` takes any alias (``sdxl``, ``SD 1.5``) or a finer base
        (``Pony``, ``Illustrious``: entries a sidecar or Civitai says are for it); ``tag`` matches a tag
        exactly (case-insensitive); ``loader`` (a loader name) keeps entries whose recorded verdict for that
        loader is ``outcome`` (default: loads fully)."""
        sql = ["SELECT e.* FROM entries e"]
        where: list[str] = []
        params: list[Any] = []
        match = _fts_match(query, trigger)
        if match:
            sql.append("JOIN entries_fts f ON f.rowid = e.rowid")
            where.append("entries_fts MATCH ?")
            params.append(match)
        if architecture:
            finer = finer_base(architecture)
            if finer is not None:
                where.append("lower(e.sub_base) = lower(?)")
                params.append(finer.label)
            else:
                where.append("e.architecture = ?")
                params.append(_architecture_id(architecture))
        if loader:
            where.append("json_extract(e.loaders, ?) = ?")
            params += [f"$.{_loader_name(loader)}", _outcome(outcome)]
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(e.tags) WHERE lower(json_each.value) = lower(?))")
            params.append(tag.strip())
        if rating:
            if rating not in RATINGS:
                raise UsageError(f"unknown content rating {rating!r}", hint=f"use one of {', '.join(RATINGS)}")
            where.append("e.content_rating = ?")
            params.append(rating)
        if where:
            sql.append("WHERE " + " AND ".join(where))
        sql.append("ORDER BY bm25(entries_fts), e.added_at DESC" if match else "ORDER BY e.added_at DESC, e.sha256")
        if limit is not None or offset:
            sql.append("LIMIT ? OFFSET ?")
            params += [-1 if limit is None else int(limit), int(offset)]
        with sqlite_errors(self.db_path):
            rows = self._conn.execute(" ".join(sql), params).fetchall()
            return self._entries(rows)

    def list(self, **filters: Any) -> list[Entry]:
        """Every entry, newest first (same filters as ``search``, without a query)."""
        return self.search(None, **filters)

    def show(self, ref: str) -> Entry:
        """The entry a full sha256, a unique sha256 prefix (4+ hex digits) or an exact name names."""
        ref = ref.strip().lower()
        with sqlite_errors(self.db_path):
            rows: list[sqlite3.Row] = []
            if _SHA_PREFIX.fullmatch(ref):
                rows = self._conn.execute("SELECT * FROM entries WHERE sha256 LIKE ? LIMIT 11",
                                          (ref + "%",)).fetchall()
            if not rows:
                rows = self._conn.execute("SELECT * FROM entries WHERE lower(name) = ? OR lower(file_name) = ? "
                                          "LIMIT 11", (ref, ref)).fetchall()
            if not rows:
                raise EntryNotFound(f"no registry entry matches {ref!r}",
                                    hint="give an id or sha256 prefix from `lorareg registry list`, or a name")
            if len(rows) > 1:
                ids = ", ".join(f"{r['sha256'][:12]} ({r['name'] or r['file_name']})" for r in rows[:10])
                raise AmbiguousEntry(f"{ref!r} matches several entries: {ids}", hint="give more of the sha256")
            return self._entry(rows[0])

    def export(self) -> Iterator[dict[str, Any]]:
        """Every entry as a dict (``Entry.to_dict``), oldest first: the registry as data.

        Raises BlobIntegrityError (before yielding anything) when a stored file is missing or changed: an
        export must not vouch for bytes the registry no longer holds."""
        with sqlite_errors(self.db_path):
            rows = self._conn.execute("SELECT * FROM entries ORDER BY added_at, sha256").fetchall()
            entries = self._entries(rows)
        damaged = [e for e in entries if e.blob not in (BLOB_OK, BLOB_IN_PLACE, BLOB_GONE)]
        if damaged:
            listed = "; ".join(f"{e.id} ({e.title}): stored file {e.blob}" for e in damaged[:3])
            more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
            raise BlobIntegrityError(f"not exporting: {listed}{more}", path=self.root,
                                     hint="run `lorareg registry check`, then re-add or remove those entries")
        for entry in entries:
            yield entry.to_dict()

    def check(self) -> list[BlobCheck]:
        """Re-hash every stored file against its entry; also lists stored files the index lacks.

        A blob whose bytes are right but whose size/mtime record is stale gets its record refreshed, so
        ``list`` stops flagging it."""
        with sqlite_errors(self.db_path):
            rows = self._conn.execute("SELECT sha256, name, file_name, size, blob_mtime_ns FROM entries "
                                      "WHERE stored IS NOT 0 ORDER BY added_at, sha256").fetchall()
        found: list[BlobCheck] = []
        refresh: list[tuple[int, int, str]] = []
        for row in rows:
            sha, title = row["sha256"], row["name"] or row["file_name"]
            path = self.store.blob_path(sha)
            try:
                st = path.stat()
                actual = hash_blob(path)
            except FileNotFoundError:
                found.append(BlobCheck(sha, title, str(path), BLOB_MISSING, "the stored file is gone"))
                continue
            except OSError as exc:
                found.append(BlobCheck(sha, title, str(path), BLOB_UNREADABLE, exc.strerror or str(exc)))
                continue
            if actual != sha:
                found.append(BlobCheck(sha, title, str(path), BLOB_CHANGED, f"its bytes now hash to {actual}"))
                continue
            if (st.st_size, st.st_mtime_ns) != (row["size"], row["blob_mtime_ns"]):
                refresh.append((st.st_size, st.st_mtime_ns, sha))
            if st.st_nlink > 1:
                found.append(BlobCheck(sha, title, str(path), BLOB_LINKED,
                                       f"hard-linked to {st.st_nlink - 1} file(s) outside the store by an older "
                                       "lorareg: editing those changes this entry; add the file again to give "
                                       "the store its own copy"))
            else:
                found.append(BlobCheck(sha, title, str(path), BLOB_OK))
        indexed = {row["sha256"] for row in rows}
        for claimed, blob in self.store.blobs():
            if claimed not in indexed:
                found.append(BlobCheck(claimed, blob.name, str(blob), BLOB_UNINDEXED,
                                       "in the store but not in the index (`lorareg registry rebuild` adds it)"))
        if refresh:
            with sqlite_errors(self.db_path), transaction(self._conn) as conn:
                conn.executemany("UPDATE entries SET size = ?, blob_mtime_ns = ? WHERE sha256 = ?", refresh)
        return found

    def export_jsonl(self, out: TextIO) -> int:
        """Write ``export()`` as JSON lines; returns the number of entries."""
        count = 0
        for item in self.export():
            out.write(json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
        return count

    def entries_by_sha256(self, shas: Sequence[str]) -> list[Entry]:
        """The entries of these full sha256s, in their order (one query for them all)."""
        with sqlite_errors(self.db_path):
            rows = self._conn.execute("SELECT * FROM entries WHERE sha256 IN (SELECT value FROM json_each(?))",
                                      (json.dumps(list(shas)),)).fetchall()
            by_sha = {entry.sha256: entry for entry in self._entries(rows)}
        missing = [sha for sha in shas if sha not in by_sha]
        if missing:  # removed by another process meanwhile
            raise EntryNotFound(f"no registry entry matches {missing[0]!r}",
                                hint="give an id or sha256 prefix from `lorareg registry list`, or a name")
        return [by_sha[sha] for sha in shas]

    def _entry(self, row: sqlite3.Row) -> Entry:
        return self._entries([row])[0]

    def _entries(self, rows: list[sqlite3.Row]) -> list[Entry]:
        """Entries for index rows; their origins and locations come in one query each, not two per row (a search
        over 1,000 entries made 2,000 queries)."""
        if not rows:
            return []
        # A dict per row: sqlite3.Row finds a column by name by comparing it with each column name in turn
        # (case-insensitively), and the two dozen lookups per entry cost a search over 1,000 entries ~10 ms.
        columns = rows[0].keys()
        records = [dict(zip(columns, row)) for row in rows]
        shas = json.dumps([record["sha256"] for record in records])
        origins: dict[str, list[Origin]] = {}
        for sha256, *values in self._conn.execute(
                "SELECT sha256, kind, path, endpoint, repo, revision, file FROM origins "
                "WHERE sha256 IN (SELECT value FROM json_each(?)) "
                "ORDER BY sha256, added_at, kind, path, endpoint, repo, revision, file", (shas,)):
            origins.setdefault(sha256, []).append(
                Origin.from_dict({k: (v or None) for k, v in zip(_ORIGIN_FIELDS, values)}))
        locations: dict[str, list[dict[str, Any]]] = {}
        for sha256, path, root, state, preview, moved_to in self._conn.execute(
                "SELECT sha256, path, root, state, preview, moved_to FROM locations "
                "WHERE sha256 IN (SELECT value FROM json_each(?)) ORDER BY sha256, state != 'present', path",
                (shas,)):
            locations.setdefault(sha256, []).append(
                {"path": path, "state": state, "preview": preview, "moved_to": moved_to, "root": root})
        return [self._build_entry(record, tuple(origins.get(record["sha256"], ())),
                                  tuple(locations.get(record["sha256"], ())))
                for record in records]

    def _build_entry(self, row: dict[str, Any], origins: tuple[Origin, ...],
                     locations: tuple[dict[str, Any], ...]) -> Entry:
        if row["stored"] == 0:  # indexed in place: the file the user keeps is the entry's file
            present = [loc["path"] for loc in locations if loc["state"] == "present"]
            path = present[0] if present else (locations[0]["path"] if locations else "")
            blob = BLOB_IN_PLACE if present else BLOB_GONE
        else:
            path = self.store.blob_location(row["sha256"])
            blob = self.store.blob_state(row["sha256"], row["size"], row["blob_mtime_ns"])
        return Entry.from_index(
            sha256=row["sha256"], path=path, file_name=row["file_name"],
            size=row["size"], added_at=row["added_at"], name=row["name"], description=row["description"],
            architecture=row["architecture"], format=row["format"], network_type=row["network_type"],
            rank=row["rank"], content_rating=row["content_rating"],
            trigger_words=_json_strings(row["trigger_words"]), tags=_json_strings(row["tags"]),
            tensor_sha256=row["tensor_sha256"],
            verdict=_verdict(row["verdict"]),
            blob=blob,
            metadata=_json(row["metadata"], {}),
            origins=origins,
            sub_base=row["sub_base"],
            hashes=_json(row["hashes"], {}),
            loaders=dict(_loader_outcomes(row["loaders"])),
            findings=_json(row["findings"], {}),
            imported=_json(row["imported"], {}),
            locations=locations,
        )


# --- helpers ---------------------------------------------------------------------------------------


_DECODER = json.JSONDecoder()
_ORIGIN_FIELDS = ("kind", "path", "endpoint", "repo", "revision", "file")  # the origins query's order


def _json(text: str | None, empty: Any) -> Any:
    """A JSON column, ``empty`` when it holds nothing (NULL or ''). Most columns of most entries hold "{}" or "[]",
    and a search decodes eight per entry: those skip the decoder. The others go through ``raw_decode``, which
    skips ``decode``'s two whitespace regex matches (a third of the decoding time): the index holds compact
    ``json.dumps`` text, so the value ends the text; anything else goes through ``decode`` (same value or error)."""
    if not text:
        return empty
    if text == "{}":
        return {}
    if text == "[]":
        return []
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        end = -1
    return value if end == len(text) else _DECODER.decode(text)


# Columns whose decoded values are immutable (tuples, a frozen Verdict) or copied per entry (a flat dict of str) are
# decoded once per distinct text: a search over 1,000 entries sees a handful of tag lists and verdicts, and most
# entries' loader outcomes are identical. Nothing mutable is shared between entries.
@functools.lru_cache(maxsize=4096)
def _json_strings(text: str | None) -> tuple[str, ...]:
    return tuple(_json(text, ()))


@functools.lru_cache(maxsize=1024)
def _verdict(text: str | None) -> Verdict | None:
    verdict = _json(text, None)
    return Verdict(ok=verdict["ok"], error_codes=tuple(verdict["error_codes"])) if verdict else None


@functools.lru_cache(maxsize=1024)
def _loader_outcomes(text: str | None) -> tuple[tuple[str, str], ...]:
    return tuple(_json(text, {}).items())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryNotWritable(str(root), exc.strerror or str(exc)) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise RegistryNotWritable(str(root), "permission denied")


def _stat(path: Path) -> os.stat_result:
    from ..errors import FileAccessError

    try:
        return path.stat()
    except FileNotFoundError:
        raise FileAccessError("no such file", path=path, hint="check the path") from None


def _read_facts(path: Path) -> dict[str, Any]:
    """Everything the index stores about a file, read from the file itself."""
    from ..adapter import AdapterFile

    stat = _stat(path)
    return adapter_facts(AdapterFile.open(path), stat)


def adapter_facts(adapter: Any, stat: os.stat_result, *, hashes: Any = None) -> dict[str, Any]:
    """The index's facts from an open ``AdapterFile``; ``hashes`` when already computed, else it hashes the file
    (one read)."""
    meta = adapter.metadata
    hashes = hashes if hashes is not None else adapter.hashes
    return {
        "stat": stat,
        "sha256": hashes.sha256,
        "tensor_sha256": hashes.autov3,
        "hashes": hashes.as_dict(),
        "name": meta.name,
        "description": meta.description,
        "size": stat.st_size,
        "architecture": meta.base.architecture,
        "format": adapter.format,
        "network_type": adapter.network_type,
        "rank": adapter.facts.rank,
        "content_rating": meta.content_rating,
        "trigger_words": list(meta.trigger_words),
        "tags": list(meta.tags),
        "metadata": meta.model_dump(mode="json", exclude_defaults=True),
    }


def _insert(conn: sqlite3.Connection, facts: dict[str, Any], event: dict[str, Any], blob: Path) -> None:
    """Insert the entry (first add wins), its FTS row, the event's origin, and the newest verdict."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO entries (sha256, tensor_sha256, name, description, file_name, size, architecture, "
        "format, network_type, rank, content_rating, trigger_words, tags, metadata, added_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (facts["sha256"], facts["tensor_sha256"], facts["name"], facts["description"],
         event.get("file_name") or blob.name, facts["size"], facts["architecture"], facts["format"],
         facts["network_type"], facts["rank"], facts["content_rating"], json.dumps(facts["trigger_words"]),
         json.dumps(facts["tags"]), json.dumps(facts["metadata"], sort_keys=True), event["added_at"]))
    if cur.rowcount == 1:
        conn.execute("INSERT INTO entries_fts (rowid, name, description, trigger_words, tags) VALUES (?, ?, ?, ?, ?)",
                     (cur.lastrowid, facts["name"] or "", facts["description"] or "",
                      "\n".join(facts["trigger_words"]), "\n".join(facts["tags"])))
    elif facts["architecture"]:
        conn.execute("UPDATE entries SET architecture = ? WHERE sha256 = ? AND architecture IS NULL",
                     (facts["architecture"], facts["sha256"]))
    origin = event.get("origin")
    if origin:
        o = Origin.from_dict(origin)
        conn.execute("INSERT OR IGNORE INTO origins (sha256, kind, path, endpoint, repo, revision, file, added_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (facts["sha256"], o.kind, o.path or "", o.endpoint or "", o.repo or "", o.revision or "",
                      o.file or "", event["added_at"]))
    if event.get("verdict") is not None:
        conn.execute("UPDATE entries SET verdict = ? WHERE sha256 = ?",
                     (json.dumps(event["verdict"], sort_keys=True), facts["sha256"]))
    if facts.get("blob_mtime_ns") is not None:  # the blob as stored now (a re-add may have replaced it)
        conn.execute("UPDATE entries SET size = ?, blob_mtime_ns = ?, stored = 1 WHERE sha256 = ?",
                     (facts["size"], facts["blob_mtime_ns"], facts["sha256"]))
    elif cur.rowcount == 1:  # indexed in place (``registry scan``): the store holds no copy
        conn.execute("UPDATE entries SET stored = 0 WHERE sha256 = ?", (facts["sha256"],))
    if facts.get("hashes") is not None:
        conn.execute("UPDATE entries SET hashes = ? WHERE sha256 = ?",
                     (json.dumps(facts["hashes"], sort_keys=True), facts["sha256"]))


def _fts_match(query: str | None, trigger: str | None) -> str | None:
    """An FTS5 expression from free text: every word must match (as a prefix); quoting defuses FTS syntax."""
    parts: list[str] = []
    words = _words(query)
    if words:
        parts.append(" ".join(f'"{w}"*' for w in words))
    trigger_words = _words(trigger)
    if trigger_words:
        parts.append('trigger_words : "' + " ".join(trigger_words) + '"')
    return " AND ".join(f"({p})" for p in parts) or None


def _words(text: str | None) -> list[str]:
    return re.findall(r"\w+", text or "")


def _loader_name(name: str) -> str:
    """A known loader name (validated: it becomes part of a JSON path)."""
    from ..verify.consumers import parse_targets

    names = parse_targets(name)
    if len(names) != 1:
        raise UsageError(f"give one loader, got {name!r}", hint="e.g. comfyui, a1111, forge, diffusers")
    return names[0]


def _outcome(outcome: str) -> str:
    from ..verify.consumers import OUTCOMES

    if outcome not in OUTCOMES:
        raise UsageError(f"unknown loader outcome {outcome!r}", hint=f"use one of {', '.join(OUTCOMES)}")
    return outcome


def _architecture_id(name: str) -> str:
    from ..architectures import get

    return get(name).id


def _move_aside(db_path: Path) -> str | None:
    if not db_path.exists():
        return None
    aside = db_path.with_name(f"{db_path.name}.broken-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}")
    os.replace(db_path, aside)
    for suffix in ("-wal", "-shm"):  # the WAL belongs to the old file; replaying it on a new one corrupts it
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return str(aside)


def rebuild(root: str | os.PathLike[str] | None = None) -> RebuildResult:
    """Re-index the store from the files' own metadata and journals; the old database is kept aside.

    The fix for ``RegistryCorrupt``. Entries that cannot come back are reported, never dropped silently:
    ``skipped`` (a stored file that is damaged or unreadable) and ``dropped`` (an entry whose stored file
    is gone: its journal is left, or the old index, read best-effort, lists it). Run it while no other
    lorareg process writes to this registry.
    """
    path = Path(root) if root is not None else default_root()
    _ensure_writable(path)
    result = RebuildResult(moved_aside=_move_aside(path / DB_NAME))
    indexed: set[str] = set()
    reported: set[str] = set()
    with Registry(path, connect(path / DB_NAME)) as registry:
        for claimed, blob in registry.store.blobs():
            reported.add(claimed)
            try:
                actual = file_sha256(blob)
                if actual != claimed:
                    result.skipped.append((str(blob), f"content hash {actual} differs from its name (damaged)"))
                    continue
                facts = _read_facts(blob)
                facts.pop("stat")
                facts["blob_mtime_ns"] = registry.store.blob_mtime_ns(claimed)
            except Exception as exc:  # one unreadable blob must not stop the re-index of the others
                result.skipped.append((str(blob), str(exc)))
                continue
            events = registry.store.read_journal(claimed) or [{"added_at": _now(), "file_name": blob.name}]
            with sqlite_errors(registry.db_path), transaction(registry._conn) as conn:
                for event in events:
                    if not facts["architecture"] and event.get("architecture"):
                        facts["architecture"] = event["architecture"]
                    _insert(conn, facts, event, blob)
            result.indexed += 1
            indexed.add(claimed)
        for sha in registry.store.journals():
            if sha not in reported:
                names = [e.get("file_name") for e in registry.store.read_journal(sha) if e.get("file_name")]
                result.dropped.append((sha, names[-1] if names else sha[:12], "its stored file is missing"))
                reported.add(sha)
    for sha, title, stored in _old_index_entries(result.moved_aside):
        if sha not in reported:
            reason = ("listed in the old index, but its stored file is missing" if stored else
                      "indexed in place: run `lorareg registry scan` on its folder again")
            result.dropped.append((sha, title, reason))
            reported.add(sha)
    return result


def _old_index_entries(db_path: str | None) -> list[tuple[str, str, bool]]:
    """(sha256, title, stored) of every entry the old database lists, read-only and best-effort: it may be
    corrupt, or older than the ``stored`` column (then every entry had a stored copy)."""
    if db_path is None:
        return []
    rows: list[Any] = []
    try:
        conn = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
        try:
            for sql in ("SELECT sha256, name, file_name, stored IS NOT 0 FROM entries",
                        "SELECT sha256, name, file_name, 1 FROM entries"):
                try:
                    rows = conn.execute(sql).fetchall()
                    break
                except sqlite3.OperationalError:  # no such column: an index from before ``scan``
                    continue
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    return [(str(sha), str(name or file_name or sha), bool(stored)) for sha, name, file_name, stored in rows
            if isinstance(sha, str)]
