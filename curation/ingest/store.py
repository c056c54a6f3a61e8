"""Catalog writes of one ingest batch, in short transactions.

The batch row is written first with status 'running'; records, source rows and quarantined rows follow in
chunks (an Arrow table registered on the connection, then one INSERT ... SELECT per table); the counts and
status 'complete' come last. A batch left 'running' by a killed process is cleaned up and redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from schemas.catalog import Catalog, utcnow
from schemas.ids import canonical_json
from schemas.records import IngestBatch, QuarantinedRow, Record

_RECORD_COLUMNS = (
    "record_id",
    "messages_json",
    "prompt",
    "response",
    "label",
    "metadata_json",
    "n_messages",
    "first_batch_id",
    "parent_record_id",
    "created_at",
)
_QUARANTINE_COLUMNS = ("batch_id", "file", "row", "sub_index", "reason", "raw")


@dataclass
class Chunk:
    """Units of one file waiting to be written together (a ``SourceRow`` each, stored column-wise).

    Records are keyed by id, so the first source's metadata wins; the canonical metadata JSON is computed
    once per unit and shared by the record and its source row.
    """

    file: str
    format: str
    records: dict[str, tuple[Record, str]] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)
    sub_indexes: list[int] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    metadata_json: list[str] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)

    def add_record(self, row: int, sub_index: int, record: Record) -> None:
        metadata = canonical_json(record.metadata)
        self.records.setdefault(record.record_id, (record, metadata))
        self.rows.append(row)
        self.sub_indexes.append(sub_index)
        self.record_ids.append(record.record_id)
        self.metadata_json.append(metadata)

    @property
    def units(self) -> int:
        return len(self.rows) + len(self.quarantined)


def _records_table(records: list[tuple[Record, str]]) -> pa.Table:
    return pa.table(
        {
            "record_id": [r.record_id for r, _ in records],
            "messages_json": [canonical_json(r.messages_as_dicts()) for r, _ in records],
            "prompt": [r.prompt_text for r, _ in records],
            "response": [r.response_text for r, _ in records],
            "label": pa.array([r.label for r, _ in records], pa.string()),
            "metadata_json": [metadata for _, metadata in records],
            "n_messages": pa.array([len(r.messages) for r, _ in records], pa.int32()),
        }
    )


def _sources_table(chunk: Chunk) -> pa.Table:
    return pa.table(
        {
            "row": pa.array(chunk.rows, pa.int64()),
            "sub_index": pa.array(chunk.sub_indexes, pa.int32()),
            "record_id": chunk.record_ids,
            "metadata_json": chunk.metadata_json,
        }
    )


def _quarantine_table(rows: list[QuarantinedRow]) -> pa.Table:
    return pa.table(
        {
            "batch_id": [q.batch_id for q in rows],
            "file": [q.file for q in rows],
            "row": pa.array([q.row for q in rows], pa.int64()),
            "sub_index": pa.array([q.sub_index for q in rows], pa.int32()),
            "reason": [q.reason for q in rows],
            "raw": pa.array([q.raw for q in rows], pa.binary()),
        }
    )


def insert_records(
    con: duckdb.DuckDBPyConnection,
    records: list[tuple[Record, str]],
    first_batch_id: str,
    parent_record_id: str | None = None,
) -> None:
    """Insert ``records`` (each with its canonical metadata JSON) into ``records``; ids already there are kept
    as they are. ``parent_record_id`` marks them as new versions of that record (an edit, a redaction)."""
    con.register("chunk_records", _records_table(records))
    cols = ", ".join(_RECORD_COLUMNS)
    # Constant columns come from SQL parameters (converting datetimes in Arrow would pull in pandas).
    con.execute(
        f"INSERT OR IGNORE INTO records ({cols}) SELECT {', '.join(_RECORD_COLUMNS[:7])}, ?, ?, ? FROM chunk_records",
        [first_batch_id, parent_record_id, utcnow()],
    )
    con.unregister("chunk_records")


class BatchStore:
    """The catalog rows of one ingest batch."""

    def __init__(self, catalog: Catalog, batch_id: str) -> None:
        self.catalog = catalog
        self.batch_id = batch_id

    def _row(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
        cursor = con.execute(
            "SELECT *, (SELECT count(*) FROM source_rows WHERE batch_id = $1) AS source_rows "
            "FROM ingest_batches WHERE batch_id = $1",
            [self.batch_id],
        )
        names = [d[0] for d in cursor.description or []]
        found = cursor.fetchone()
        return None if found is None else dict(zip(names, found, strict=True))

    def begin(self, batch: IngestBatch, files: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Start the batch as 'running' and return None, or return the stored row of a complete batch.

        One transaction: a batch left 'running' by a killed process is cleaned up first.
        """
        values = [
            batch.name,
            batch.purpose.value,
            batch.eval_set,
            batch.format,
            canonical_json(files),
            canonical_json(batch.config),
            batch.started_at or utcnow(),
        ]
        with self.catalog.write() as con:
            existing = self._row(con)
            if existing is None:
                con.execute(
                    "INSERT INTO ingest_batches (name, purpose, eval_set, format, files_json, config_json, "
                    "started_at, batch_id, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                    [*values, self.batch_id],
                )
                return None
            if existing["status"] == "complete":
                return existing
            # Records this batch introduced go too, unless a source row of another batch points at them.
            con.execute(
                "DELETE FROM records WHERE first_batch_id = $1 AND record_id NOT IN "
                "(SELECT record_id FROM source_rows WHERE batch_id <> $1)",
                [self.batch_id],
            )
            con.execute("DELETE FROM source_rows WHERE batch_id = ?", [self.batch_id])
            con.execute("DELETE FROM quarantined_rows WHERE batch_id = ?", [self.batch_id])
            con.execute(
                "UPDATE ingest_batches SET name = ?, purpose = ?, eval_set = ?, format = ?, files_json = ?, "
                "config_json = ?, started_at = ?, status = 'running', rows_read = 0, ingested = 0, "
                "quarantined = 0, new_records = 0, finished_at = NULL WHERE batch_id = ?",
                [*values, self.batch_id],
            )
            return None

    def write_chunk(self, chunk: Chunk) -> None:
        if not chunk.units:
            return
        with self.catalog.write() as con:
            if chunk.records:
                insert_records(con, list(chunk.records.values()), self.batch_id)
            if chunk.rows:
                con.register("chunk_sources", _sources_table(chunk))
                con.execute(
                    "INSERT INTO source_rows (batch_id, file, row, sub_index, record_id, format, metadata_json) "
                    "SELECT ?, ?, row, sub_index, record_id, ?, metadata_json FROM chunk_sources",
                    [self.batch_id, chunk.file, chunk.format],
                )
                con.unregister("chunk_sources")
            if chunk.quarantined:
                con.register("chunk_quarantine", _quarantine_table(chunk.quarantined))
                cols = ", ".join(_QUARANTINE_COLUMNS)
                con.execute(f"INSERT INTO quarantined_rows ({cols}) SELECT {cols} FROM chunk_quarantine")
                con.unregister("chunk_quarantine")

    def finish(self, rows_read: int, ingested: int, quarantined: int, files: list[dict[str, Any]]) -> dict[str, Any]:
        """Store the counts, mark the batch complete and return its row (with its source_rows count)."""
        with self.catalog.write() as con:
            con.execute(
                "UPDATE ingest_batches SET rows_read = ?, ingested = ?, quarantined = ?, "
                "new_records = (SELECT count(*) FROM records WHERE first_batch_id = ?), files_json = ?, "
                "status = 'complete', finished_at = ? WHERE batch_id = ?",
                [rows_read, ingested, quarantined, self.batch_id, canonical_json(files), utcnow(), self.batch_id],
            )
            row = self._row(con)
        if row is None:
            raise RuntimeError(f"batch {self.batch_id} vanished from the catalog while it was written")
        return row


def stored_files(batch_row: dict[str, Any]) -> list[dict[str, Any]]:
    files = json.loads(batch_row["files_json"])
    return files if isinstance(files, list) else []
