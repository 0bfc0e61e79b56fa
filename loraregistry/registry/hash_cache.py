"""The registry's hash cache, for files an operation reads or writes: ``lookup`` and ``remember``.

``registry scan`` records every file it hashes in the index's ``file_hashes`` table, keyed by the file's
(device, inode, size, mtime_ns), with its sha256 and its ``FileHashes`` as JSON. Operations (merge, resize,
convert, fix) record each input's sha256 and AutoV3 as provenance: ``lookup`` answers them from that table for
a file the registry has seen, so a scanned LoRA, or the output of an earlier operation (``remember``), is not
read again just to be named.

The cache is an optimisation, never a source of errors: without a registry it costs one ``stat`` and creates
nothing; a damaged, locked or older database, a row that lacks a hash, or a file that changes while it is
looked up all answer "not cached" (the caller hashes), with a short busy timeout rather than a wait.

Limit (the scan's own cache has it too): the key is what the file system reports. A file rewritten in place
with the same size and then given back its old mtime to the nanosecond (``os.utime``, ``touch -d``) looks
unchanged; its ctime would show the change, but the table keeps no ctime. A file replaced by another one
(written beside it and renamed over, as editors, rsync and lorareg itself do) has a new inode and is hashed
again.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .paths import DB_NAME, default_root  # not .core: every op looks up here, and .core is the whole registry

BUSY_TIMEOUT_S = 0.2  # a cache must not make an operation wait: past this, hash instead (lookup) or skip (remember)

FileKey = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns), the file_hashes primary key

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def file_key(path: str | os.PathLike[str]) -> FileKey | None:
    """The cache key of the file at ``path`` now, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def lookup(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(sha256, AutoV3) of the file at ``path`` from the registry's hash cache, or None when it is not there
    (no registry, no row, a row without both hashes, any database error, or the file changed meanwhile)."""
    database = _database()
    if database is None:
        return None
    import sqlite3

    before = file_key(path)
    if before is None:
        return None
    try:
        conn = sqlite3.connect(_uri(database, "ro"), uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            row = conn.execute("SELECT sha256, hashes FROM file_hashes WHERE dev = ? AND inode = ? AND size = ? "
                               "AND mtime_ns = ?", before).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if row is None or file_key(path) != before:  # changed while we looked: the row may describe the old bytes
        return None
    return _usable(row[0], row[1])


def remember(path: str | os.PathLike[str], sha256: str, autov3: str, *, key: FileKey | None = None) -> bool:
    """Record (sha256, AutoV3) for the file at ``path`` when a registry exists; True when recorded.

    ``key``: the file's key taken before its bytes were hashed; when the file's key is no longer that, the hashes
    may describe other bytes and nothing is recorded. Never creates a registry, never raises for a database
    problem (False): the next ``lookup`` simply misses."""
    if not (_SHA256_HEX.fullmatch(sha256) and _SHA256_HEX.fullmatch(autov3)):
        return False
    database = _database()
    if database is None:
        return False
    now = file_key(path)
    if now is None or (key is not None and key != now):
        return False
    import sqlite3

    try:
        # isolation_level=None + BEGIN IMMEDIATE: take the write lock up front (waiting at most the busy timeout)
        # instead of upgrading a read lock, which fails at once under a concurrent writer.
        conn = sqlite3.connect(_uri(database, "rw"), uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = NORMAL")  # a cache row: durable with the next checkpoint is enough
            conn.execute("BEGIN IMMEDIATE")
            try:
                _upsert(conn, now, sha256, autov3)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return True


def _upsert(conn, key: FileKey, sha256: str, autov3: str) -> None:
    """Add what this caller knows to the row of ``key``: a row of the same content keeps its other hashes (a
    scan's CRC32, AutoV1, BLAKE3); a row of other content (a stale key) is replaced. The JSON holds only hashes
    that are known: a reader needing one checks that it is there, as ``lookup`` does."""
    known = {"sha256": sha256, "autov2": sha256[:10], "autov3": autov3}
    row = conn.execute("SELECT sha256, hashes FROM file_hashes WHERE dev = ? AND inode = ? AND size = ? "
                       "AND mtime_ns = ?", key).fetchone()
    if row is not None and row[0] == sha256:
        old = _json_object(row[1])
        if all(old.get(name) == value for name, value in known.items()):
            return
        known = {**old, **known}
    conn.execute("INSERT OR REPLACE INTO file_hashes (dev, inode, size, mtime_ns, sha256, hashes) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (*key, sha256, json.dumps(known, sort_keys=True)))


def _usable(sha256: object, hashes: object) -> tuple[str, str] | None:
    """(sha256, AutoV3) from a cache row, when it holds both and they are well-formed and agree with each other."""
    record = _json_object(hashes)
    autov3 = record.get("autov3")
    if not (isinstance(sha256, str) and _SHA256_HEX.fullmatch(sha256) and record.get("sha256") == sha256
            and isinstance(autov3, str) and _SHA256_HEX.fullmatch(autov3)):
        return None
    return sha256, autov3


def _json_object(text: object) -> dict:
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _database() -> Path | None:
    """The registry's database file, when a registry exists (one ``stat``); None otherwise."""
    try:
        path = default_root() / DB_NAME
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def _uri(database: Path, mode: str) -> str:
    # A URI so that mode=ro / mode=rw apply: sqlite then never creates the database file (as_uri escapes the path).
    return f"{Path(os.path.abspath(database)).as_uri()}?mode={mode}"
