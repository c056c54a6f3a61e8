"""Writing a check's output to the catalog: findings, duplicate cluster members, pairs and contamination hits,
each in bulk (an Arrow scan, not one statement per row: a scan can emit hundreds of thousands of rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from curation.checks.spec import CheckOutput, Finding
from schemas.catalog import Catalog
from schemas.ids import canonical_json


def delete_scan_rows(con: Any, scan_id: str) -> None:
    for table in ("findings", "duplicate_members", "finding_pairs", "contamination_hits", "scans"):
        con.execute(f"DELETE FROM {table} WHERE scan_id = ?", [scan_id])


#: Findings turned into Arrow rows at a time: the JSON of every finding's details is never alive at once as Python
#: strings (about 300 MB at 1M records for near_dup's).
FINDINGS_CHUNK = 100_000


def _findings_table(scan_id: str, name: str, findings: Sequence[Finding]) -> pa.Table:
    n = len(findings)
    return pa.table(
        {
            "scan_id": pa.array([scan_id] * n, pa.string()),
            "record_id": pa.array([f.record_id for f in findings], pa.string()),
            "check_name": pa.array([name] * n, pa.string()),
            "score": pa.array([float(f.score) for f in findings], pa.float64()),
            "flagged": pa.array([f.flagged for f in findings], pa.bool_()),
            "reason": pa.array([f.reason for f in findings], pa.string()),
            "details_json": pa.array([_details(f.details) for f in findings], pa.string()),
        }
    )


def store_check(catalog: Catalog, scan_id: str, name: str, output: CheckOutput) -> None:
    rows = output.findings
    findings = pa.concat_tables(
        [_findings_table(scan_id, name, rows[lo : lo + FINDINGS_CHUNK]) for lo in range(0, len(rows), FINDINGS_CHUNK)]
        or [_findings_table(scan_id, name, [])]
    )
    members = [(c, m) for c in output.clusters for m in c.members]
    dup = pa.table(
        {
            "scan_id": [scan_id] * len(members),
            "check_name": [name] * len(members),
            "cluster_id": [c.cluster_id for c, _ in members],
            "record_id": [m for _, m in members],
            "kept_record_id": [c.kept for c, _ in members],
            "is_kept": [m == c.kept for c, m in members],
            "similarity": [float(s) for c in output.clusters for s in (c.similarities or [1.0] * len(c.members))],
            "keep_reason": [c.keep_reason for c, _ in members],
        }
    )
    with catalog.write() as con:
        con.register("findings_chunk", findings)
        con.execute("INSERT INTO findings SELECT * FROM findings_chunk")
        con.unregister("findings_chunk")
        if members:
            con.register("dup_chunk", dup)
            con.execute(
                "INSERT INTO duplicate_members (scan_id, check_name, cluster_id, record_id, kept_record_id, "
                "is_kept, similarity, keep_reason) SELECT scan_id, check_name, cluster_id, record_id, "
                "kept_record_id, is_kept, similarity, keep_reason FROM dup_chunk"
            )
            con.unregister("dup_chunk")
        if output.pairs:
            _insert_arrow(con, "finding_pairs", _pairs_table(scan_id, name, output))
        if output.contamination:
            _insert_arrow(con, "contamination_hits", _hits_table(scan_id, name, output))


def _insert_arrow(con: Any, table: str, rows: pa.Table) -> None:
    """Bulk insert (an Arrow scan, not one statement per row: scans can emit tens of thousands of pairs)."""
    con.register("chunk_rows", rows)
    con.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(rows.column_names)}) SELECT * FROM chunk_rows")
    con.unregister("chunk_rows")


def _details(details: dict[str, Any] | None) -> str | None:
    return canonical_json(details) if details else None


def _pairs_table(scan_id: str, name: str, output: CheckOutput) -> pa.Table:
    pairs = list({(p.record_a, p.record_b): p for p in output.pairs}.values())  # one row per key, last wins
    return pa.table(
        {
            "scan_id": [scan_id] * len(pairs),
            "check_name": [name] * len(pairs),
            "record_a": [p.record_a for p in pairs],
            "record_b": [p.record_b for p in pairs],
            "score": pa.array([float(p.score) for p in pairs], pa.float64()),
            "prompt_similarity": pa.array([p.prompt_similarity for p in pairs], pa.float64()),
            "response_similarity": pa.array([p.response_similarity for p in pairs], pa.float64()),
            "reason": pa.array([p.reason for p in pairs], pa.string()),
            "details_json": pa.array([_details(p.details) for p in pairs], pa.string()),
        }
    )


def _hits_table(scan_id: str, name: str, output: CheckOutput) -> pa.Table:
    hits = list({(h.record_id, h.eval_set, h.eval_item): h for h in output.contamination}.values())
    return pa.table(
        {
            "scan_id": [scan_id] * len(hits),
            "check_name": [name] * len(hits),
            "record_id": [h.record_id for h in hits],
            "eval_set": [h.eval_set for h in hits],
            "eval_item": [h.eval_item for h in hits],
            "overlap": pa.array([float(h.overlap) for h in hits], pa.float64()),
            "method": [h.method for h in hits],
            "details_json": pa.array([_details(h.details) for h in hits], pa.string()),
        }
    )
