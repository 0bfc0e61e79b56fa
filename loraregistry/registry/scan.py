"""``scan``: index folders of adapters in place (ComfyUI ``models/loras``, A1111/Forge ``models/Lora``), no copy.

For each ``*.safetensors`` under a root the registry records its path, size, mtime and every hash, the verify
verdict and each loader's verdict, and what its sidecars and preview say (``sidecars.py``). Re-scanning is
cheap: a file whose (device, inode, size, mtime) the hash cache knows is never read again, and one whose path
row is unchanged is not even looked up, so an unchanged folder costs one ``stat`` per file. A file renamed or
moved within the filesystem keeps its inode, so its hashes come from the cache too.

Between two scans of a root, a path that is gone is ``moved`` when its content (sha256) is present at another
indexed path, else ``removed``. Duplicates are adapters whose tensor data hash (AutoV3) is the same under two
or more present paths (same weights, possibly different metadata).

Hidden files and folders (names starting with ``.``, lorareg's own temp files among them) are skipped.
Linked folders are followed, each folder walked once (no loops); a file reachable by two paths is listed at
both, and reported as a duplicate.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import FileAccessError, LoraregError
from .db import sqlite_errors, transaction
from .entry import Verdict
from .sidecars import Sidecars, merge_facts, read_sidecars, signature

ADAPTER_SUFFIX = ".safetensors"
STATE_PRESENT, STATE_MOVED, STATE_REMOVED = "present", "moved", "removed"
_BATCH = 256
_PARALLEL_FROM = 16  # below this many files to read, a worker process costs more than it saves


@dataclass
class ScanResult:
    """What one scan found. ``hashed``: files read and hashed; ``cached``: new or changed paths whose hashes
    came from the cache (a move, a rename); ``unchanged``: paths as they were. Lists hold paths."""

    roots: list[str]
    files: int = 0
    hashed: int = 0
    cached: int = 0
    unchanged: int = 0
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sidecar_problems: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"roots": self.roots, "files": self.files, "hashed": self.hashed, "cached": self.cached,
                "unchanged": self.unchanged, "new": self.new, "changed": self.changed,
                "moved": [{"from": a, "to": b} for a, b in self.moved], "removed": self.removed,
                "duplicates": self.duplicates,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "sidecar_problems": [{"path": p, "problem": r} for p, r in self.sidecar_problems],
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class _Seen:
    path: str
    folder: Path
    name: str
    stat: os.stat_result
    names: frozenset[str]  # the folder's listing, for sidecar lookups without more system calls

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.stat.st_dev, self.stat.st_ino, self.stat.st_size, self.stat.st_mtime_ns)


def scan(registry: Any, roots: list[str | os.PathLike[str]], *, verify_files: bool = True,
         jobs: int | None = None) -> ScanResult:
    """Index every adapter under ``roots`` in place; returns what changed since the last scan of each root.

    ``verify_files=False`` records hashes and facts but no verify or loader verdicts (faster on huge folders).
    ``jobs``: worker processes for files that must be read (default: the cores idle now, at most 8; 1 = none).
    Raises FileAccessError (exit 2) for a root that is not a readable folder, before anything is written.
    """
    started = time.perf_counter()
    resolved = [_root(r) for r in roots]
    result = ScanResult(roots=[str(r) for r in resolved])
    touched: set[str] = set()
    # Every root is indexed before any path is called gone, so a file moved from one root to another
    # scanned together is reported as moved, not removed.
    gone = [row for root in resolved for row in _scan_root(registry, root, result, touched, verify_files, jobs)]
    _mark_gone(registry, gone, result, touched)
    _refresh_imported(registry, touched)
    result.duplicates = _duplicates(registry, resolved)
    result.seconds = time.perf_counter() - started
    return result


def _root(path: str | os.PathLike[str]) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise FileAccessError("no such folder", path=root, hint="give the folder that holds your LoRA files")
    if not root.is_dir():
        raise FileAccessError("is a file, expected a folder", path=root,
                              hint="`lorareg registry add FILE` stores single files")
    if not os.access(root, os.R_OK | os.X_OK):
        raise FileAccessError("cannot read this folder (permission denied)", path=root, hint="fix its permissions")
    return root.resolve()


def _walk(root: Path, result: ScanResult) -> tuple[list[_Seen], list[str]]:
    """The adapter files under ``root``, and the folders that could not be listed (their files are not gone)."""
    found: list[_Seen] = []
    unlisted: list[str] = []
    stack = [root]
    walked: set[tuple[int, int]] = set()  # (device, inode) of each folder: a linked folder is walked once, no loops
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in walked:
                continue
            walked.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                items = [e for e in it if not e.name.startswith(".")]
        except OSError as exc:
            result.skipped.append((str(folder), f"cannot list this folder ({exc.strerror or exc})"))
            unlisted.append(str(folder))
            continue
        names = frozenset(e.name for e in items)
        for item in sorted(items, key=lambda e: e.name):
            try:
                if item.is_dir():  # linked folders too (ComfyUI setups link model folders in)
                    stack.append(Path(item.path))
                elif item.name.lower().endswith(ADAPTER_SUFFIX) and item.is_file():
                    found.append(_Seen(item.path, folder, item.name, item.stat(), names))
            except OSError as exc:
                result.skipped.append((item.path, f"cannot read ({exc.strerror or exc})"))
                unlisted.append(item.path)
    return found, unlisted


def _scan_root(registry: Any, root: Path, result: ScanResult, touched: set[str], verify_files: bool,
               jobs: int | None) -> list[Any]:
    """Index the files under ``root``; returns the location rows of paths that were present and are gone."""
    conn = registry._conn
    with sqlite_errors(registry.db_path):  # every location under this folder, whichever root indexed it
        known = {row["path"]: row for row in conn.execute(
            "SELECT * FROM locations WHERE substr(path, 1, ?) = ?", (len(str(root)) + 1, str(root) + os.sep))}
    seen, unlisted = _walk(root, result)
    result.files += len(seen)
    now = _now()
    here: set[str] = set()
    pending: list[tuple[Any, ...]] = []  # location rows, written in batches (one transaction each)
    to_analyse: list[tuple[_Seen, Any, list[list[Any]]]] = []

    def located(item: _Seen, row: Any, sig: list[list[Any]], sha256: str) -> None:
        cars = _sidecars(item, sig, result)
        (result.changed if row is not None and row["state"] == STATE_PRESENT else result.new).append(item.path)
        touched.add(sha256)
        if row is not None:
            touched.add(row["sha256"])
        pending.append((item.path, str(root), sha256, *item.key, STATE_PRESENT,
                        json.dumps(cars.to_dict(), sort_keys=True), cars.preview, now, now))
        if len(pending) >= _BATCH:
            _write_locations(registry, pending)

    for item in seen:
        here.add(item.path)
        row = known.get(item.path)
        sig = signature(item.folder, item.name, set(item.names))
        if row is not None and row["state"] == STATE_PRESENT and \
                (row["dev"], row["inode"], row["size"], row["mtime_ns"]) == item.key:
            result.unchanged += 1
            if json.loads(row["sidecars"]).get("signature") != sig:  # a sidecar or preview changed
                cars = _sidecars(item, sig, result)
                with sqlite_errors(registry.db_path), transaction(conn):
                    conn.execute("UPDATE locations SET sidecars = ?, preview = ?, last_seen = ? WHERE path = ?",
                                 (json.dumps(cars.to_dict(), sort_keys=True), cars.preview, now, item.path))
                touched.add(row["sha256"])
            continue
        sha256 = _cached(registry, item, verify_files)
        if sha256 is None:
            to_analyse.append((item, row, sig))
            continue
        result.cached += 1
        located(item, row, sig, sha256)
    for (item, row, sig), analysis in zip(to_analyse, _analyse_all([i for i, _, _ in to_analyse], verify_files,
                                                                   jobs)):
        if "error" in analysis:
            result.skipped.append((item.path, analysis["error"]))
            continue
        result.hashed += 1
        located(item, row, sig, _index(registry, item, analysis))
    _write_locations(registry, pending)
    with sqlite_errors(registry.db_path), transaction(conn):
        conn.execute("INSERT INTO scan_roots (path, scanned_at) VALUES (?, ?) "
                     "ON CONFLICT (path) DO UPDATE SET scanned_at = excluded.scanned_at", (str(root), now))
    return [row for path, row in known.items() if path not in here and row["state"] == STATE_PRESENT
            and not any(path == u or path.startswith(u + os.sep) for u in unlisted)]


def _write_locations(registry: Any, rows: list[tuple[Any, ...]]) -> None:
    """Upsert location rows in one transaction and empty the list. A crash before this loses only the rows:
    the hashes are in the cache already, so the next scan re-indexes those paths without reading them."""
    if not rows:
        return
    with sqlite_errors(registry.db_path), transaction(registry._conn) as conn:
        conn.executemany(
            "INSERT INTO locations (path, root, sha256, dev, inode, size, mtime_ns, state, moved_to, sidecars, "
            "preview, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET root = excluded.root, sha256 = excluded.sha256, dev = excluded.dev, "
            "inode = excluded.inode, size = excluded.size, mtime_ns = excluded.mtime_ns, state = excluded.state, "
            "moved_to = NULL, sidecars = excluded.sidecars, preview = excluded.preview, last_seen = excluded.last_seen",
            rows)
    rows.clear()


def _mark_gone(registry: Any, gone: list[Any], result: ScanResult, touched: set[str]) -> None:
    conn, now = registry._conn, _now()
    with sqlite_errors(registry.db_path), transaction(conn):
        for row in gone:
            other = conn.execute("SELECT path FROM locations WHERE sha256 = ? AND state = ? AND path != ? "
                                 "ORDER BY path LIMIT 1", (row["sha256"], STATE_PRESENT, row["path"])).fetchone()
            if other is not None:
                conn.execute("UPDATE locations SET state = ?, moved_to = ?, last_seen = ? WHERE path = ?",
                             (STATE_MOVED, other["path"], now, row["path"]))
                result.moved.append((row["path"], other["path"]))
            else:
                conn.execute("UPDATE locations SET state = ?, last_seen = ? WHERE path = ?",
                             (STATE_REMOVED, now, row["path"]))
                result.removed.append(row["path"])
            touched.add(row["sha256"])


def _sidecars(item: _Seen, sig: list[list[Any]], result: ScanResult) -> Sidecars:
    cars = read_sidecars(Path(item.path), set(item.names), sig)
    result.sidecar_problems += [(item.path, problem) for problem in cars.problems]
    return cars


def _cached(registry: Any, item: _Seen, verify_files: bool) -> str | None:
    """The sha256 of the file at ``item`` when the hash cache knows its (device, inode, size, mtime) and the
    registry already holds that content with what this scan records (verdicts unless ``verify_files`` is off)."""
    conn = registry._conn
    with sqlite_errors(registry.db_path):
        cached = conn.execute("SELECT sha256 FROM file_hashes WHERE dev = ? AND inode = ? AND size = ? AND "
                              "mtime_ns = ?", item.key).fetchone()
        if cached is None:
            return None
        entry = conn.execute("SELECT findings FROM entries WHERE sha256 = ?", (cached["sha256"],)).fetchone()
    if entry is None or not (entry["findings"] or not verify_files):
        return None
    return cached["sha256"]


def analyse_file(path: str, key: tuple[int, int, int, int], verify_files: bool) -> dict[str, Any]:
    """Read, hash and (unless told not to) verify one file: what the index stores about it, or ``{"error":
    line}`` for a file that is no adapter or changed while read. Pure (no registry), so it runs in workers."""
    from ..adapter import AdapterFile

    try:
        adapter = AdapterFile.open(path)
        facts = adapter_facts_of(adapter, os.stat(path))
        after = os.stat(path)
        if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != key:
            raise FileAccessError("changed while it was being scanned", path=path, hint="scan again")
        analysis: dict[str, Any] = {"facts": facts, "verdict": None, "loaders": None, "findings": None}
        if verify_files:
            from ..verify import verify
            from ..verify.consumers import consumer_verdicts

            report = verify(path)
            verdicts = consumer_verdicts(adapter)
            analysis["verdict"] = Verdict.from_report(report).to_dict()
            analysis["loaders"] = {v.consumer: v.outcome for v in verdicts}
            analysis["findings"] = {"verify": [f.to_dict() for f in report.findings],
                                    "loaders": {v.consumer: [f.to_dict() for f in v.findings] for v in verdicts}}
            if not facts["architecture"]:
                facts["architecture"] = report.detected_architecture
    except LoraregError as exc:
        return {"error": exc.one_line()}
    return analysis


def adapter_facts_of(adapter: Any, stat: os.stat_result) -> dict[str, Any]:
    from .core import adapter_facts

    facts = adapter_facts(adapter, stat)
    facts.pop("stat")
    return facts


def _analyse_all(items: list[_Seen], verify_files: bool, jobs: int | None) -> list[dict[str, Any]]:
    """``analyse_file`` for each item, in order; in forked worker processes when there are enough files and
    cores (the workers inherit the loaded modules, so each starts in milliseconds)."""
    if len(items) < _PARALLEL_FROM:
        return [analyse_file(i.path, i.key, verify_files) for i in items]
    workers = jobs if jobs is not None else _idle_cpus()
    if workers < 2:
        return [analyse_file(i.path, i.key, verify_files) for i in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    try:
        context = multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform: stay in this process
        return [analyse_file(i.path, i.key, verify_files) for i in items]
    first = analyse_file(items[0].path, items[0].key, verify_files)  # loads what the workers then inherit
    rest = items[1:]
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        done = pool.map(analyse_file, [i.path for i in rest], [i.key for i in rest], [verify_files] * len(rest),
                        chunksize=max(1, len(rest) // (4 * workers)))
        return [first, *done]


def _idle_cpus() -> int:
    """The cores idle right now (at most 8): on a busy machine more processes only queue for the same cores."""
    from ..threads import idle_cores, usable_cores

    idle = idle_cores()
    return max(1, min(8, usable_cores(), int(idle + 0.5) if idle is not None else usable_cores()))


def _index(registry: Any, item: _Seen, analysis: dict[str, Any]) -> str:
    """Write one analysed file's entry (kept if the content is indexed already) and its hash-cache row."""
    from .core import _insert, _now as now

    facts = analysis["facts"]
    event = {"added_at": now(), "file_name": item.name, "verdict": analysis["verdict"]}
    conn = registry._conn
    with sqlite_errors(registry.db_path), transaction(conn):
        _insert(conn, facts, event, Path(item.path))
        if analysis["loaders"] is not None:
            conn.execute("UPDATE entries SET loaders = ?, findings = ?, architecture = coalesce(architecture, ?) "
                         "WHERE sha256 = ?", (json.dumps(analysis["loaders"], sort_keys=True),
                                              json.dumps(analysis["findings"]), facts["architecture"],
                                              facts["sha256"]))
        conn.execute("INSERT OR REPLACE INTO file_hashes (dev, inode, size, mtime_ns, sha256, hashes) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (*item.key, facts["sha256"],
                                                   json.dumps(facts["hashes"], sort_keys=True)))
    return facts["sha256"]


