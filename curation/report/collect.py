"""Collecting a report: everything it shows about a scan, read from the catalog (summary, per-check counts and
score histograms, duplicate cluster sizes, the top examples of every check, the embedding map)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from curation.report.embedding_map import MAX_POINTS, EmbeddingMap, EmbeddingSource, build_embedding_map
from schemas.catalog import Catalog
from schemas.errors import InputError
from schemas.progress import progress

#: Histogram bins over the score range.
BINS = 40

#: Cluster-size buckets of the duplicate-cluster distribution: (label, lowest size, highest size).
SIZE_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("2", 2, 2),
    ("3", 3, 3),
    ("4", 4, 4),
    ("5", 5, 5),
    ("6-10", 6, 10),
    ("11-20", 11, 20),
    ("21-50", 21, 50),
    ("51-100", 51, 100),
    ("101+", 101, 2**62),
)


class ReportError(InputError):
    """The report cannot be made (no complete scan, unknown scan id)."""


@dataclass(frozen=True)
class RecordView:
    record_id: str
    prompt: str
    response: str
    label: str | None
    title: str  # what this record is in the example: "flagged", "kept member", "eval item (set x)", ...


@dataclass(frozen=True)
class Example:
    """One example of a check: the record it flagged and, for pairs, the record it was compared with."""

    left: RecordView
    right: RecordView | None
    metrics: dict[str, Any]  # similarity, score, overlap, cluster size, ...
    reason: str | None


@dataclass
class CheckStats:
    name: str
    records: int = 0
    flagged: int = 0
    mean_score: float | None = None
    threshold: float | None = None
    threshold_source: str | None = None  # where the threshold came from: scan summary, scan config, findings
    direction: str = "high"  # "high": high scores are flagged; "low": low scores are
    error: str | None = None  # the check failed (from scans.summary_json)
    pairs: int = 0
    contamination_hits: int = 0
    clusters: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    hist_edges: list[float] = field(default_factory=list)
    hist_flagged: list[int] = field(default_factory=list)
    hist_unflagged: list[int] = field(default_factory=list)

    @property
    def flagged_pct(self) -> float | None:
        return round(100.0 * self.flagged / self.records, 2) if self.records else None


@dataclass
class ReportData:
    scan: dict[str, Any]
    dataset: dict[str, Any]
    batches: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    checks: list[CheckStats]
    cluster_sizes: dict[str, dict[str, int]]  # check -> size bucket -> clusters
    examples: dict[str, list[Example]]
    embedding_map: EmbeddingMap | None
    embedding_note: str
    generated_at: str
    # per snapshot made from this scan and check: records it left out or changed (snapshot_check_effects)
    snapshot_effects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> dict[str, str]:
        return {c.name: c.error for c in self.checks if c.error}


@dataclass(frozen=True)
class ReportResult:
    path: Path
    scan_id: str
    checks: list[str]
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "scan_id": self.scan_id, "checks": self.checks, "bytes": self.bytes}


def _resolve_scan(catalog: Catalog, scan_id: str | None) -> dict[str, Any]:
    if scan_id is None:
        rows = catalog.query("SELECT * FROM latest_scan")
        if not rows:
            raise ReportError("no complete scan in the catalog: run `refinery scan` first")
    else:
        rows = catalog.query("SELECT * FROM scans WHERE scan_id = ?", [scan_id])
        if not rows:
            known = [r["scan_id"] for r in catalog.query("SELECT scan_id FROM scans ORDER BY started_at DESC")]
            raise ReportError(f"unknown scan {scan_id!r}; scans in the catalog: {', '.join(known[:10]) or 'none'}")
        if rows[0]["status"] != "complete":
            raise ReportError(f"scan {scan_id} is not complete (status {rows[0]['status']!r}): rerun `refinery scan`")
    scan = dict(rows[0])
    scan["config"] = json.loads(scan.pop("config_json") or "{}")
    scan["summary"] = json.loads(scan.pop("summary_json") or "{}")
    return scan


def resolve_scan_id(catalog: Catalog, scan_id: str | None = None) -> str:
    """``scan_id`` checked to name a complete scan, or the latest complete scan's id (ReportError if none)."""
    return str(_resolve_scan(catalog, scan_id)["scan_id"])


