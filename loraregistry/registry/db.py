"""The SQLite index: WAL mode (readers never block the writer), a busy timeout, short write transactions.

Every sqlite3 error that means "the file is damaged" or "the folder is read-only" becomes the registry's
own error here, so callers see what to run next instead of a raw ``sqlite3.DatabaseError``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import RegistryCorrupt, RegistryError, RegistryNotWritable

DB_SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    sha256 TEXT PRIMARY KEY,
    tensor_sha256 TEXT,
    name TEXT,
    description TEXT,
    file_name TEXT NOT NULL,
    size INTEGER NOT NULL,
    architecture TEXT,
    format TEXT,
    network_type TEXT,
    rank INTEGER,
    content_rating TEXT NOT NULL,
    trigger_words TEXT NOT NULL,  -- JSON list
    tags TEXT NOT NULL,           -- JSON list
    metadata TEXT NOT NULL,       -- the canonical record, JSON
    verdict TEXT,                 -- JSON {ok, error_codes} or NULL when not verified
    added_at TEXT NOT NULL,
    blob_mtime_ns INTEGER         -- the stored file's mtime when stored: the cheap integrity check
);
CREATE INDEX IF NOT EXISTS entries_architecture ON entries (architecture);
-- search's order (newest first, then sha256): a listing, or one architecture's, reads an index in order instead
-- of sorting every matching row with all its JSON columns (~4 ms of a 1,000-entry listing)
CREATE INDEX IF NOT EXISTS entries_added_at ON entries (added_at DESC, sha256);
CREATE INDEX IF NOT EXISTS entries_architecture_added_at ON entries (architecture, added_at DESC, sha256);
CREATE TABLE IF NOT EXISTS origins (
    sha256 TEXT NOT NULL REFERENCES entries (sha256) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL DEFAULT '',
    endpoint TEXT NOT NULL DEFAULT '',
    repo TEXT NOT NULL DEFAULT '',
    revision TEXT NOT NULL DEFAULT '',
    file TEXT NOT NULL DEFAULT '',
    added_at TEXT NOT NULL,
    UNIQUE (sha256, kind, path, endpoint, repo, revision, file)
);
CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5 (name, description, trigger_words, tags);
CREATE TABLE IF NOT EXISTS locations (   -- files indexed in place by `registry scan`, one row per path
    path TEXT PRIMARY KEY,
    root TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    dev INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,          -- present, moved, removed
    moved_to TEXT,
    sidecars TEXT NOT NULL,       -- JSON: signature of the sidecar files and what they said
    preview TEXT,                 -- path of the preview image next to the file
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS locations_root ON locations (root);
CREATE INDEX IF NOT EXISTS locations_sha256 ON locations (sha256);
CREATE TABLE IF NOT EXISTS file_hashes (  -- the scan's hash cache: a file unchanged on disk is not read again
    dev INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    hashes TEXT NOT NULL,         -- JSON FileHashes
    PRIMARY KEY (dev, inode, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS scan_roots (path TEXT PRIMARY KEY, scanned_at TEXT NOT NULL);
-- what `registry export-sidecars` last wrote into each adapter's name.json: a value that differs is the user's
CREATE TABLE IF NOT EXISTS sidecar_exports (path TEXT PRIMARY KEY, fields TEXT NOT NULL);
-- civitai lookup: what Civitai's API said about an entry's file (found = 0: not on Civitai)
CREATE TABLE IF NOT EXISTS civitai_lookups (
    sha256 TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    found INTEGER NOT NULL,
    facts TEXT NOT NULL,          -- JSON list of facts, source civitai-api
    fetched_at TEXT NOT NULL
);
"""

_CORRUPT = ("file is not a database", "malformed", "database corrupt")
_READ_ONLY = ("readonly database", "unable to open database file", "disk i/o error")


@contextlib.contextmanager
def sqlite_errors(db_path: Path) -> Iterator[None]:
    """Map sqlite3 errors to registry errors that say what to do."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc).lower()
        if any(s in text for s in _CORRUPT):
            raise RegistryCorrupt(str(db_path), str(exc)) from None
        if any(s in text for s in _READ_ONLY):
            raise RegistryNotWritable(str(db_path.parent), str(exc)) from None
        if "locked" in text or "busy" in text:
            raise RegistryError(f"the registry stayed busy for {BUSY_TIMEOUT_S:g} s ({exc})", path=db_path,
                                hint="another lorareg process holds it; retry when it is done") from None
        raise


def connect(db_path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the index; raises RegistryCorrupt / RegistryNotWritable."""
    with sqlite_errors(db_path):
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the lock up front
        # instead of upgrading a read lock (which deadlocks under concurrency and fails without waiting).
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
            with transaction(conn):
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO info (key, value) VALUES ('schema_version', ?)",
                             (DB_SCHEMA_VERSION,))
                _add_missing_columns(conn)
        except BaseException:
            conn.close()
            raise
    return conn


# Columns added after schema version 1 shipped: older databases gain them on open (NULL = not recorded).
# ``stored``: NULL or 1 when the store holds a copy, 0 for an entry indexed in place only (``registry scan``).
_ADDED_COLUMNS = {"entries": (("blob_mtime_ns", "INTEGER"), ("stored", "INTEGER"), ("sub_base", "TEXT"),
                              ("hashes", "TEXT"), ("loaders", "TEXT"), ("findings", "TEXT"),
                              ("imported", "TEXT"))}


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching to WAL needs an exclusive lock that the busy handler does not always wait for when
    # several processes open a fresh registry at once; the mode is persistent, so retry briefly.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A short write transaction that takes the write lock at BEGIN."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
