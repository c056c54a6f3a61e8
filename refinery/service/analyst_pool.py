"""Analyst SQL (``POST /sql``) in worker processes of its own.

DuckDB opens a file once per process, with one set of settings: while an analyst connection (external access off,
configuration locked) is open in a process, that process can open no other connection to the catalog. In the
server that would stall every other read and the job dispatcher's writes for as long as an analyst's query runs
(up to its time limit). So the queries run in a few long-lived worker processes, each calling
``Catalog.analyst_query`` (the same function as `refinery sql`); read-only connections of different processes
share the file.
"""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from schemas.catalog import AnalystResult, Catalog, CatalogError

#: Analyst queries that run at once; more wait for a free worker.
WORKERS = 2


class AnalystPool:
    """Worker processes for analyst SQL, started on first use and replaced when one dies."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self._workers, mp_context=get_context("spawn"))
            return self._executor

    def query(self, catalog: Catalog, sql: str, limit: int | None, timeout: float | None) -> AnalystResult:
        """``catalog.analyst_query(sql, limit, timeout)`` in a worker; its exceptions are raised here."""
        pool = self._pool()
        try:
            return pool.submit(_analyst_query, str(catalog.path), sql, limit, timeout).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._executor is pool:
                    self._executor = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise CatalogError(
                "the SQL worker process died while it ran the query (out of memory?); it was restarted"
            ) from exc

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _analyst_query(path: str, sql: str, limit: int | None, timeout: float | None) -> AnalystResult:
    return Catalog(Path(path)).analyst_query(sql, limit=limit, timeout=timeout)
