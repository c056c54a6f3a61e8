"""The DuckDB catalog: numbered migrations applied in transactions, and short-lived connections.

DuckDB allows one writer process at a time, and a writer blocks readers in other processes. So the catalog
never holds a connection open between operations: every read or write opens the file, runs one transaction
and closes it, which lets an analyst query between (or during the gaps of) long jobs.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from schemas.errors import Failure, InputError

CATALOG_NAME = "catalog.duckdb"
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class CatalogError(Failure):
    """The catalog could not be opened, migrated or queried."""


class CatalogLockedError(CatalogError):
    """Another process holds the catalog's write lock."""


class AnalystQueryError(InputError):
    """Analyst SQL the catalog would not run: a syntax or binder error, a write, a file, network or extension
    access, a locked setting (exit 2)."""


class AnalystTimeoutError(AnalystQueryError):
    """Analyst SQL ran past its time limit and was interrupted."""


#: The DuckDB settings of an analyst's connection (:meth:`Catalog.analyst_read`): it reads the catalog and nothing
#: else. No file or network reads or writes (``COPY``, ``EXPORT``/``IMPORT DATABASE``, ``ATTACH`` of another file,
#: ``read_csv``, ``read_parquet``, ``read_json``, ``read_text``, ``glob``, http(s) and s3 URLs, persistent secrets,
#: Python objects in scope), no extension installed or loaded, and the configuration locked, so that no ``SET``,
#: ``RESET`` or ``PRAGMA`` turns any of it back on. They are given to ``duckdb.connect`` itself, so no statement
#: runs without them. No scratch folder either: DuckDB would otherwise allow reads and writes of any file in it
#: (``catalog.duckdb.tmp``), so a query that needs more than DuckDB's memory limit fails instead of spilling to disk.
#: Temporary tables, views and macros stay possible (in memory, gone on close).
ANALYST_SETTINGS: dict[str, bool | str] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "temp_directory": "",
    "lock_configuration": True,
}

