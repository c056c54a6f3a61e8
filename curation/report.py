"""The quality report: one self-contained HTML page about a scan (``refinery report --html PATH``).

Generic over checks: whatever a scan stored in ``findings``, ``finding_pairs``, ``duplicate_members`` and
``contamination_hits`` is summarised, plotted and exemplified, so a new check appears in the report without
any change here. The page has no external resources: CSS and a small sorting/filtering script are inline,
plots are base64 PNGs drawn by matplotlib (Agg canvas, no pyplot state). All record text is user data and is
HTML-escaped; long texts are cut with the full text in a ``<details>`` element.

Sections: summary (dataset size, ingest batches, quarantined rows by reason, the scan, failed checks),
per-check counts, score histograms (with the flag threshold where known), duplicate-cluster sizes, a 2-D map
of prompt embeddings coloured by flag (PCA by SVD), and the top examples of every check side by side.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from schemas.atomic import write_text_atomic
from schemas.catalog import Catalog
from schemas.progress import progress

__all__ = [
    "CheckStats",
    "EmbeddingMap",
    "Example",
    "RecordView",
    "ReportData",
    "ReportError",
    "ReportResult",
    "collect_report",
    "pca_2d",
    "render_html",
    "resolve_scan_id",
    "write_report",
]

#: Histogram bins over the score range.
BINS = 40
#: Characters of a record text shown before the rest goes into a <details> element.
TEXT_LIMIT = 360
#: Most points drawn on the embedding map.
MAX_POINTS = 5000
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
#: Colours of the embedding-map categories (checks in order of how many points they flag).
PALETTE = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
UNFLAGGED_COLOUR = "#c7c7c7"
SEVERAL_COLOUR = "#111111"

#: A function returning prompt embeddings for record ids: an (n, d) array aligned with the ids, or a mapping
#: record id -> vector (ids without a vector are left off the map).
EmbeddingSource = Callable[[list[str]], "np.ndarray | Mapping[str, Any]"]


class ReportError(Exception):
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
class EmbeddingMap:
    x: np.ndarray
    y: np.ndarray
    categories: list[str]  # per point: "not flagged", a check name or "several checks"
    explained: tuple[float, float]  # share of the variance along each axis
    total: int  # records in the scan (points drawn <= total)


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


# ---------------------------------------------------------------------------------------------- projection


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Project ``vectors`` (n, d) onto their first two principal components (SVD of the centred matrix).

    Returns the (n, 2) coordinates and the share of the total variance along each axis. Signs are fixed so
    the largest loading of each component is positive (the same data always gives the same picture). Fewer
    than two dimensions or points give zeros for the missing axis.
    """
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {matrix.shape}")
    n = matrix.shape[0]
    out = np.zeros((n, 2))
    if n == 0:
        return out, (0.0, 0.0)
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    for i in range(k):
        component = vt[i]
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        out[:, i] = centred @ component
    variance = singular**2
    total = float(variance.sum())
    shares = [float(variance[i] / total) if total > 0 and i < len(variance) else 0.0 for i in range(2)]
    return out, (shares[0], shares[1])


def sample_ids(ids: Sequence[str], limit: int, seed: int = 0) -> list[str]:
    """At most ``limit`` of ``ids``, drawn uniformly with a fixed seed (same input, same sample), in input order."""
    if len(ids) <= limit:
        return list(ids)
    chosen = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
    return [ids[i] for i in sorted(chosen.tolist())]


# ---------------------------------------------------------------------------------------------- collection


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


def _default_embeddings(catalog: Catalog, compute_missing: bool) -> EmbeddingSource:
    """Prompt embeddings from :mod:`curation.embeddings.cache` (the cache the embedding checks fill)."""
    from curation.embeddings.cache import record_embeddings

    def source(ids: list[str]) -> Any:
        return record_embeddings(catalog, ids, field="prompt", compute_missing=compute_missing)

    return source


