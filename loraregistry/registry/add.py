"""``Registry.add`` / ``add_many``: adapter files copied into the store and indexed, in order.

Each file is analysed: stat, header, alphas and metadata read (``AdapterFile.open``), the store's copy written under
a temp name with every byte hashed on the way and its data fsynced (``Store.stage``), the copy checked to be of the
file read, the index facts computed. In this process the copy runs on a thread while the header is parsed
(hashlib, zlib, blake3 and fsync release the GIL); for many files on a machine with idle cores, forked worker
processes analyse the files ahead of this one, which places and indexes them in order (like ``registry scan``).

Files are indexed in chunks: each blob is renamed into place, then the folders holding a chunk's new names are
fsynced once each, the journals appended, and one transaction inserts the chunk's rows. Crash safety is the single
add's: a blob's data is fsynced under its temp name before the rename (no partial blob is ever visible), and the
rename is durable before any index row names the blob; a crash leaves at most blobs the index lacks (``rebuild``
picks them up) and temp files (the next add sweeps them).

A file that fails stops the batch where it fails, as adding the files one by one did: the files before it are
indexed, its error is raised, the files after it are not added (a worker's temp copy of one is removed).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic_write import fsync_folder
from .db import sqlite_errors, transaction
from .entry import Entry, Origin, Verdict
from .store import StagedCopy, Store

if TYPE_CHECKING:
    from .core import Registry

# Files indexed per transaction: bounds what a crash can leave unindexed and how long the write lock is held.
CHUNK_FILES = 64
# Below this many files a worker process costs more than it saves (as for ``registry scan``).
PARALLEL_FROM = 16
# Files analysed ahead of the one being indexed, per worker process: bounds the temp copies waiting.
AHEAD_PER_WORKER = 2


@dataclass
class Analysis:
    """One file read and staged: its index facts (without the verdict) and its temp copy in the store."""

    facts: dict[str, Any]
    copy: StagedCopy


def add_files(registry: Registry, paths: Sequence[str | os.PathLike[str]], *,
              origins: Sequence[Origin | None] | None = None, reports: Sequence[Any] | None = None,
              verify_with: Callable[[Path], Any] | None = None, jobs: int | None = None) -> list[Entry]:
    """Add ``paths`` in order (see ``Registry.add_many``): the entries, one per path, as ``show`` gives them right
    after each file's add."""
    if origins is not None and len(origins) != len(paths):
        raise ValueError("give one origin per path")
    if reports is not None and len(reports) != len(paths):
        raise ValueError("give one report per path")
    sources = [Path(p) for p in paths]
    if not sources:
        return []
    registry.store.prepare()
    chunk = _Chunk(registry)
    entries: list[Entry] = []
    with _Analyser(registry.store, sources, jobs) as analyser:
        try:
            for index, source in enumerate(sources):
                report = verify_with(source) if verify_with is not None else (reports[index] if reports else None)
                analysis = analyser.next()
                try:
                    item = _indexed(analysis, source, origins[index] if origins else None, report)
                    if item.facts["sha256"] in chunk.shas:  # entries must read as right after each add
                        entries += chunk.flush()
                    chunk.place(item, analysis.copy)
                finally:
                    analysis.copy.discard()
                if len(chunk) >= CHUNK_FILES:
                    entries += chunk.flush()
        finally:
            entries += chunk.flush()  # the files before a failure stay added, as one add per file left them
    return entries


def analyse(store: Store, source: Path, copier: Executor | None = None, *, sync: bool = True) -> Analysis:
    """Read, copy and hash one file (``copier``: a thread that writes the copy while this one parses; ``sync``:
    see ``Store.stage``). Raises what one ``add`` of the file raised, in the same order: missing file, not an
    adapter, unreadable, changed."""
    from ..adapter import AdapterFile
    from .core import _stat, adapter_facts

    read_at = _stat(source)  # before the copy and the header read start: a change after it is caught
    copying = copier.submit(store.stage, source, sync=sync) if copier is not None else None
    try:
        adapter = AdapterFile.open(source)
        staged = copying.result() if copying is not None else store.stage(source, sync=sync)
    except BaseException:
        if copying is not None:
            _discard(copying)
        raise
    try:
        try:
            read_until: os.stat_result | None = os.stat(source)
        except OSError:  # gone already: the copy's own header decides
            read_until = None
        store.check_copy(staged, adapter.header, read_at, read_until)
        facts = adapter_facts(adapter, read_at, hashes=staged.hashes)
    except BaseException:
        staged.discard()
        raise
    facts.pop("stat")
    return Analysis(facts, staged)