def _dataset(catalog: Catalog) -> dict[str, Any]:
    row = catalog.query(
        """
        SELECT (SELECT count(*) FROM records) AS records,
               (SELECT count(DISTINCT record_id) FROM record_sources WHERE purpose = 'train') AS training_records,
               (SELECT count(DISTINCT record_id) FROM record_sources WHERE purpose = 'eval') AS eval_items,
               (SELECT count(DISTINCT eval_set) FROM ingest_batches WHERE purpose = 'eval') AS eval_sets,
               (SELECT count(*) FROM source_rows) AS source_rows,
               (SELECT count(*) FROM quarantined_rows) AS quarantined_rows,
               (SELECT count(*) FROM ingest_batches) AS batches
        """
    )
    return row[0]


def _batches(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.query(
        "SELECT name, purpose, eval_set, format, rows_read, ingested, quarantined, new_records, status, started_at, "
        "batch_id FROM ingest_batches ORDER BY started_at"
    )


def _quarantine(catalog: Catalog) -> list[dict[str, Any]]:
    """Quarantined rows grouped by the kind of reason (the text before the first colon), with an example."""
    return catalog.query(
        """
        SELECT trim(split_part(reason, ':', 1)) AS reason, count(*) AS rows, min(reason) AS example
        FROM quarantined_rows GROUP BY 1 ORDER BY rows DESC, reason
        """
    )


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _check_stats(catalog: Catalog, scan: dict[str, Any]) -> list[CheckStats]:
    scan_id = scan["scan_id"]
    summary: dict[str, Any] = scan["summary"]
    params: dict[str, Any] = scan["config"].get("params", {})
    names = list(dict.fromkeys([*scan["config"].get("checks", []), *summary]))
    stats = {n: CheckStats(n) for n in names}

    def get(name: str) -> CheckStats:
        return stats.setdefault(name, CheckStats(name))

    for row in catalog.query(
        "SELECT check_name, count(*) AS n, count(*) FILTER (WHERE flagged) AS flagged, avg(score) AS mean, "
        "min(score) FILTER (WHERE flagged) AS fmin, max(score) FILTER (WHERE flagged) AS fmax, "
        "min(score) FILTER (WHERE NOT flagged) AS umin, max(score) FILTER (WHERE NOT flagged) AS umax "
        "FROM findings WHERE scan_id = ? GROUP BY check_name ORDER BY check_name",
        [scan_id],
    ):
        check = get(row["check_name"])
        check.records, check.flagged, check.mean_score = int(row["n"]), int(row["flagged"]), row["mean"]
        check.summary = summary.get(check.name, {}) if isinstance(summary.get(check.name), dict) else {}
        _set_threshold(check, params.get(check.name, {}), row)
    for name, entry in summary.items():
        if isinstance(entry, dict) and entry.get("error"):
            get(name).error = str(entry["error"])
    for table, attr in (("finding_pairs", "pairs"), ("contamination_hits", "contamination_hits")):
        for row in catalog.query(
            f"SELECT check_name, count(*) AS n FROM {table} WHERE scan_id = ? GROUP BY check_name", [scan_id]
        ):
            setattr(get(row["check_name"]), attr, int(row["n"]))
    for row in catalog.query(
        "SELECT check_name, count(DISTINCT cluster_id) AS n FROM duplicate_members WHERE scan_id = ? "
        "GROUP BY check_name",
        [scan_id],
    ):
        get(row["check_name"]).clusters = int(row["n"])
    _histograms(catalog, scan_id, stats)
    for name, check in stats.items():
        if not check.summary and isinstance(summary.get(name), dict):
            check.summary = summary[name]
    return sorted(stats.values(), key=lambda c: c.name)


def _set_threshold(check: CheckStats, params: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """The flag threshold of a check: from its scan summary or config when it reports one, else inferred from
    the findings when flagged and unflagged scores do not overlap. The direction says which side is flagged."""
    fmin, fmax, umin, umax = (_as_float(row[k]) for k in ("fmin", "fmax", "umin", "umax"))
    for source, value in (("scan summary", check.summary.get("threshold")), ("scan config", params.get("threshold"))):
        threshold = _as_float(value)
        if threshold is not None:
            check.threshold, check.threshold_source = threshold, source
            if fmax is not None and fmax <= threshold and (fmin is None or fmin < threshold):
                check.direction = "low"
            return
    if fmin is None or fmax is None or umin is None or umax is None:
        return
    if fmin > umax:
        check.threshold, check.threshold_source, check.direction = fmin, "lowest flagged score", "high"
    elif fmax < umin:
        check.threshold, check.threshold_source, check.direction = fmax, "highest flagged score", "low"


def _histograms(catalog: Catalog, scan_id: str, stats: dict[str, CheckStats]) -> None:
    """Per check, BINS equal bins over [min(0, lowest score), max(1, highest score)], flagged and not."""
    rows = catalog.query(
        f"""
        WITH bounds AS (
            SELECT check_name, least(0.0, min(score)) AS lo, greatest(1.0, max(score)) AS hi
            FROM findings WHERE scan_id = ? GROUP BY check_name
        )
        SELECT f.check_name, b.lo, b.hi, f.flagged,
               least(greatest(floor((f.score - b.lo) / (b.hi - b.lo) * {BINS}), 0), {BINS - 1})::INTEGER AS bin,
               count(*) AS n
        FROM findings f JOIN bounds b USING (check_name)
        WHERE f.scan_id = ? GROUP BY ALL
        """,
        [scan_id, scan_id],
    )
    for row in rows:
        check = stats.setdefault(row["check_name"], CheckStats(row["check_name"]))
        if not check.hist_edges:
            check.hist_edges = np.linspace(row["lo"], row["hi"], BINS + 1).tolist()
            check.hist_flagged, check.hist_unflagged = [0] * BINS, [0] * BINS
        target = check.hist_flagged if row["flagged"] else check.hist_unflagged
        target[row["bin"]] += int(row["n"])


def _cluster_sizes(catalog: Catalog, scan_id: str) -> dict[str, dict[str, int]]:
    rows = catalog.query(
        "SELECT check_name, size, count(*) AS clusters FROM (SELECT check_name, cluster_id, count(*) AS size "
        "FROM duplicate_members WHERE scan_id = ? GROUP BY ALL) GROUP BY ALL ORDER BY check_name, size",
        [scan_id],
    )
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        bucket = next((label for label, lo, hi in SIZE_BUCKETS if lo <= row["size"] <= hi), "1")
        counts = out.setdefault(row["check_name"], {})
        counts[bucket] = counts.get(bucket, 0) + int(row["clusters"])
    return out


def _snapshot_effects(catalog: Catalog, scan_id: str) -> list[dict[str, Any]]:
    """Per snapshot made from the scan and per check: records it dropped (alone: for that check only), changed."""
    return catalog.query(
        "SELECT s.snapshot_id AS snapshot, s.train + s.validation + s.test AS members, e.check_name AS check, "
        "e.dropped, e.dropped_alone, e.changed FROM snapshots s JOIN snapshot_check_effects e USING (snapshot_id) "
        "WHERE s.scan_id = ? ORDER BY s.created_at, s.snapshot_id, e.dropped DESC, e.changed DESC, e.check_name",
        [scan_id],
    )


def _record_views(catalog: Catalog, ids: set[str]) -> dict[str, tuple[str, str, str | None]]:
    if not ids:
        return {}
    rows = catalog.query(
        "SELECT record_id, prompt, response, label FROM records WHERE record_id IN (SELECT unnest(?))", [sorted(ids)]
    )
    return {r["record_id"]: (r["prompt"], r["response"], r["label"]) for r in rows}


def _examples(catalog: Catalog, scan_id: str, checks: list[CheckStats], per_check: int) -> dict[str, list[Example]]:
    """The top ``per_check`` examples of every check with flags, pairs, clusters or contamination hits.

    Pair checks show their highest-scoring pairs, contamination their largest overlaps (training record and
    eval item), duplicate checks one removed member beside its kept record for the largest clusters, other
    checks their most extreme flagged records (with the eval item a finding's details name, if any).
    """
    # per check: (flagged record, other record or None, the other record's title, metrics, reason)
    plans: dict[str, list[tuple[str, str | None, str, dict[str, Any], str | None]]] = {}
    for check in checks:
        name, items = check.name, []
        if check.pairs:
            for r in catalog.query(
                "SELECT record_a, record_b, score, prompt_similarity, response_similarity, reason FROM finding_pairs "
                "WHERE scan_id = ? AND check_name = ? ORDER BY score DESC, record_a, record_b LIMIT ?",
                [scan_id, name, per_check],
            ):
                metrics = {
                    "score": r["score"],
                    "prompt similarity": r["prompt_similarity"],
                    "response similarity": r["response_similarity"],
                }
                items.append((r["record_a"], r["record_b"], "compared with", metrics, r["reason"]))
        elif check.contamination_hits:
            for r in catalog.query(
                "SELECT record_id, eval_set, eval_item, overlap, method FROM contamination_hits "
                "WHERE scan_id = ? AND check_name = ? ORDER BY overlap DESC, record_id, eval_item LIMIT ?",
                [scan_id, name, per_check],
            ):
                metrics = {"overlap": r["overlap"], "method": r["method"]}
                items.append((r["record_id"], r["eval_item"], f"eval item ({r['eval_set']})", metrics, None))
        elif check.clusters:
            for r in catalog.query(
                """
                SELECT record_id, kept_record_id, similarity, keep_reason, size FROM (
                    SELECT *, count(*) OVER (PARTITION BY cluster_id) AS size,
                           row_number() OVER (PARTITION BY cluster_id, is_kept ORDER BY similarity DESC, record_id)
                               AS rn
                    FROM duplicate_members WHERE scan_id = ? AND check_name = ?
                ) WHERE NOT is_kept AND rn = 1
                ORDER BY size DESC, similarity DESC, record_id LIMIT ?
                """,
                [scan_id, name, per_check],
            ):
                metrics = {"similarity": r["similarity"], "cluster size": r["size"]}
                reason = f"kept: {r['keep_reason']}"
                items.append((r["record_id"], r["kept_record_id"], "kept member", metrics, reason))
        elif check.flagged:
            order = "DESC" if check.direction == "high" else "ASC"
            for r in catalog.query(
                f"SELECT record_id, score, reason, details_json->>'$.eval_record_id' AS eval_item, "
                f"details_json->>'$.eval_set' AS eval_set FROM findings WHERE scan_id = ? AND check_name = ? "
                f"AND flagged ORDER BY score {order}, record_id LIMIT ?",
                [scan_id, name, per_check],
            ):
                title = f"eval item ({r['eval_set']})" if r["eval_set"] else "eval item"
                items.append((r["record_id"], r["eval_item"], title, {"score": r["score"]}, r["reason"]))
        if items:
            plans[name] = items
    ids = {i for items in plans.values() for a, b, *_ in items for i in (a, b) if i}
    texts = _record_views(catalog, ids)

    def view(record_id: str, title: str) -> RecordView:
        prompt, response, label = texts.get(record_id, ("(record not in the catalog)", "", None))
        return RecordView(record_id, prompt, response, label, title)

    return {
        name: [
            Example(
                view(a, "flagged"),
                view(b, right_title) if b else None,
                {k: v for k, v in metrics.items() if v is not None},
                reason,
            )
            for a, b, right_title, metrics, reason in items
        ]
        for name, items in plans.items()
    }


def collect_report(
    catalog: Catalog,
    scan_id: str | None = None,
    examples: int = 5,
    max_points: int = MAX_POINTS,
    compute_embeddings: bool = False,
    embeddings: EmbeddingSource | None = None,
) -> ReportData:
    """Everything the report shows about ``scan_id`` (default: the latest complete scan), read from the catalog.

    ``embeddings`` returns prompt vectors for record ids; by default they come from
    ``curation.embeddings.cache.record_embeddings`` (stored ones only unless ``compute_embeddings``).
    """
    if examples < 0 or max_points < 1:
        raise ReportError("examples must be >= 0 and max_points >= 1")
    with progress("report: collect", total=5) as bar:
        scan = _resolve_scan(catalog, scan_id)
        sid = scan["scan_id"]
        dataset, batches, quarantine = _dataset(catalog), _batches(catalog), _quarantine(catalog)
        bar.advance()
        checks = _check_stats(catalog, scan)
        bar.advance()
        sizes = _cluster_sizes(catalog, sid)
        bar.advance()
        shown = _examples(catalog, sid, checks, examples) if examples else {}
        bar.advance()
        bar.set_description("report: embeddings")
        emap, note = build_embedding_map(catalog, sid, embeddings, compute_embeddings, max_points)
        bar.advance()
    return ReportData(
        scan=scan,
        dataset=dataset,
        batches=batches,
        quarantine=quarantine,
        checks=checks,
        cluster_sizes=sizes,
        examples=shown,
        embedding_map=emap,
        embedding_note=note,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        snapshot_effects=_snapshot_effects(catalog, sid),
    )