#: How many rows past an analyst query's limit :meth:`AnalystCursor.count_rest` counts before it stops and reports
#: "more than" that many (counting means reading them: about 0.2 s per 100,000 rows of a few KB each).
COUNT_CAP = 100_000


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    found = []
    for entry in resources.files("schemas").joinpath("migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise CatalogError(f"migrations are not numbered 1..n without gaps: {versions}")
    return found


class _ConnectionGate:
    """The turns of one process's threads at one catalog file. DuckDB keeps one database instance per file and
    process, and a connection with other settings (read-only, read-write, analyst) than the ones open is refused;
    in a server, threads read, write and run analyst SQL at once. So connections of one kind share a turn, and a
    thread that needs another kind waits, first come first served (readers arriving behind a waiting writer wait
    too, so no kind starves), until ``lock_timeout``. A thread that already holds a turn of the same kind (a read
    inside a read) goes on at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._kind: Any = None
        self._open = 0
        self._queue: collections.deque[object] = collections.deque()
        self._held = threading.local()  # this thread's open connections of the current kind

    def held_here(self) -> bool:
        """Whether this thread has a connection open (a read inside a read must not wait for anyone)."""
        return bool(getattr(self._held, "count", 0))

    @contextlib.contextmanager
    def turn(self, kind: Any, timeout: float, path: Path) -> Iterator[None]:
        mine: int = getattr(self._held, "count", 0)
        if mine and self._held.kind != kind:  # a different kind inside this thread's own turn: DuckDB refuses it
            yield
            return
        with self._cond:
            if mine:
                self._open += 1
            else:
                self._wait_turn(kind, time.monotonic() + timeout, timeout, path)
        self._held.count, self._held.kind = mine + 1, kind
        try:
            yield
        finally:
            self._held.count = mine
            with self._cond:
                self._open -= 1
                if self._open == 0:
                    self._kind = None
                    self._cond.notify_all()

    def _wait_turn(self, kind: Any, deadline: float, timeout: float, path: Path) -> None:
        ticket = object()
        self._queue.append(ticket)
        try:
            while self._queue[0] is not ticket or (self._open and self._kind != kind):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CatalogLockedError(
                        f"catalog {path} stayed busy with other connections of this process for more than "
                        f"{timeout:.0f}s"
                    )
                self._cond.wait(left)
            self._kind = kind
            self._open += 1
        finally:
            self._queue.remove(ticket)
            self._cond.notify_all()


#: ``catalog.duckdb`` + this: the file a process that waits to write keeps fresh (its pid inside) while DuckDB's
#: lock keeps it out. Readers in every process (a server's request threads above all: with many of them, one
#: connection or another is always open, so the writer would never find the file free) open no new connection
#: while it is fresh, so the open ones close, the lock is released, and the writer gets in within its next retry.
WRITER_WAITING_SUFFIX = ".writer-waiting"
#: A writer's intent older than this (seconds) is stale: its process died or gave up without removing the file.
WRITER_INTENT_TTL = 2.0


def _post_writer_intent(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.write_text(str(os.getpid()), encoding="ascii")


def _withdraw_writer_intent(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="ascii") or 0) == os.getpid():
            path.unlink()


def _yield_to_writer(path: Path, deadline: float) -> None:
    """Wait while another process's fresh writer intent is posted (at most until ``deadline``)."""
    while time.monotonic() < deadline:
        try:
            posted = path.stat().st_mtime
            if time.time() - posted > WRITER_INTENT_TTL or int(path.read_text(encoding="ascii") or 0) == os.getpid():
                return
        except (OSError, ValueError):
            return
        time.sleep(0.02)


#: Per thread: the read connection a :meth:`Catalog.reading` block shares, by catalog path.
_SHARED_READS = threading.local()

_GATES: dict[str, _ConnectionGate] = {}
_GATES_LOCK = threading.Lock()


def _gate(path: Path) -> _ConnectionGate:
    key = os.path.abspath(path)
    with _GATES_LOCK:
        return _GATES.setdefault(key, _ConnectionGate())


class Catalog:
    """Access to ``catalog.duckdb`` in a workspace. Cheap to create; connections are opened per operation."""

    def __init__(self, path: Path, lock_timeout: float = 30.0) -> None:
        self.path = path
        self.lock_timeout = lock_timeout

    @property
    def _writer_waiting_path(self) -> Path:
        return self.path.with_name(self.path.name + WRITER_WAITING_SUFFIX)

    def _connect(self, read_only: bool, config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        waiting = False
        try:
            return self._connect_until(read_only, config, deadline, delay, waiting)
        finally:
            if not read_only:
                _withdraw_writer_intent(self._writer_waiting_path)

    def _connect_until(
        self, read_only: bool, config: dict[str, Any] | None, deadline: float, delay: float, waiting: bool
    ) -> duckdb.DuckDBPyConnection:
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config or {})
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise CatalogLockedError(
                        f"catalog {self.path} is locked by another process for more than "
                        f"{self.lock_timeout:.0f}s: {exc}"
                    ) from exc
                if not waiting:  # once per connection: say why nothing happens, instead of waiting in silence
                    from schemas.progress import log

                    holder = re.search(r"\(PID (\d+)\)", str(exc))
                    log(
                        "waiting for the catalog lock held by another process"
                        f"{f' (pid {holder.group(1)})' if holder else ''} ... up to {self.lock_timeout:.0f}s"
                    )
                    waiting = True
                if not read_only:  # readers in every process hold back new connections until this one is in
                    _post_writer_intent(self._writer_waiting_path)
                time.sleep(delay)
                delay = min(delay * 2, 1.0 if read_only else 0.1)

    @contextlib.contextmanager
    def _opened(self, read_only: bool, config: dict[str, Any] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for the length of the block, opened in this process's turn (:class:`_ConnectionGate`)."""
        kind = (read_only, tuple(sorted((config or {}).items())))
        gate = _gate(self.path)
        if read_only and not gate.held_here():
            _yield_to_writer(self._writer_waiting_path, time.monotonic() + self.lock_timeout)
        with gate.turn(kind, self.lock_timeout, self.path):
            con = self._connect(read_only, config)
            try:
                yield con
            finally:
                con.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short write transaction: committed on success, rolled back on any exception."""
        with self._opened(read_only=False) as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (it cannot change the catalog, whatever SQL it runs); inside :meth:`reading` in
        this thread, the one connection that block holds."""
        if not self.path.exists():
            raise CatalogError(f"no catalog at {self.path}: run `refinery ingest` first")
        shared = getattr(_SHARED_READS, "connections", {}).get(str(self.path))
        if shared is not None:
            yield shared
            return
        with self._opened(read_only=True) as con:
            yield con

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Every read of this catalog in this thread inside the block shares one read-only connection: a task of
        many small reads (a lineage tree) opens the file once and sees one state of it. Nothing may write the
        catalog from this thread inside the block."""
        connections: dict[str, duckdb.DuckDBPyConnection] = getattr(_SHARED_READS, "connections", None) or {}
        _SHARED_READS.connections = connections
        key = str(self.path)
        if key in connections:
            yield
            return
        with self.read() as con:
            connections[key] = con
            try:
                yield
            finally:
                del connections[key]

    def migrate(self) -> list[int]:
        """Apply every migration not yet applied, each in its own transaction; return the versions applied."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        applied: list[int] = []
        with self.write() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
            )
            done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, sql in migrations():
            if version in done:
                continue
            with self.write() as con:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()])
            applied.append(version)
        return applied

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run read-only SQL and return rows as dicts."""
        with self.read() as con:
            cursor = con.execute(sql, params or [])
            names = [d[0] for d in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self.read() as con:
            row = con.execute(sql, params or []).fetchone()
            return None if row is None else row[0]

    @contextlib.contextmanager
    def analyst_read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for SQL typed by a person (``refinery sql``): the catalog's tables, views and
        macros, and no file, network or extension access, with the configuration locked (:data:`ANALYST_SETTINGS`).
        The product's own reads use :meth:`read`. While it is open, this process cannot open the catalog with
        other settings (DuckDB shares one database instance per file and process)."""
        if not self.path.exists():
            raise CatalogError(f"no catalog at {self.path}: run `refinery ingest` first")
        with contextlib.ExitStack() as stack:
            try:
                con = stack.enter_context(self._opened(read_only=True, config=dict(ANALYST_SETTINGS)))
            except duckdb.ConnectionException as exc:  # the same file open in this thread with other settings
                raise CatalogError(f"cannot open catalog {self.path} for analyst SQL: {exc}") from exc
            names = list(ANALYST_SETTINGS)
            found = dict(
                con.execute(
                    "SELECT name, lower(value) FROM duckdb_settings() WHERE list_contains(?, name)", [names]
                ).fetchall()
            )
            wrong = [n for n in names if found.get(n) != str(ANALYST_SETTINGS[n]).lower()]
            if wrong:  # a DuckDB that ignored a setting: refuse rather than run unlocked
                raise CatalogError(f"DuckDB did not apply the analyst settings {wrong}: analyst SQL is disabled")
            yield con

    @contextlib.contextmanager
    def analyst_cursor(self, sql: str, timeout: float | None = None) -> Iterator[AnalystCursor]:
        """Run analyst SQL on an :meth:`analyst_read` connection and hand over its result to read in batches.

        Several statements run in order; the cursor holds the last one's rows. ``timeout`` (seconds; None or 0:
        none) bounds the whole run, reading included: a timer interrupts DuckDB (DuckDB has no statement timeout)
        and the run ends with :class:`AnalystTimeoutError`. Every DuckDB error, raised here or while the cursor is
        read, becomes an :class:`AnalystQueryError` with DuckDB's message."""
        with self.analyst_read() as con:
            stopped = threading.Event()

            def stop() -> None:
                stopped.set()
                con.interrupt()

            timer = threading.Timer(timeout, stop) if timeout and timeout > 0 else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                if not con.extract_statements(sql):
                    raise AnalystQueryError("no SQL statement in the query")
                con.execute(sql)
                yield AnalystCursor(con, stopped)
            except duckdb.Error as exc:
                raise _analyst_error(exc, timeout if stopped.is_set() else None) from exc
            finally:
                if timer is not None:
                    timer.cancel()

    def analyst_query(self, sql: str, limit: int | None = None, timeout: float | None = None) -> AnalystResult:
        """Analyst SQL's first ``limit`` rows (None: all) and how many more there are (counted up to
        :data:`COUNT_CAP`); see :meth:`analyst_cursor`."""
        with self.analyst_cursor(sql, timeout=timeout) as cursor:
            if limit is None:
                return AnalystResult(cursor.columns, cursor.fetch_all(), 0, True)
            rows = cursor.fetch(limit)
            more, exact = cursor.count_rest()
            return AnalystResult(cursor.columns, rows, more, exact)