def analyse_in_worker(store: Store, source: Path) -> Analysis | None:
    """``analyse`` in a worker process, without a copier thread (the processes keep the cores busy, and a thread
    that needs the GIL back after each hash call would wait out the parsing thread's switch interval each time)
    and without the fsync, which the parent, mostly waiting for the workers, makes before the rename. None when
    it fails: the parent then analyses the file itself, which raises the very error one ``add`` raised
    (exceptions do not all survive pickling)."""
    try:
        return analyse(store, source, sync=False)
    except Exception:
        return None


def _discard(copying: Future[StagedCopy]) -> None:
    """Wait for a copy (no worker may go on writing a temp file) and remove its temp file."""
    try:
        staged = copying.result()
    except BaseException:  # a failed copy removed its temp; its error is raised where the copy was asked for
        return
    staged.discard()


class _Analyser:
    """``next()`` gives the analysis of each source in turn: from forked worker processes that run ahead of the
    caller, or, for few files or without idle cores, made here with a copier thread."""

    def __init__(self, store: Store, sources: list[Path], jobs: int | None) -> None:
        self.store, self.sources = store, sources
        self.position = 0
        self.copier: ThreadPoolExecutor | None = None  # started once no more workers will fork (threads do not)
        self.pool: Executor | None = None
        self.ahead: deque[Future[Analysis | None]] = deque()
        self.submitted = 1  # the first file is analysed here: its imports load before the workers fork
        self.workers = _worker_count(len(sources), jobs)

    def __enter__(self) -> _Analyser:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for future in self.ahead:  # analysed ahead of a failure: their copies are not wanted
                if not future.cancelled() and future.exception() is None and (result := future.result()):
                    result.copy.discard()
        if self.copier is not None:
            self.copier.shutdown(wait=True)

    def next(self) -> Analysis:
        source = self.sources[self.position]
        self.position += 1
        if self.position == 1 and self.workers > 1:
            return analyse(self.store, source)  # no thread yet: the workers fork next
        if self.position == 2 and self.workers > 1:
            self._start_pool()
        if self.pool is None:
            return analyse(self.store, source, self._copier())
        self._fill()
        result = self.ahead.popleft().result()
        return result if result is not None else analyse(self.store, source, self._copier())

    def _copier(self) -> ThreadPoolExecutor:
        if self.copier is None:
            self.copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorareg-add")
        return self.copier

    def _start_pool(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        try:
            context = multiprocessing.get_context("fork")  # workers start in milliseconds with every module loaded
        except ValueError:  # no fork on this platform: analyse here
            self.workers = 1
            return
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)

    def _fill(self) -> None:
        assert self.pool is not None
        while self.submitted < len(self.sources) and len(self.ahead) < AHEAD_PER_WORKER * self.workers:
            self.ahead.append(self.pool.submit(analyse_in_worker, self.store, self.sources[self.submitted]))
            self.submitted += 1


def _worker_count(files: int, jobs: int | None) -> int:
    if files < PARALLEL_FROM or jobs == 1:
        return 1
    from .scan import _idle_cpus

    return jobs if jobs is not None else _idle_cpus()


@dataclass
class _Indexed:
    """One file's row, ready to insert once its blob is durable."""

    facts: dict[str, Any]
    event: dict[str, Any]
    blob: Path


def _indexed(analysis: Analysis, source: Path, origin: Origin | None, report: Any) -> _Indexed:
    from .core import _now

    facts = dict(analysis.facts)
    origin = origin or Origin.local(str(source.resolve()))
    verdict = Verdict.from_report(report) if report is not None else None
    if report is not None and not facts["architecture"]:
        facts["architecture"] = getattr(report, "detected_architecture", None)
    event = {"added_at": _now(), "file_name": source.name, "origin": origin.to_dict(),
             "verdict": verdict.to_dict() if verdict else None, "architecture": facts["architecture"]}
    return _Indexed(facts, event, analysis.copy.tmp)


class _Chunk:
    """Files whose blobs are in place, waiting for their folders' fsync and their index rows."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.items: list[_Indexed] = []
        self.shas: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def place(self, item: _Indexed, copy: StagedCopy) -> None:
        item.blob = self.registry.store.place(copy)
        item.facts["blob_mtime_ns"] = self.registry.store.blob_mtime_ns(item.facts["sha256"])
        self.items.append(item)
        self.shas.add(item.facts["sha256"])

    def flush(self) -> list[Entry]:
        """Make the chunk's renames durable, journal and index it in one transaction; its entries, in order."""
        from .core import _insert

        if not self.items:
            return []
        items, self.items, self.shas = self.items, [], set()
        for folder in sorted({item.blob.parent for item in items}):
            fsync_folder(folder)  # every blob durable under its name before a row names it
        registry = self.registry
        for item in items:
            registry.store.append_journal(item.facts["sha256"], item.event)
        with sqlite_errors(registry.db_path), transaction(registry._conn) as conn:
            for item in items:
                _insert(conn, item.facts, item.event, item.blob)
        return registry.entries_by_sha256([item.facts["sha256"] for item in items])
