"""Catalog writes of one ingest batch, in short transactions.

The batch row is written first with status 'running'; records, source rows and quarantined rows follow in
chunks (Arrow batches registered on the connection, then INSERT ... SELECT; the records a chunk repeats from the
catalog are found with one join and left out); the counts and status 'complete' come last. A batch left
'running' by a killed process is cleaned up and redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from curation.ingest.units import RecordRow
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


#: Rows gathered as Python lists before they become an Arrow batch (the chunk then holds compact Arrow buffers).
_BATCH_ROWS = 4096
_ARROW_OVERHEAD = 16  # bytes a row costs beside its texts (offsets, ints), for the chunk's size estimate


@dataclass
class Chunk:
    """Units of one file waiting to be written together: records, source rows and quarantined rows.

    Records are keyed by id, so the first source's metadata wins; the canonical metadata JSON is computed once per
    unit and shared by the record and its source row. Rows are gathered column-wise and turned into Arrow batches
    every ``_BATCH_ROWS`` rows, so a large chunk is held as compact buffers, not as Python objects; ``nbytes`` is
    what it holds so far.
    """

    file: str
    format: str
    record_batches: list[pa.RecordBatch] = field(default_factory=list)
    source_batches: list[pa.RecordBatch] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    nbytes: int = 0
    _seen: set[str] = field(default_factory=set)
    _records: list[RecordRow] = field(default_factory=list)
    _rows: list[int] = field(default_factory=list)
    _sub_indexes: list[int] = field(default_factory=list)
    _record_ids: list[str] = field(default_factory=list)
    _metadata_json: list[str] = field(default_factory=list)
    _sources: int = 0

    def add_row(self, row: int, sub_index: int, record: RecordRow) -> None:
        if record.record_id not in self._seen:
            self._seen.add(record.record_id)
            self._records.append(record)
            self.nbytes += 2 * len(record.messages_json) + len(record.metadata_json)
        self._rows.append(row)
        self._sub_indexes.append(sub_index)
        self._record_ids.append(record.record_id)
        self._metadata_json.append(record.metadata_json)
        self.nbytes += len(record.metadata_json) + len(record.record_id) + _ARROW_OVERHEAD
        if len(self._rows) >= _BATCH_ROWS:
            self._to_arrow()

    def add_record(self, row: int, sub_index: int, record: Record) -> None:
        self.add_row(row, sub_index, RecordRow.of_record(record))

    def add_quarantined(self, row: QuarantinedRow) -> None:
        self.quarantined.append(row)
        self.nbytes += len(row.raw) + len(row.reason) + _ARROW_OVERHEAD

    def _to_arrow(self) -> None:
        if self._records:
            self.record_batches.append(_records_batch(self._records))
            self._records = []
        if self._rows:
            self.source_batches.append(
                pa.record_batch(
                    {
                        "row": pa.array(self._rows, pa.int64()),
                        "sub_index": pa.array(self._sub_indexes, pa.int32()),
                        "record_id": pa.array(self._record_ids, pa.string()),
                        "metadata_json": pa.array(self._metadata_json, pa.string()),
                    }
                )
            )
            self._sources += len(self._rows)
            self._rows, self._sub_indexes, self._record_ids, self._metadata_json = [], [], [], []

    def source_table(self) -> pa.Table | None:
        """The chunk's source rows as one Arrow table (None when it has none); its records are then all in
        ``record_batches``."""
        self._to_arrow()
        return pa.Table.from_batches(self.source_batches) if self.source_batches else None

    @property
    def units(self) -> int:
        return self._sources + len(self._rows) + len(self.quarantined)


def _records_batch(records: list[RecordRow]) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "record_id": pa.array([r.record_id for r in records], pa.string()),
            "messages_json": pa.array([r.messages_json for r in records], pa.string()),
            "prompt": pa.array([r.prompt for r in records], pa.string()),
            "response": pa.array([r.response for r in records], pa.string()),
            "label": pa.array([r.label for r in records], pa.string()),
            "metadata_json": pa.array([r.metadata_json for r in records], pa.string()),
            "n_messages": pa.array([len(r.roles) for r in records], pa.int32()),
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
    rows = [RecordRow.of_record(record, metadata) for record, metadata in records]
    insert_record_table(con, pa.Table.from_batches([_records_batch(rows)]), first_batch_id, parent_record_id)


def insert_new_records(con: duckdb.DuckDBPyConnection, batches: list[pa.RecordBatch], first_batch_id: str) -> None:
    """``insert_records`` of batches whose ids are distinct: the ids the catalog already holds are found with one
    join and left out, the rest go in with plain INSERTs (``INSERT OR IGNORE`` costs about 10 µs a row more), one
    per batch (DuckDB then converts a batch at a time: a lower peak than one big scan)."""
    con.register("chunk_ids", pa.Table.from_batches([batch.select(["record_id"]) for batch in batches]))
    query = "SELECT record_id FROM records SEMI JOIN chunk_ids USING (record_id)"
    existing = [row[0] for row in con.execute(query).fetchall()]
    con.unregister("chunk_ids")
    known = pa.array(existing, pa.string())
    created_at = utcnow()
    cols = ", ".join(_RECORD_COLUMNS)
    for batch in batches:
        if existing:
            batch = batch.filter(pc.invert(pc.is_in(batch["record_id"], value_set=known)))
        con.register("chunk_records", pa.Table.from_batches([batch]))
        con.execute(
            f"INSERT INTO records ({cols}) SELECT {', '.join(_RECORD_COLUMNS[:7])}, ?, NULL, ? FROM chunk_records",
            [first_batch_id, created_at],
        )
        con.unregister("chunk_records")


def insert_record_table(
    con: duckdb.DuckDBPyConnection, table: pa.Table, first_batch_id: str, parent_record_id: str | None = None
) -> None:
    """``insert_records`` of a table with the first seven ``records`` columns."""
    con.register("chunk_records", table)
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
        sources = chunk.source_table()
        with self.catalog.write() as con:
            if chunk.record_batches:
                insert_new_records(con, chunk.record_batches, self.batch_id)
            if sources is not None:
                con.register("chunk_sources", sources)
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