class AnalystCursor:
    """The result of analyst SQL, read in batches while its connection is open. ``columns`` are the result's
    names made unique (a second ``id`` becomes ``id_1``), so rows can be objects; empty for a statement without
    a result."""

    def __init__(self, con: duckdb.DuckDBPyConnection, stopped: threading.Event | None = None) -> None:
        self._con = con
        self._stopped = stopped or threading.Event()  # set when the time limit interrupted the connection
        self.columns = unique_names([str(d[0]) for d in con.description or []])

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        """Up to ``n`` more rows (fewer at the end)."""
        if not self.columns or n <= 0:
            return []
        return [tuple(row) for row in self._con.fetchmany(n)]

    def batches(self, size: int = 1000, limit: int | None = None) -> Iterator[list[tuple[Any, ...]]]:
        """The rows left, ``size`` at a time, at most ``limit`` of them (None: all)."""
        left = limit
        while left is None or left > 0:
            batch = self.fetch(size if left is None else min(size, left))
            if not batch:
                return
            if left is not None:
                left -= len(batch)
            yield batch

    def fetch_all(self) -> list[tuple[Any, ...]]:
        return [row for batch in self.batches(10_000) for row in batch]

    def count_rest(self, cap: int = COUNT_CAP) -> tuple[int, bool]:
        """Read the rows left without keeping them: (their number, True), or (N, False) when there are more than N:
        counting stops after ``cap`` rows, or when the time limit interrupts it (the rows already read stand)."""
        counted = 0
        while counted <= cap:
            try:
                batch = self.fetch(min(10_000, cap + 1 - counted))
            except duckdb.InterruptException:
                if not self._stopped.is_set():
                    raise
                return counted, False
            if not batch:
                return counted, True
            counted += len(batch)
        return cap, False


