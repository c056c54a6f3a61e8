"""`refinery review status` and `refinery review calibrate`: progress per round and how precise each check is.

Both read the catalog only (what the last pull stored), so they work with the server down.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from curation.review.connection import ReviewError
from schemas.catalog import Catalog

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def status(catalog: Catalog, round_name: str | None = None) -> list[dict[str, Any]]:
    """Per round: items queued / pushed, records pending / submitted / discarded / decided, agreement."""
    params = [round_name] if round_name else []
    rows = catalog.query(
        f"""
        WITH resp AS (
            SELECT round_name, record_id,
                   count(*) FILTER (WHERE status = 'submitted') AS submitted,
                   count(*) FILTER (WHERE status = 'discarded') AS discarded
            FROM review_latest_responses GROUP BY round_name, record_id
        )
        SELECT r.round_name, r.dataset_name, r.policy, r.min_submitted,
               count(i.record_id) AS items,
               count(i.pushed_at) AS pushed,
               count(i.record_id) FILTER (WHERE coalesce(s.submitted, 0) >= r.min_submitted) AS submitted,
               count(i.record_id) FILTER (WHERE coalesce(s.submitted, 0) = 0 AND coalesce(s.discarded, 0) > 0)
                   AS discarded,
               count(i.record_id) FILTER (WHERE coalesce(s.submitted, 0) < r.min_submitted
                                  AND NOT (coalesce(s.submitted, 0) = 0 AND coalesce(s.discarded, 0) > 0))
                   AS pending,
               count(i.record_id) FILTER (WHERE o.state = 'decided') AS decided,
               count(i.record_id) FILTER (WHERE o.state IN ('disagreement', 'escalated', 'invalid')) AS unresolved,
               any_value(a.agreement) AS agreement, any_value(a.kappa) AS kappa
        FROM review_rounds r
        LEFT JOIN review_items i USING (round_name)
        LEFT JOIN resp s ON s.round_name = i.round_name AND s.record_id = i.record_id
        LEFT JOIN review_outcomes o ON o.round_name = i.round_name AND o.record_id = i.record_id
        LEFT JOIN review_agreement a ON a.round_name = r.round_name AND a.annotator = '*'
        {"WHERE r.round_name = ?" if round_name else ""}
        GROUP BY ALL ORDER BY min(r.created_at)
        """,
        params,
    )
    if round_name and not rows:
        raise ReviewError(f"no review round {round_name!r}")
    annotators = catalog.query(
        "SELECT round_name, annotator, records, agreement FROM review_agreement WHERE annotator <> '*' "
        "ORDER BY round_name, annotator"
    )
    for row in rows:
        row["annotators"] = {a["annotator"]: a["agreement"] for a in annotators if a["round_name"] == row["round_name"]}
    return rows


def calibrate(
    catalog: Catalog,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    budget: int | None = None,
    target_precision: float = 0.8,
) -> dict[str, Any]:
    """Precision of each check at each threshold, from the decisions so far, and a suggested threshold.

    Among reviewed records (those with a latest decision) whose score for the check is at least ``t``:
    precision = (rejected + edited) / reviewed. Scores come from each record's most recent scan with that check.
    The suggestion per check is the lowest threshold whose precision reaches ``target_precision`` and whose
    number of flagged records in the latest scan fits ``budget`` (records a team can review); when none
    reaches the target, the threshold with the best precision that fits the budget.
    """
    reviewed = catalog.query(
        """
        WITH scored AS (
            SELECT f.record_id, f.check_name, f.score,
                   row_number() OVER (PARTITION BY f.record_id, f.check_name ORDER BY s.finished_at DESC) AS rn
            FROM findings f JOIN scans s USING (scan_id) WHERE s.status = 'complete'
        )
        SELECT sc.check_name, sc.score, d.decision
        FROM scored sc JOIN record_decisions d USING (record_id) WHERE sc.rn = 1
        """
    )
    if not reviewed:
        raise ReviewError("no review decisions yet: push, review and pull a round first")
    latest = catalog.query("SELECT check_name, score FROM findings WHERE scan_id = (SELECT scan_id FROM latest_scan)")
    checks: dict[str, Any] = {}
    for check in sorted({r["check_name"] for r in reviewed}):
        rows = [r for r in reviewed if r["check_name"] == check]
        scores = [r["score"] for r in latest if r["check_name"] == check]
        table: list[dict[str, Any]] = []
        for t in thresholds:
            above = [r for r in rows if r["score"] >= t]
            bad = sum(1 for r in above if r["decision"] in ("reject", "edit"))
            table.append(
                {
                    "threshold": t,
                    "reviewed": len(above),
                    "rejected_or_edited": bad,
                    "precision": round(bad / len(above), 4) if above else None,
                    "would_flag": sum(1 for s in scores if s >= t),
                }
            )
        fits = [r for r in table if r["precision"] is not None and (budget is None or r["would_flag"] <= budget)]
        good = [r for r in fits if r["precision"] >= target_precision]
        pick = (
            min(good, key=lambda r: r["threshold"])
            if good
            else max(fits, key=lambda r: (r["precision"], -r["threshold"]), default=None)
        )
        checks[check] = {
            "reviewed": len(rows),
            "thresholds": table,
            "suggested_threshold": None if pick is None else pick["threshold"],
            "suggested_precision": None if pick is None else pick["precision"],
        }
    return {"budget": budget, "target_precision": target_precision, "checks": json.loads(json.dumps(checks))}
