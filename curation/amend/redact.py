"""PII redaction on demand: a new version of each record the ``pii`` check flagged, with typed placeholders.

For every record flagged by ``pii`` in a scan, each message is redacted with :func:`curation.checks.pii.redact` (the
same detectors and threshold as the scan) and the result is stored as a new record: a new content-addressed
record id, ``parent_record_id`` = the original, written by the ingest's record writer
(:func:`curation.ingest.store.insert_records`), plus a ``record_versions`` row (kind ``redaction``, actor
``refinery:pii``, source = the scan) and a lineage edge. The original record is never changed, and nothing is
decided here: which version a snapshot uses is the snapshot policy's business. Running it again is free: the
same redaction gives the same record id, and existing versions are reported, not duplicated.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from curation.checks.pii import PiiConfig, redact
from curation.ingest.store import insert_records
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.errors import InputError
from schemas.ids import canonical_json
from schemas.progress import progress
from schemas.records import Message, Record

ACTOR = "refinery:pii"


class RedactionError(InputError):
    """Redaction cannot run: unknown scan, or a scan without the ``pii`` check."""


@dataclass(frozen=True)
class RedactedVersion:
    original: str
    redacted: str
    kinds: dict[str, int]
    new: bool  # False when this version was already stored by an earlier run


@dataclass
class RedactionResult:
    scan_id: str
    flagged: int
    versions: list[RedactedVersion] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # flagged, yet nothing at the threshold in the messages

    def to_json(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "flagged": self.flagged,
            "redacted": sum(v.new for v in self.versions),
            "already_redacted": sum(not v.new for v in self.versions),
            "unchanged": self.unchanged,
            "versions": [
                {"original": v.original, "redacted": v.redacted, "kinds": v.kinds, "new": v.new} for v in self.versions
            ],
        }


def _pii_scan(catalog: Catalog, scan_id: str | None) -> tuple[str, PiiConfig]:
    if scan_id is None:
        row = catalog.query(
            "SELECT s.scan_id, s.config_json FROM scans s WHERE s.status = 'complete' AND EXISTS "
            "(SELECT 1 FROM findings f WHERE f.scan_id = s.scan_id AND f.check_name = 'pii') "
            "ORDER BY s.finished_at DESC LIMIT 1"
        )
        if not row:
            raise RedactionError("no completed scan ran the pii check: run `refinery scan --checks pii` first")
    else:
        row = catalog.query("SELECT scan_id, config_json, status FROM scans WHERE scan_id = ?", [scan_id])
        if not row:
            raise RedactionError(f"unknown scan {scan_id!r}")
        if catalog.scalar("SELECT count(*) FROM findings WHERE scan_id = ? AND check_name = 'pii'", [scan_id]) == 0:
            raise RedactionError(f"scan {scan_id} did not run the pii check")
    params = json.loads(row[0]["config_json"]).get("params", {}).get("pii", {})
    return str(row[0]["scan_id"]), PiiConfig.model_validate(params)


def redact_scan(catalog: Catalog, scan_id: str | None = None) -> RedactionResult:
    """Store a redacted version of every record the ``pii`` check flagged in ``scan_id`` (default: the latest
    completed scan that ran it), with the scan's own pii configuration. See the module docstring."""
    scan_id, config = _pii_scan(catalog, scan_id)
    rows = catalog.query(
        "SELECT r.record_id, r.messages_json, r.label, r.metadata_json, r.first_batch_id FROM findings f "
        "JOIN records r USING (record_id) WHERE f.scan_id = ? AND f.check_name = 'pii' AND f.flagged "
        "ORDER BY r.record_id",
        [scan_id],
    )
    result = RedactionResult(scan_id, len(rows))
    with progress("redact", total=len(rows)) as bar:
        for row in rows:
            kinds: Counter[str] = Counter()
            messages = []
            for message in json.loads(row["messages_json"]):
                text, matches = redact(message["content"], config.threshold, config.kinds)
                kinds.update(m.kind for m in matches)
                messages.append(Message(role=message["role"], content=text))
            metadata = json.loads(row["metadata_json"])
            version = Record.from_messages(messages, label=row["label"], metadata=metadata)
            bar.advance()
            if version.record_id == row["record_id"]:
                result.unchanged.append(row["record_id"])
                continue
            with catalog.write() as con:
                exists = con.execute(
                    "SELECT count(*) FROM record_versions WHERE record_id = ?", [version.record_id]
                ).fetchall()
                is_new = exists[0][0] == 0
                if is_new:
                    insert_records(con, [(version, canonical_json(metadata))], row["first_batch_id"], row["record_id"])
                    reason = "redacted " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
                    con.execute(
                        "INSERT INTO record_versions VALUES (?, ?, 'redaction', ?, ?, ?, ?)",
                        [version.record_id, row["record_id"], ACTOR, reason, scan_id, utcnow()],
                    )
                    add_lineage_edge(con, version.record_id, "record", row["record_id"], "record", "redaction")
            result.versions.append(
                RedactedVersion(row["record_id"], version.record_id, dict(sorted(kinds.items())), is_new)
            )
    return result