def _refresh_imported(registry: Any, shas: set[str]) -> None:
    """Recompute each touched entry's imported facts from the sidecars of its present locations, its finer
    base, and its full-text row (so sidecar trigger words and names are searchable)."""
    conn = registry._conn
    with sqlite_errors(registry.db_path), transaction(conn):
        for sha in sorted(shas):
            entry = conn.execute("SELECT rowid, * FROM entries WHERE sha256 = ?", (sha,)).fetchone()
            if entry is None:
                continue
            facts: list[dict[str, Any]] = []
            for row in conn.execute("SELECT path, sidecars FROM locations WHERE sha256 = ? AND state = ? "
                                    "ORDER BY path", (sha, STATE_PRESENT)):
                for fact in json.loads(row["sidecars"]).get("facts", []):
                    facts.append({**fact, "file": str(Path(row["path"]).with_name(fact["file"]))})
            for row in conn.execute("SELECT facts FROM civitai_lookups WHERE sha256 = ?", (sha,)):
                facts += json.loads(row["facts"])
            metadata = json.loads(entry["metadata"])
            declared = {"trigger_words": json.loads(entry["trigger_words"]), "name": entry["name"],
                        "description": entry["description"], "architecture": entry["architecture"],
                        "recommended_weight": metadata.get("recommended_weight")}
            imported = merge_facts(facts, declared)
            sub_base = next((f["value"] for f in facts if f["field"] == "sub_base"), None)
            words = list(json.loads(entry["trigger_words"]))
            names = [entry["name"] or "", entry["file_name"]]
            for fact in facts:
                if fact["field"] == "trigger_words":
                    words += fact["value"]
                elif fact["field"] in ("name", "base_model"):
                    names.append(fact["value"])
            conn.execute("UPDATE entries SET imported = ?, sub_base = ? WHERE sha256 = ?",
                         (json.dumps(imported, sort_keys=True) if facts else None, sub_base, sha))
            conn.execute("DELETE FROM entries_fts WHERE rowid = ?", (entry["rowid"],))
            conn.execute("INSERT INTO entries_fts (rowid, name, description, trigger_words, tags) "
                         "VALUES (?, ?, ?, ?, ?)", (entry["rowid"], "\n".join(dict.fromkeys(names)),
                                                    entry["description"] or "", "\n".join(dict.fromkeys(words)),
                                                    "\n".join(json.loads(entry["tags"]))))


