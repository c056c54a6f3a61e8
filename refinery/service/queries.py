"""The catalog reads that the JSON API and the dashboard share (each query lives here once). Every function returns
plain rows (dicts keyed by column name) from short read transactions; none imports FastAPI."""

from __future__ import annotations

import json
from typing import Any

from refinery.workspace import Workspace
from schemas.catalog import Catalog

#: Lines of a job's log that a job's detail carries.
LOG_TAIL_LINES = 40


def list_snapshots(catalog: Catalog, limit: int | None = None) -> list[dict[str, Any]]:
    """Snapshots, newest first, with their split sizes, scan and parent (the columns of `refinery snapshot list`)."""
    return catalog.query(
        "SELECT snapshot_id, created_at, train, validation, test, parent_id, scan_id, path, manifest_sha256 "
        "FROM snapshots ORDER BY created_at DESC, snapshot_id LIMIT ?",
        [_limit(limit)],
    )


def get_snapshot(catalog: Catalog, snapshot_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A snapshot's row (the columns of :func:`list_snapshots`) and its policy, or None."""
    rows = catalog.query(
        "SELECT snapshot_id, created_at, train, validation, test, parent_id, scan_id, path, manifest_sha256, "
        "policy_json FROM snapshots WHERE snapshot_id = ?",
        [snapshot_id],
    )
    if not rows:
        return None
    policy = rows[0].pop("policy_json")
    return rows[0], json.loads(policy) if policy else {}


def list_scans(catalog: Catalog, limit: int | None = None) -> list[dict[str, Any]]:
    """Scans, newest first: status, records, timestamps and the checks' summaries."""
    rows = catalog.query(
        "SELECT scan_id, status, records, started_at, finished_at, config_json, summary_json "
        "FROM scans ORDER BY started_at DESC, scan_id LIMIT ?",
        [_limit(limit)],
    )
    return [_scan(row) for row in rows]


def get_scan(catalog: Catalog, scan_id: str) -> dict[str, Any] | None:
    rows = catalog.query(
        "SELECT scan_id, status, records, started_at, finished_at, config_json, summary_json FROM scans "
        "WHERE scan_id = ?",
        [scan_id],
    )
    return _scan(rows[0]) if rows else None


def _scan(row: dict[str, Any]) -> dict[str, Any]:
    config = row.pop("config_json")
    summary = row.pop("summary_json")
    return {**row, "config": json.loads(config) if config else {}, "summary": json.loads(summary) if summary else {}}


def list_adapters(catalog: Catalog) -> list[dict[str, Any]]:
    """Every adapter with its status in the registry and its latest verdict (the ``registry`` view), newest first."""
    return catalog.query("SELECT * FROM registry ORDER BY created_at DESC, adapter_id")


def list_evals(catalog: Catalog, adapter_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Eval runs with their verdict and reason (the ``eval_verdicts`` view), newest first."""
    return catalog.query(
        "SELECT * FROM eval_verdicts WHERE (? IS NULL OR adapter_id = ?) ORDER BY created_at DESC, eval_id LIMIT ?",
        [adapter_id, adapter_id, _limit(limit)],
    )


def get_eval(
    catalog: Catalog, eval_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None] | None:
    """An eval run's ``eval_verdicts`` row, its comparisons with each baseline and its ``eval_checks`` row."""
    rows = catalog.query("SELECT * FROM eval_verdicts WHERE eval_id = ?", [eval_id])
    if not rows:
        return None
    comparisons = catalog.query("SELECT * FROM eval_comparisons WHERE eval_id = ? ORDER BY baseline", [eval_id])
    checks = catalog.query("SELECT * FROM eval_checks WHERE eval_id = ?", [eval_id])
    return rows[0], comparisons, checks[0] if checks else None


def list_review_rounds(catalog: Catalog, limit: int | None = None) -> list[dict[str, Any]]:
    """Review rounds, newest first, with their Argilla dataset and how far they got (items, pushed, responses)."""
    return catalog.query(
        """
        SELECT r.round_name, r.dataset_name, r.argilla_workspace, r.argilla_dataset_id, r.api_url, r.scan_id,
               r.parent_round, r.checks, r.min_submitted, r.policy, r.created_at,
               (SELECT count(*) FROM review_items i WHERE i.round_name = r.round_name) AS items,
               (SELECT count(pushed_at) FROM review_items i WHERE i.round_name = r.round_name) AS pushed,
               (SELECT count(*) FROM review_responses s WHERE s.round_name = r.round_name) AS responses
        FROM review_rounds r ORDER BY r.created_at DESC, r.round_name LIMIT ?
        """,
        [_limit(limit)],
    )


def recent_jobs(ws: Workspace, limit: int | None = None) -> list[dict[str, Any]]:
    """The newest jobs with their progress (no log)."""
    from refinery.service.jobs import list_jobs

    return [job_view(ws, job, log_lines=0) for job in list_jobs(ws.catalog, limit=_limit(limit))]


def job_detail(ws: Workspace, job_id: str) -> dict[str, Any]:
    """One job with its progress and log tail (``JobNotFound``, an ``InputError``, for an unknown id)."""
    from refinery.service.jobs import get_job

    return job_view(ws, get_job(ws.catalog, job_id))


def job_view(ws: Workspace, job: Any, log_lines: int = LOG_TAIL_LINES) -> dict[str, Any]:
    """A job's row with ``progress`` (its ``progress.json``, or None) and ``log_tail`` (the last lines of its log,
    as one text), read by the same functions as the jobs API (:mod:`refinery.service.job_worker`)."""
    from dataclasses import asdict

    from refinery.service.job_worker import job_files, log_tail, read_progress

    log, progress = job_files(ws.root, job.job_id)
    view = asdict(job)
    view.pop("pid", None)
    view["progress"] = read_progress(progress)
    view["log_tail"] = "\n".join(log_tail(log, log_lines)) if log_lines else None
    return view


def _limit(limit: int | None) -> int:
    return 1_000_000_000 if limit is None else max(0, limit)
