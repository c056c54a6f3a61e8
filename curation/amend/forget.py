"""`refinery forget`: keep records out of every future snapshot, and say where they already are.

A forget request names one record or one source file (as recorded in ``source_rows.file``: the absolute path
given to ingest, or ``folder/split`` for a saved dataset). It is stored in ``forget_requests``; the
``forgotten_records`` view resolves it to records: the named record, or every record with a source row from the
file (also when other sources hold the same text: a takedown removes the content), plus every version derived
from them (edits, redactions). History is not rewritten: existing snapshots and adapters keep their data and
are listed so their owners can act (retrain from a new snapshot, retire the adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.catalog import Catalog, utcnow
from schemas.errors import InputError
from schemas.ids import canonical_json, sha256_text

FORGET_PREFIX = "forget_"


class ForgetError(InputError):
    """The record or source file is not in the catalog, or the request is malformed."""


@dataclass(frozen=True)
class ForgetResult:
    forget_id: str
    kind: str
    target: str
    reason: str | None
    records: list[str]
    snapshots: list[dict[str, Any]]  # snapshot_id, records (how many of the forgotten records it holds)
    adapters: list[dict[str, Any]]  # adapter_id, snapshot_id
    already: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "forget_id": self.forget_id,
            "kind": self.kind,
            "target": self.target,
            "reason": self.reason,
            "records": len(self.records),
            "record_ids": self.records,
            "snapshots": self.snapshots,
            "adapters": self.adapters,
            "already_forgotten": self.already,
        }


def _resolve_source(catalog: Catalog, source: str) -> str:
    """The ``source_rows.file`` value the user means: as given, or as an absolute path."""
    for candidate in dict.fromkeys([source, str(Path(source).expanduser().resolve())]):
        if catalog.scalar("SELECT 1 FROM source_rows WHERE file = ? LIMIT 1", [candidate]):
            return candidate
    raise ForgetError(
        f"no source rows from {source!r} in the catalog "
        "(files are recorded as the absolute path given to ingest: see `SELECT DISTINCT file FROM source_rows`)"
    )


def forget(
    catalog: Catalog, *, actor: str, source: str | None = None, record_id: str | None = None, reason: str | None = None
) -> ForgetResult:
    """Store a forget request for a source file or a record; return what it covers and where that data is."""
    if (source is None) == (record_id is None):
        raise ForgetError("give exactly one of --source FILE or --record ID")
    if record_id is not None:
        if not catalog.scalar("SELECT 1 FROM records WHERE record_id = ?", [record_id]):
            raise ForgetError(f"no record {record_id} in the catalog")
        kind, target = "record", record_id
    else:
        kind, target = "source", _resolve_source(catalog, str(source))
    forget_id = FORGET_PREFIX + sha256_text(canonical_json([kind, target]))[:16]
    with catalog.write() as con:
        already = con.execute("SELECT 1 FROM forget_requests WHERE forget_id = ?", [forget_id]).fetchone() is not None
        if not already:
            con.execute(
                "INSERT INTO forget_requests VALUES (?, ?, ?, ?, ?, ?)",
                [forget_id, kind, target, reason, actor, utcnow()],
            )
    return where_forgotten(catalog, forget_id, already)


def where_forgotten(catalog: Catalog, forget_id: str, already: bool = False) -> ForgetResult:
    """The records a forget request covers and the snapshots and adapters that already hold them."""
    rows = catalog.query("SELECT kind, target, reason FROM forget_requests WHERE forget_id = ?", [forget_id])
    if not rows:
        raise ForgetError(f"no forget request {forget_id}")
    records = [
        r["record_id"]
        for r in catalog.query(
            "SELECT DISTINCT record_id FROM forgotten_records WHERE forget_id = ? ORDER BY 1", [forget_id]
        )
    ]
    held = (
        "SELECT m.snapshot_id, count(DISTINCT m.record_id) AS records FROM snapshot_members m "
        "WHERE m.record_id IN (SELECT record_id FROM forgotten_records WHERE forget_id = ?) "
        "OR m.original_record_id IN (SELECT record_id FROM forgotten_records WHERE forget_id = ?) "
        "GROUP BY m.snapshot_id"
    )
    snapshots = catalog.query(f"SELECT * FROM ({held}) ORDER BY snapshot_id", [forget_id, forget_id])
    adapters = catalog.query(
        f"SELECT a.adapter_id, a.snapshot_id FROM adapters a JOIN ({held}) h USING (snapshot_id) ORDER BY 1",
        [forget_id, forget_id],
    )
    row = rows[0]
    return ForgetResult(forget_id, row["kind"], row["target"], row["reason"], records, snapshots, adapters, already)
