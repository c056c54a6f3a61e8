"""The request and response models of the read routes: what the OpenAPI document promises (and schemathesis
checks against the running server). Rows keep the catalog's column names (docs/CATALOG.md); timestamps are ISO 8601
text in UTC (``...Z``; the catalog stores them in UTC without a zone)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


#: A catalog timestamp (naive, in UTC) as RFC 3339 text with its zone: ``2026-01-02T03:04:05.123456Z``.
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


class ErrorOut(BaseModel):
    """Every error: one line saying what went wrong."""

    detail: str


class HealthOut(BaseModel):
    status: Literal["ok"]
    workspace: str
    catalog_version: int = Field(description="The newest migration applied to the catalog.")


class SnapshotRow(BaseModel):
    snapshot_id: str
    created_at: UtcDateTime
    train: int
    validation: int
    test: int
    parent_id: str | None
    scan_id: str | None
    path: str
    manifest_sha256: str


class SnapshotsOut(BaseModel):
    snapshots: list[SnapshotRow]


class SnapshotOut(BaseModel):
    snapshot: SnapshotRow
    policy: dict[str, Any] = Field(description="The snapshot policy it was made with.")
    manifest: dict[str, Any] = Field(description="The manifest as stored (files and their SHA-256); not re-hashed.")
    check_effects: list[dict[str, Any]] = Field(description="Per check: records dropped and changed.")


class ScanRow(BaseModel):
    scan_id: str
    status: str
    records: int
    started_at: UtcDateTime
    finished_at: UtcDateTime | None
    config: dict[str, Any]
    summary: dict[str, Any] = Field(description="Per check: what it found (the scan's --json output).")


class ScansOut(BaseModel):
    scans: list[ScanRow]


class AdapterRow(BaseModel):
    """A row of the ``registry`` view: an adapter, its latest verdict and its place in the registry."""

    model_config = ConfigDict(extra="allow")

    adapter_id: str
    status: str = Field(description="promoted, retired, passed, failed or unevaluated")
    is_current: bool
    promoted_at: UtcDateTime | None
    verdict: str | None
    eval_id: str | None
    metric: str | None
    adapter_score: float | None
    ci_low: float | None
    ci_high: float | None
    eval_set: str | None
    evaluated_at: UtcDateTime | None
    snapshot_id: str
    base_model_id: str
    created_at: UtcDateTime


class AdaptersOut(BaseModel):
    adapters: list[AdapterRow]


class PromotionOut(BaseModel):
    event_id: str
    seq: int
    adapter_id: str
    action: str
    previous_adapter_id: str | None
    eval_id: str | None
    reason: str | None
    actor: str
    created_at: UtcDateTime


class AdapterOut(BaseModel):
    adapter: AdapterRow
    evals: list[EvalRow]
    promotions: list[PromotionOut] = Field(description="Events that made it current or replaced it, oldest first.")


class RegistryOut(BaseModel):
    current: PromotionOut | None
    adapters: list[AdapterRow]
    history: list[PromotionOut]


class EvalRow(BaseModel):
    """A row of the ``eval_verdicts`` view: the verdict of an eval run and its evidence."""

    model_config = ConfigDict(extra="allow")

    eval_id: str
    adapter_id: str
    snapshot_id: str
    eval_set: str
    metric: str
    adapter_score: float
    baselines: dict[str, Any]
    verdict: str
    ci_low: float | None
    ci_high: float | None
    reason: str
    created_at: UtcDateTime


class EvalsOut(BaseModel):
    evals: list[EvalRow]


class EvalOut(BaseModel):
    eval: EvalRow
    comparisons: list[dict[str, Any]] = Field(description="Rows of eval_comparisons: the adapter vs each baseline.")
    checks: dict[str, Any] | None = Field(description="The row of eval_checks: contamination and regression.")


class SqlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=100_000, description="Read-only SQL over the catalog.")
    limit: int = Field(1000, ge=0, le=100_000, description="Rows returned at most; the rest are counted.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Seconds before the query is stopped (400).")
    format: Literal["json", "arrow", "parquet"] = Field(
        "json",
        description="json: this object; arrow: an Arrow IPC stream; parquet: a Parquet file (the same rows; "
        "the headers X-Refinery-More-Rows and X-Refinery-More-Exact say what the limit left out).",
    )


class SqlOut(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="One object per row; BLOBs as hex, NaN and infinities as text.")
    row_count: int
    more: int = Field(description="Rows past the limit (counted up to 100,000).")
    more_exact: bool = Field(description="False: there are more than `more` rows past the limit.")


AdapterOut.model_rebuild()
