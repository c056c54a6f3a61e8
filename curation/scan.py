"""`refinery scan`: run quality checks over the training records and store findings in the catalog.

Every check returns one finding per record (score in [0, 1], flag, reason) and, for duplicate checks, the
clusters with their kept member. A failing check is recorded in the scan summary instead of aborting the
scan. A scan's id derives from the record set and its config, so rerunning an unchanged scan is free, and
a scan killed half-way is redone cleanly.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from curation.check_types import CheckContext, CheckFn, CheckOutput, Finding, ScanRecord
from curation.contamination_check import CHECK_NAME as EVAL_CHECK
from curation.contamination_check import check_near_dup_eval
from curation.embedding_checks import EMBEDDING_CHECK_CONFIGS, EMBEDDING_CHECKS
from curation.embeddings.model import model_id
from curation.heuristics import (
    LengthConfig,
    RefusalConfig,
    RepetitiveConfig,
    TruncatedConfig,
    check_empty_response,
    check_length,
    check_refusal,
    check_repetitive,
    check_truncated,
)
from curation.near_dup_check import SCOPE_CHECKS, check_near_dup, resolve_scope
from curation.ngram_contamination import CHECK_NAME as NGRAM_EVAL_CHECK
from curation.ngram_contamination import NgramContaminationConfig, check_ngram_contamination
from curation.pii import PiiConfig, check_pii
from curation.similarity.eval_match import ContaminationConfig, eval_items_hash
from curation.similarity.exact import DuplicateCluster, KeepRank, cluster_exact, dedup_key
from curation.similarity.near_dup import NearDupConfig
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import artifact_id, canonical_json, sha256_text
from schemas.progress import log, progress

__all__ = ["CHECKS", "CheckContext", "CheckOutput", "Finding", "ScanError", "ScanRecord", "ScanResult", "run_scan"]


class ScanError(Exception):
    """The scan cannot run (bad config, no records)."""


def _duplicate_output(records: Sequence[ScanRecord], clusters: list[DuplicateCluster], what: str) -> CheckOutput:
    by_member: dict[str, DuplicateCluster] = {m: c for c in clusters for m in c.members}
    findings = []
    for rec in records:
        cluster = by_member.get(rec.record_id)
        if cluster is None or cluster.kept == rec.record_id:
            findings.append(Finding(rec.record_id, 0.0, False))
        else:
            findings.append(
                Finding(
                    rec.record_id,
                    1.0,
                    True,
                    f"{what} of {cluster.kept} (kept: {cluster.keep_reason})",
                    {"cluster_id": cluster.cluster_id, "kept_record_id": cluster.kept},
                )
            )
    removed = sum(len(c.removed) for c in clusters)
    return CheckOutput(findings, clusters, {"clusters": len(clusters), "duplicates": removed})


def check_exact(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """Score 1.0 = this record duplicates another after normalisation and is not the kept one; else 0.0."""
    ranks = {r.record_id: r.rank for r in records}
    clusters = cluster_exact(((r.record_id, dedup_key(r.prompt, r.response)) for r in records), ranks, "xd_")
    return _duplicate_output(records, clusters, "exact duplicate (normalised text)")


def check_exact_prompt(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """Score 1.0 = another record asks the same prompt (after normalisation). Such records are not removed:
    the same prompt with a different answer is a conflict for review, with the same answer an exact duplicate.
    """
    ranks = {r.record_id: r.rank for r in records}
    clusters = cluster_exact(((r.record_id, dedup_key(r.prompt)) for r in records), ranks, "xp_")
    by_member = {m: c for c in clusters for m in c.members}
    findings = []
    for rec in records:
        cluster = by_member.get(rec.record_id)
        if cluster is None:
            findings.append(Finding(rec.record_id, 0.0, False))
            continue
        others = len(cluster.members) - 1
        findings.append(
            Finding(
                rec.record_id,
                1.0,
                True,
                f"same prompt as {others} other record(s) (cluster {cluster.cluster_id})",
                {"cluster_id": cluster.cluster_id, "kept_record_id": cluster.kept},
            )
        )
    response_of = {r.record_id: dedup_key(r.response) for r in records}
    conflicts = sum(len({response_of[m] for m in c.members}) > 1 for c in clusters)
    summary = {
        "clusters": len(clusters),
        "duplicates": sum(len(c.removed) for c in clusters),
        "conflicting_clusters": conflicts,
    }
    return CheckOutput(findings, clusters, summary)


#: The check registry: name -> function. Later checks (outlier, ...) register here.
CHECKS: dict[str, CheckFn] = {
    "exact": check_exact,
    "exact_prompt": check_exact_prompt,
    **{name: check_near_dup for name in SCOPE_CHECKS.values()},
    EVAL_CHECK: check_near_dup_eval,
    "empty_response": check_empty_response,
    "truncated": check_truncated,
    "repetitive": check_repetitive,
    "length": check_length,
    "refusal": check_refusal,
    "pii": check_pii,
    NGRAM_EVAL_CHECK: check_ngram_contamination,
    **EMBEDDING_CHECKS,
}
#: Checks that take configuration (``run_scan(config={name: {...}})``): name -> validated config model.
CHECK_CONFIGS: dict[str, type[BaseModel]] = {
    **{name: NearDupConfig for name in SCOPE_CHECKS.values()},
    EVAL_CHECK: ContaminationConfig,
    "truncated": TruncatedConfig,
    "repetitive": RepetitiveConfig,
    "length": LengthConfig,
    "refusal": RefusalConfig,
    "pii": PiiConfig,
    NGRAM_EVAL_CHECK: NgramContaminationConfig,
    **EMBEDDING_CHECK_CONFIGS,
}
DEFAULT_CHECKS = (
    "exact",
    "exact_prompt",
    "near_dup",
    "empty_response",
    "truncated",
    "repetitive",
    "length",
    "refusal",
    "pii",
    NGRAM_EVAL_CHECK,
)


@dataclass
class ScanResult:
    scan_id: str
    records: int
    seconds: float
    checks: dict[str, dict[str, Any]]
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scan_id": self.scan_id, "records": self.records, "seconds": self.seconds}
        out.update(self.checks)
        out["reused"] = self.reused
        return out


def load_training_records(catalog: Catalog) -> list[ScanRecord]:
    """Records with at least one training source row, each with the rank used to pick kept members."""
    sql = """
        WITH first_source AS (
            SELECT s.record_id,
                   min(struct_pack(t := strftime(b.started_at, '%Y-%m-%dT%H:%M:%S.%f'), r := s.row,
                                   i := s.sub_index)) AS first
            FROM source_rows s JOIN ingest_batches b USING (batch_id)
            WHERE b.purpose = 'train'
            GROUP BY s.record_id
        )
        SELECT r.record_id, r.prompt, r.response, r.label, f.first.t, f.first.r, f.first.i
        FROM records r JOIN first_source f USING (record_id)
        ORDER BY r.record_id
    """
    with catalog.read() as con:
        rows = con.execute(sql).fetchall()
    return [
        ScanRecord(rid, prompt, response, label, KeepRank(1, 0.0, (t, int(row), int(sub)), rid))
        for rid, prompt, response, label, t, row, sub in rows
    ]


def resolve_checks(
    checks: Sequence[str], config: dict[str, dict[str, Any]] | None = None
) -> dict[str, BaseModel | None]:
    """Validate the checks and their config up front; return check name -> validated config (or None).

    Fails on unknown checks, config for a check that does not run or takes none, and invalid values, naming
    every problem at once. ``near_dup`` with ``scope: prompt`` (or ``response``) resolves to ``near_dup_prompt``
    (``near_dup_response``): results are stored and reported under the name that says what they mean.
    """
    config = config or {}
    problems = [f"unknown check {c!r}" for c in checks if c not in CHECKS]
    problems += [f"config for {c!r}, which is not among the checks run" for c in config if c not in checks]
    resolved: dict[str, BaseModel | None] = {}
    for name in dict.fromkeys(checks):
        if name not in CHECKS:
            continue
        model = CHECK_CONFIGS.get(name)
        if model is None:
            if config.get(name):
                problems.append(f"check {name!r} takes no config")
            resolved[name] = None
            continue
        values = dict(config.get(name) or {})
        if name in SCOPE_CHECKS.values() and name != "near_dup" and "scope" not in values:
            values["scope"] = next(s for s, c in SCOPE_CHECKS.items() if c == name)
        try:
            validated = model.model_validate(values)
            target = resolve_scope(name, validated) if type(validated) is NearDupConfig else name
        except (ValidationError, ValueError) as exc:
            problems.append(f"config of {name!r}: {exc}")
            continue
        if target in resolved:
            problems.append(f"check {target!r} requested twice")
        resolved[target] = validated
    if problems:
        raise ScanError("; ".join(problems) + f" (available checks: {', '.join(sorted(CHECKS))})")
    return resolved


def run_scan(
    catalog: Catalog, checks: Sequence[str] = DEFAULT_CHECKS, config: dict[str, dict[str, Any]] | None = None
) -> ScanResult:
    """Run ``checks`` (with per-check ``config``, e.g. ``{"near_dup": {"threshold": 0.8}}``) over the records."""
    resolved = resolve_checks(checks, config)
    checks = sorted(resolved)
    started = time.monotonic()
    records = load_training_records(catalog)
    if not records:
        raise ScanError("no training records in the catalog: run `refinery ingest` first")
    scan_config: dict[str, Any] = {"checks": checks}
    params = {name: model.model_dump(mode="json") for name, model in resolved.items() if model is not None}
    if params:  # absent for checks without config, so earlier scan ids stay valid
        scan_config["params"] = params
    if resolved.keys() & {EVAL_CHECK, NGRAM_EVAL_CHECK}:  # the result depends on the registered eval sets too
        scan_config["eval_items"] = eval_items_hash(catalog)
    embedding = {
        name: model_id(getattr(resolved[name], "model", None)) for name in resolved if name in EMBEDDING_CHECKS
    }
    if embedding:  # and on the vectors: another model, model file or quantised recipe is another scan
        scan_config["embedding_models"] = embedding
    records_hash = sha256_text("\n".join(r.record_id for r in records))
    scan_id = artifact_id("scan", {"records": records_hash, "config": scan_config})
    with catalog.read() as con:
        row = con.execute("SELECT status, summary_json FROM scans WHERE scan_id = ?", [scan_id]).fetchone()
    if row is not None and row[0] == "complete":
        return ScanResult(scan_id, len(records), time.monotonic() - started, json.loads(row[1]), reused=True)
    with catalog.write() as con:
        _delete_scan_rows(con, scan_id)
        con.execute(
            "INSERT INTO scans (scan_id, status, config_json, records, started_at) VALUES (?, 'running', ?, ?, ?)",
            [scan_id, canonical_json(scan_config), len(records), utcnow()],
        )
    summary: dict[str, dict[str, Any]] = {}
    with progress("scan", total=len(checks)) as bar:
        for name in sorted(checks):
            bar.set_description(f"scan: {name}")
            try:
                output = CHECKS[name](records, CheckContext(catalog, resolved[name]))
            except Exception as exc:  # one broken check must not sink the scan
                summary[name] = {"error": f"{exc.__class__.__name__}: {exc}", "trace": traceback.format_exc()}
                log(f"[red]check {name} failed[/red]: {exc}")
                bar.advance()
                continue
            _store_check(catalog, scan_id, name, output)
            flagged = sum(f.flagged for f in output.findings)
            summary[name] = {**output.summary, "flagged": flagged}
            bar.advance()
    with catalog.write() as con:
        con.execute(
            "UPDATE scans SET status = 'complete', summary_json = ?, finished_at = ? WHERE scan_id = ?",
            [canonical_json(summary), utcnow(), scan_id],
        )
        batches = con.execute(
            "SELECT DISTINCT batch_id FROM source_rows JOIN ingest_batches USING (batch_id) WHERE purpose = 'train'"
        ).fetchall()
        for (batch_id,) in batches:
            add_lineage_edge(con, scan_id, "scan", batch_id, "batch", "scanned")
    return ScanResult(scan_id, len(records), round(time.monotonic() - started, 3), summary)


def _delete_scan_rows(con: Any, scan_id: str) -> None:
    for table in ("findings", "duplicate_members", "finding_pairs", "contamination_hits", "scans"):
        con.execute(f"DELETE FROM {table} WHERE scan_id = ?", [scan_id])


def _store_check(catalog: Catalog, scan_id: str, name: str, output: CheckOutput) -> None:
    findings = pa.table(
        {
            "scan_id": [scan_id] * len(output.findings),
            "record_id": [f.record_id for f in output.findings],
            "check_name": [name] * len(output.findings),
            "score": [float(f.score) for f in output.findings],
            "flagged": [f.flagged for f in output.findings],
            "reason": [f.reason for f in output.findings],
            "details_json": [canonical_json(f.details) if f.details else None for f in output.findings],
        }
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