@dataclass(frozen=True)
class AnalystResult:
    """Analyst SQL's rows up to a limit. ``more``: rows past the limit (not kept); ``more_exact`` False means
    there are more than ``more`` of them (counting stopped at :data:`COUNT_CAP`)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    more: int
    more_exact: bool


def unique_names(names: Sequence[str]) -> list[str]:
    """Column names with repeats renamed ``name_1``, ``name_2``, ... (skipping names already taken)."""
    taken: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 0
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate)
        result.append(candidate)
    return result


def _analyst_error(exc: duckdb.Error, timed_out_after: float | None) -> AnalystQueryError:
    """One line for what went wrong, with DuckDB's own message."""
    message = " ".join(str(exc).split())
    if timed_out_after is not None and isinstance(exc, duckdb.InterruptException):
        return AnalystTimeoutError(f"the query ran past its time limit of {timed_out_after:g} s and was stopped")
    if isinstance(exc, duckdb.PermissionException):
        what = "extensions are" if "extension" in message.lower() else "file access is"
        return AnalystQueryError(f"{what} disabled for analyst SQL: {message}")
    if "configuration has been locked" in message:
        return AnalystQueryError(f"settings are locked for analyst SQL: {message}")
    return AnalystQueryError(f"SQL error: {message}")


def add_lineage_edge(
    con: duckdb.DuckDBPyConnection,
    child_id: str,
    child_kind: str,
    parent_id: str,
    parent_kind: str,
    relation: str,
) -> None:
    con.execute(
        "INSERT OR IGNORE INTO lineage_edges VALUES (?, ?, ?, ?, ?, ?)",
        [child_id, child_kind, parent_id, parent_kind, relation, utcnow()],
    )
