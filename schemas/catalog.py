"""The DuckDB catalog: numbered migrations applied in transactions, and short-lived connections.

DuckDB allows one writer process at a time, and a writer blocks readers in other processes. So the catalog
never holds a connection open between operations: every read or write opens the file, runs one transaction
and closes it, which lets an analyst query between (or during the gaps of) long jobs.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from schemas.errors import Failure

CATALOG_NAME = "catalog.duckdb"
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class CatalogError(Failure):
    """The catalog could not be opened, migrated or queried."""


class CatalogLockedError(CatalogError):
    """Another process holds the catalog's write lock."""


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


class Catalog:
    """Access to ``catalog.duckdb`` in a workspace. Cheap to create; connections are opened per operation."""

    def __init__(self, path: Path, lock_timeout: float = 30.0) -> None:
        self.path = path
        self.lock_timeout = lock_timeout

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise CatalogLockedError(
                        f"catalog {self.path} is locked by another process for more than "
                        f"{self.lock_timeout:.0f}s: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short write transaction: committed on success, rolled back on any exception."""
        con = self._connect(read_only=False)
        try:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()
        finally:
            con.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (it cannot change the catalog, whatever SQL it runs)."""
        if not self.path.exists():
            raise CatalogError(f"no catalog at {self.path}: run `refinery ingest` first")
        con = self._connect(read_only=True)
        try:
            yield con
        finally:
            con.close()

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