def record_civitai(registry: Any, sha256: str, *, url: str, found: bool, facts: list[dict[str, Any]]) -> None:
    """Keep what Civitai's API said about an entry (replacing an earlier lookup) and refresh its record."""
    conn = registry._conn
    with sqlite_errors(registry.db_path), transaction(conn):
        conn.execute("INSERT OR REPLACE INTO civitai_lookups (sha256, url, found, facts, fetched_at) "
                     "VALUES (?, ?, ?, ?, ?)", (sha256, url, int(found), json.dumps(facts, sort_keys=True), _now()))
    _refresh_imported(registry, {sha256})


def _duplicates(registry: Any, roots: list[Path]) -> list[dict[str, Any]]:
    """Groups of present paths sharing a tensor hash, where at least one path lies under a scanned root."""
    with sqlite_errors(registry.db_path):
        rows = registry._conn.execute(
            "SELECT e.tensor_sha256 AS t, l.path AS path, l.root AS root FROM locations l "
            "JOIN entries e ON e.sha256 = l.sha256 WHERE l.state = ? AND e.tensor_sha256 IS NOT NULL "
            "ORDER BY e.tensor_sha256, l.path", (STATE_PRESENT,)).fetchall()
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(row["t"], []).append(row)
    scanned = {str(r) for r in roots}
    return [{"tensor_sha256": t, "paths": [r["path"] for r in rows]} for t, rows in groups.items()
            if len(rows) > 1 and any(r["root"] in scanned for r in rows)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