def _vectors(found: Any, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Align what an embedding source returned with ``ids``: rows of an array, or a mapping id -> vector."""
    if isinstance(found, Mapping):
        kept = [i for i in ids if found.get(i) is not None]
        if not kept:
            return np.zeros((0, 0)), []
        return np.vstack([np.asarray(found[i], dtype=np.float64) for i in kept]), kept
    matrix = np.asarray(found, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"expected {len(ids)} vectors, got an array of shape {matrix.shape}")
    # a vector with NaN or inf cannot be placed; an all-zero row is a record without a stored embedding
    rows = np.flatnonzero(np.isfinite(matrix).all(axis=1) & np.any(matrix != 0, axis=1))
    return matrix[rows], [ids[int(i)] for i in rows]


def _embedding_map(
    catalog: Catalog,
    scan_id: str,
    source: EmbeddingSource | None,
    compute_missing: bool,
    max_points: int,
) -> tuple[EmbeddingMap | None, str]:
    rows = catalog.query(
        "SELECT record_id, list(check_name ORDER BY check_name) FILTER (WHERE flagged) AS flags "
        "FROM findings WHERE scan_id = ? GROUP BY record_id ORDER BY record_id",
        [scan_id],
    )
    if not rows:
        return None, "The scan stored no findings, so there are no records to place on a map."
    flags = {r["record_id"]: r["flags"] or [] for r in rows}
    ids = sample_ids(list(flags), max_points)
    try:
        if source is None:
            source = _default_embeddings(catalog, compute_missing)
        matrix, kept = _vectors(source(ids), ids)
    except ImportError as exc:
        return None, f"Embeddings are unavailable: {exc} (install the embed extra: pip install 'refinery[embed]')."
    except Exception as exc:  # the map is one section: say why it is missing instead of failing the report
        return None, f"Embeddings are unavailable: {exc.__class__.__name__}: {' '.join(str(exc).split())}"
    if len(kept) < 3:
        hint = "" if compute_missing else " Run a scan with an embedding check, or pass --compute-embeddings."
        return None, f"Only {len(kept)} of {len(ids)} sampled records have a stored prompt embedding.{hint}"
    coords, explained = pca_2d(matrix)
    categories = []
    for rid in kept:
        checks = flags[rid]
        categories.append("not flagged" if not checks else checks[0] if len(checks) == 1 else "several checks")
    note = f"{len(kept):,} of {len(flags):,} scanned records"
    if len(kept) < len(ids):
        note += f" ({len(ids) - len(kept):,} sampled records had no stored embedding)"
    return EmbeddingMap(coords[:, 0], coords[:, 1], categories, explained, len(flags)), note


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
        emap, note = _embedding_map(catalog, sid, embeddings, compute_embeddings, max_points)
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
    )


# ---------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError(f"the report draws its plots with matplotlib, which is missing: {exc}") from exc

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")  # laid out in the one draw
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_png(check: CheckStats) -> str | None:
    """Base64 PNG of a check's score histogram (flagged bars stacked on the rest; the threshold dashed)."""
    if not check.hist_edges:
        return None
    fig = _figure(4.6, 2.7)
    ax = fig.add_subplot()
    edges = np.asarray(check.hist_edges)
    unflagged, flagged = np.asarray(check.hist_unflagged), np.asarray(check.hist_flagged)
    nonzero = np.concatenate([unflagged, flagged])
    nonzero = nonzero[nonzero > 0]
    log = bool(len(nonzero) and nonzero.max() / nonzero.min() > 50)  # one bin (often 0) would hide the others
    base = 0.7 if log else 0.0
    # one filled step outline per series (two patches, not 2 x BINS bars): the total in red, the unflagged
    # part over it in blue, which reads as flagged stacked on unflagged
    ax.stairs(np.maximum(unflagged + flagged, base), edges, fill=True, baseline=base, color="#d62728", label="flagged")
    ax.stairs(np.maximum(unflagged, base), edges, fill=True, baseline=base, color="#7f9fbf", label="not flagged")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=base)
    if check.threshold is not None:
        side = ">=" if check.direction == "high" else "<="
        ax.axvline(
            check.threshold, color="#222", linestyle="--", linewidth=1.2, label=f"flag {side} {check.threshold:.3g}"
        )
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("score")
    ax.set_ylabel("records")
    ax.set_title(check.name, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def cluster_sizes_png(sizes: Mapping[str, Mapping[str, int]]) -> str | None:
    """Base64 PNG: clusters per size bucket, one bar group per duplicate check."""
    if not sizes:
        return None
    labels = [label for label, _, _ in SIZE_BUCKETS if any(label in s for s in sizes.values())]
    fig = _figure(max(4.6, 0.7 * len(labels) * max(1, len(sizes)) ** 0.5 + 2), 2.9)
    ax = fig.add_subplot()
    width = 0.8 / len(sizes)
    for i, (check, counts) in enumerate(sizes.items()):
        xs = np.arange(len(labels)) + (i - (len(sizes) - 1) / 2) * width
        ax.bar(xs, [counts.get(label, 0) for label in labels], width=width, label=check, color=PALETTE[i % 8])
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_xlabel("records in the cluster")
    ax.set_ylabel("clusters")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def embedding_png(emap: EmbeddingMap) -> str:
    """Base64 PNG of the 2-D map: unflagged points grey underneath, then one colour per flagging check."""
    fig = _figure(7.0, 5.2)
    ax = fig.add_subplot()
    counts: dict[str, int] = {}
    for category in emap.categories:
        counts[category] = counts.get(category, 0) + 1
    checks = sorted((c for c in counts if c not in ("not flagged", "several checks")), key=lambda c: -counts[c])
    colour = {c: PALETTE[i] for i, c in enumerate(checks[: len(PALETTE)])}
    cats = np.asarray(
        [c if c in colour or c in ("not flagged", "several checks") else "other check" for c in emap.categories]
    )
    order = ["not flagged", *colour, "other check", "several checks"]
    colours = {"not flagged": UNFLAGGED_COLOUR, "other check": "#bcbd22", "several checks": SEVERAL_COLOUR, **colour}
    size = 6 if len(cats) > 2000 else 14
    for category in order:
        mask = cats == category
        if mask.any():
            ax.scatter(
                emap.x[mask], emap.y[mask], s=size if category == "not flagged" else size * 1.6,
                c=colours[category], label=f"{category} ({int(mask.sum()):,})", alpha=0.8, linewidths=0,
            )  # fmt: skip
    ax.set_xlabel(f"PC 1 ({100 * emap.explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * emap.explained[1]:.1f}% of variance)")
    ax.legend(fontsize=7, frameon=False, loc="best", markerscale=1.5)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    """Escaped text of any value (None -> empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _text(text: str | None, limit: int = TEXT_LIMIT) -> str:
    """A record text, escaped; longer than ``limit``: cut, with the full text in a <details> element."""
    text = text or ""
    if len(text) <= limit:
        return f'<div class="text">{_e(text) or "<em>(empty)</em>"}</div>'
    return (
        f'<div class="text">{_e(text[:limit])}…</div><details><summary>full text ({len(text):,} characters)'
        f'</summary><div class="text full">{_e(text)}</div></details>'
    )


def _table(
    rows: Sequence[Mapping[str, Any]], table_id: str, numeric: Sequence[str] = (), filter_box: bool = True
) -> str:
    """A sortable table (click a header); with ``filter_box`` a text box above it hides non-matching rows.
    ``table_id`` must be unique in the page (sections use plain names, tables start with ``table-``)."""
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = list(rows[0])
    head = "".join(f'<th data-col="{i}">{_e(c)}</th>' for i, c in enumerate(columns))
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            if c in numeric:
                sort_key = "" if value is None else _e(value)
                cells.append(f'<td class="num" data-sort="{sort_key}">{_num(value)}</td>')
            else:
                cells.append(f"<td>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    box = (
        f'<input class="filter" type="search" placeholder="filter rows..." data-filter-for="{table_id}">'
        if filter_box
        else ""
    )
    return (
        f'{box}<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _img(png: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{png}" alt="{_e(alt)}">'


def _summary_section(data: ReportData) -> str:
    scan, ds = data.scan, data.dataset
    facts = {
        "scan": scan["scan_id"],
        "scan started": scan.get("started_at"),
        "scan finished": scan.get("finished_at"),
        "records scanned": scan.get("records"),
        "records in the catalog": ds["records"],
        "training records": ds["training_records"],
        "eval items": f"{ds['eval_items']:,} in {ds['eval_sets']:,} eval set(s)",
        "source rows": ds["source_rows"],
        "quarantined rows": ds["quarantined_rows"],
        "ingest batches": ds["batches"],
        "checks run": ", ".join(c.name for c in data.checks) or "none",
    }
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_num(v)}</dd>" for k, v in facts.items())
    parts = [f'<section id="summary"><h2>Summary</h2><dl class="facts">{dl}</dl>']
    if data.failed:
        items = "".join(f"<li><b>{_e(n)}</b>: {_e(err)}</li>" for n, err in data.failed.items())
        parts.append(
            f'<div class="alert"><b>{len(data.failed)} check(s) failed</b> in this scan:<ul>{items}</ul></div>'
        )
    else:
        parts.append('<p class="ok">Every check ran without error.</p>')
    batch_rows = [
        {k: b[k] for k in ("name", "purpose", "eval_set", "format", "rows_read", "ingested", "quarantined")}
        | {"new records": b["new_records"], "status": b["status"], "started": b["started_at"], "batch": b["batch_id"]}
        for b in data.batches
    ]
    numeric = ("rows_read", "ingested", "quarantined", "new records")
    parts.append(
        f"<h3>Ingest batches</h3>{_table(batch_rows, 'table-batches', numeric, filter_box=len(batch_rows) > 8)}"
    )
    q_rows = [{"reason": q["reason"], "rows": q["rows"], "example": q["example"]} for q in data.quarantine]
    parts.append(
        f"<h3>Quarantined rows by reason</h3>{_table(q_rows, 'table-quarantine', ('rows',), filter_box=False)}"
    )
    parts.append("</section>")
    return "".join(parts)


#: Summary keys shown in the per-check table's notes column.
NOTE_KEYS = ("clusters", "duplicates", "conflicting_clusters", "contaminated", "eval_items", "scope", "verified_pairs")


def _checks_section(data: ReportData) -> str:
    rows = []
    for c in data.checks:
        notes = [f"{k}: {c.summary[k]}" for k in NOTE_KEYS if k in c.summary]
        notes += [f"pairs: {c.pairs}"] if c.pairs else []
        notes += [f"contamination hits: {c.contamination_hits}"] if c.contamination_hits else []
        rows.append(
            {
                "check": c.name,
                "status": f"FAILED: {c.error}" if c.error else "ok",
                "flagged": c.flagged,
                "total": c.records,
                "flagged %": c.flagged_pct,
                "mean score": c.mean_score,
                "threshold": c.threshold,
                "notes": "; ".join(notes),
            }
        )
    bars = "".join(
        f'<div class="bar-row"><span class="bar-label">{_e(c.name)}</span><span class="bar"><span class="fill" '
        f'style="width:{min(100.0, c.flagged_pct or 0.0):.2f}%"></span></span><span class="bar-value">'
        f"{_num(c.flagged)} / {_num(c.records)} ({c.flagged_pct or 0:.2f}%)</span></div>"
        for c in data.checks
        if not c.error
    )
    table = _table(rows, "table-checks", ("flagged", "total", "flagged %", "mean score", "threshold"))
    return f'<section id="checks"><h2>Per-check counts</h2><div class="bars">{bars}</div>{table}</section>'


def _scores_section(data: ReportData) -> str:
    figures = []
    for c in data.checks:
        png = histogram_png(c)
        if png is None:
            continue
        where = (
            f"threshold {c.threshold:.4g} ({_e(c.threshold_source)})"
            if c.threshold is not None
            else "threshold not known"
        )
        figures.append(f"<figure>{_img(png, f'score histogram of {c.name}')}<figcaption>{_e(c.name)}: {where}"
                       "</figcaption></figure>")  # fmt: skip
    body = "".join(figures) or '<p class="muted">No scores stored for this scan.</p>'
    return f'<section id="scores"><h2>Score histograms</h2><div class="grid">{body}</div></section>'


def _duplicates_section(data: ReportData) -> str:
    png = cluster_sizes_png(data.cluster_sizes)
    if png is None:
        empty = '<p class="muted">No clusters in this scan.</p>'
        return f'<section id="duplicates"><h2>Duplicate clusters</h2>{empty}</section>'
    labels = [label for label, _, _ in SIZE_BUCKETS if any(label in s for s in data.cluster_sizes.values())]
    rows = [
        {
            "check": check,
            **{f"size {label}": counts.get(label, 0) for label in labels},
            "clusters": sum(counts.values()),
        }
        for check, counts in data.cluster_sizes.items()
    ]
    numeric = [f"size {label}" for label in labels] + ["clusters"]
    return (
        f'<section id="duplicates"><h2>Duplicate clusters</h2><figure>{_img(png, "duplicate cluster sizes")}'
        f"<figcaption>How many clusters of each size every duplicate check found.</figcaption></figure>"
        f"{_table(rows, 'table-cluster-sizes', numeric, filter_box=False)}</section>"
    )


def _map_section(data: ReportData) -> str:
    if data.embedding_map is None:
        return f'<section id="map"><h2>Embedding map</h2><p class="note">{_e(data.embedding_note)}</p></section>'
    png = embedding_png(data.embedding_map)
    return (
        f'<section id="map"><h2>Embedding map</h2><figure>{_img(png, "2-D map of prompt embeddings")}<figcaption>'
        f"Prompt embeddings projected on their two principal components, coloured by the check that flagged each "
        f"record: {_e(data.embedding_note)}.</figcaption></figure></section>"
    )


def _record_html(view: RecordView) -> str:
    label = f' <span class="tag">label: {_e(view.label)}</span>' if view.label else ""
    return (
        f'<div class="rec"><div class="rec-head"><b>{_e(view.title)}</b> <code>{_e(view.record_id)}</code>{label}'
        f'</div><div class="field">prompt</div>{_text(view.prompt)}<div class="field">response</div>'
        f"{_text(view.response)}</div>"
    )


def _examples_section(data: ReportData) -> str:
    parts = ['<section id="examples"><h2>Top examples per check</h2>']
    if not data.examples:
        parts.append('<p class="muted">No check flagged a record.</p>')
    for check, examples in data.examples.items():
        parts.append(f'<h3 id="ex-{_e(check)}">{_e(check)}</h3>')
        for ex in examples:
            metrics = " · ".join(f"{_e(k)} <b>{_num(v)}</b>" for k, v in ex.metrics.items())
            reason = f'<div class="reason">{_e(ex.reason)}</div>' if ex.reason else ""
            cls = "pair" if ex.right else "single"
            right = _record_html(ex.right) if ex.right else ""
            parts.append(
                f'<div class="example"><div class="metrics">{metrics}</div>{reason}'
                f'<div class="{cls}">{_record_html(ex.left)}{right}</div></div>'
            )
    parts.append("</section>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;background:#fafafa;margin:0}
main{max-width:1200px;margin:0 auto;padding:0 20px 40px}
header{background:#1f2937;color:#fff;padding:16px 20px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cbd5e1}
nav{max-width:1200px;margin:0 auto;padding:8px 20px}nav a{margin-right:14px;color:#2563eb;text-decoration:none}
h2{border-bottom:2px solid #e5e7eb;padding-bottom:4px;margin-top:32px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}dt{font-weight:600}dd{margin:0}
.alert{background:#fee2e2;border:1px solid #f87171;padding:8px 12px;border-radius:6px}
.ok{color:#166534}.muted{color:#6b7280}.note{background:#fef9c3;padding:8px 12px;border-radius:6px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top;max-width:420px;
word-break:break-word}
th{background:#f3f4f6;cursor:pointer;user-select:none;white-space:nowrap}
th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}td.num{text-align:right;font-variant-numeric:tabular-nums}
input.filter{margin:4px 0;padding:3px 6px;width:260px}
.bars{margin:8px 0 12px}.bar-row{display:flex;align-items:center;gap:8px;margin:2px 0}
.bar-label{width:180px;font-family:monospace;overflow:hidden;text-overflow:ellipsis}
.bar{flex:0 0 360px;height:12px;background:#e5e7eb;border-radius:3px;overflow:hidden}
.fill{display:block;height:100%;background:#d62728}.bar-value{color:#374151;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:6px}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#4b5563}
.example{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:8px;margin:8px 0}
.metrics{font-size:12px;color:#374151}.reason{font-size:12px;color:#6b7280;margin:2px 0 6px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}.single{max-width:760px}
.rec{border-left:3px solid #93c5fd;padding-left:8px;min-width:0}.pair .rec:first-child{border-color:#f87171}
.rec-head{font-size:12px}.field{font-size:11px;text-transform:uppercase;color:#6b7280;margin-top:4px}
.text{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;font-size:12.5px;
background:#f9fafb;padding:4px 6px;border-radius:4px;max-height:240px;overflow:auto}
.text.full{max-height:480px}details summary{font-size:12px;color:#2563eb;cursor:pointer}
.tag{background:#e0e7ff;border-radius:3px;padding:0 4px;font-size:11px}code{font-size:11px}
"""

SCRIPT = """
(function(){
  function key(cell){var v=cell.getAttribute('data-sort');if(v===null){v=cell.textContent.trim();}
    var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?{n:n}:{s:v.toLowerCase()};}
  function cmp(a,b){if(a.n!==undefined&&b.n!==undefined){return a.n-b.n;}
    if(a.n!==undefined){return -1;}if(b.n!==undefined){return 1;}return a.s<b.s?-1:a.s>b.s?1:0;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('asc');
        table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
        th.classList.add(asc?'asc':'desc');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(r1,r2){var c=cmp(key(r1.cells[col]),key(r2.cells[col]));return asc?c:-c;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.querySelectorAll('input.filter').forEach(function(box){
    var table=document.getElementById(box.getAttribute('data-filter-for'));
    box.addEventListener('input',function(){var q=box.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
        r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});
  });
})();
"""


def _content_security_policy() -> str:
    """Nothing from the network; inline styles and data: images; only the report's own script may run (by its
    hash), so even text that escaped escaping could not execute."""
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (no external resource of any kind)."""
    sid = data.scan["scan_id"]
    with progress("report: render", total=6) as bar:
        sections = []
        for build in (
            _summary_section,
            _checks_section,
            _scores_section,
            _duplicates_section,
            _map_section,
            _examples_section,
        ):
            sections.append(build(data))
            bar.advance()
    nav = "".join(
        f'<a href="#{anchor}">{title}</a>'
        for anchor, title in (
            ("summary", "Summary"),
            ("checks", "Counts"),
            ("scores", "Scores"),
            ("duplicates", "Duplicates"),
            ("map", "Map"),
            ("examples", "Examples"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_content_security_policy()}">'
        f"<title>Refinery quality report: {_e(sid)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Refinery quality report</h1><p>scan <code>{_e(sid)}</code> · generated "
        f"{_e(data.generated_at)}</p></header><nav>{nav}</nav><main>{''.join(sections)}</main>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(
    catalog: Catalog,
    path: Path,
    scan_id: str | None = None,
    examples: int = 5,
    max_points: int = MAX_POINTS,
    compute_embeddings: bool = False,
    embeddings: EmbeddingSource | None = None,
) -> ReportResult:
    """Collect, render and atomically write the report for ``scan_id`` (default: the latest complete scan)."""
    data = collect_report(catalog, scan_id, examples, max_points, compute_embeddings, embeddings)
    text = render_html(data)
    write_text_atomic(path, text)
    return ReportResult(path, data.scan["scan_id"], [c.name for c in data.checks], len(text.encode("utf-8")))
