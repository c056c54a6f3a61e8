"""The read endpoints: health, snapshots, scans and their HTML quality report, adapters, evals, the registry,
lineage, and ``POST /sql``. Every one but ``/healthz`` needs a viewer token. They call the library functions the
CLI calls (``refinery.lineage``, ``eval.registry``, ``curation.report``, ``Catalog.analyst_query``); the listings
that the dashboard shows too live once in ``refinery.service.queries``.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response

from refinery.output import replace_blobs
from refinery.service import queries
from refinery.service.analyst_pool import AnalystPool
from refinery.service.auth import Principal, catalog_state, require_role
from refinery.service.models import (
    AdapterOut,
    AdapterRow,
    AdaptersOut,
    ErrorOut,
    EvalOut,
    EvalRow,
    EvalsOut,
    HealthOut,
    PromotionOut,
    RegistryOut,
    ScanRow,
    ScansOut,
    SnapshotOut,
    SnapshotRow,
    SnapshotsOut,
    SqlIn,
    SqlOut,
)
from refinery.workspace import Workspace
from schemas.progress import log

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or a token that is unknown or revoked."},
    403: {"model": ErrorOut, "description": "The token's role is below the route's."},
    503: {"model": ErrorOut, "description": "The catalog stayed locked by a writer; retry."},
}
MEDIA_TYPES = {"arrow": "application/vnd.apache.arrow.stream", "parquet": "application/vnd.apache.parquet"}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such id in the catalog."}}
_BAD: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut, "description": "A wrong input, in one line."}}

router = APIRouter(responses=_AUTH)


def _json_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }


viewer = require_role("viewer")

#: How an id in a path may look (the catalog's ids are a prefix and hex digits; refusing others early keeps odd
#: bytes out of queries and logs).
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"


def _ws(request: Request) -> Workspace:
    workspace: Workspace = request.app.state.workspace
    return workspace


def _not_found(what: str, identifier: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {what} {identifier} in the catalog")


def _json(value: str | None) -> Any:
    return json.loads(value) if value else {}


# ------------------------------------------------------------------------------------------ health


@router.get("/healthz", response_model=HealthOut, tags=["health"], responses={503: _AUTH[503]})
def healthz(request: Request) -> HealthOut:
    """Ready: the catalog opens for reading. No token needed."""
    ws = _ws(request)
    version = ws.catalog.scalar("SELECT max(version) FROM schema_migrations")
    return HealthOut(status="ok", workspace=str(ws.root), catalog_version=int(version or 0))


# ------------------------------------------------------------------------------------------ snapshots and scans


@router.get("/snapshots", response_model=SnapshotsOut, tags=["snapshots"])
def snapshots(
    request: Request,
    limit: int = Query(100, ge=1, le=10_000, description="Newest first, at most this many."),
    principal: Principal = Depends(viewer),
) -> SnapshotsOut:
    """Snapshots, newest first, with their split sizes, scan and parent."""
    rows = queries.list_snapshots(_ws(request).catalog, limit)
    return SnapshotsOut(snapshots=[SnapshotRow(**row) for row in rows])


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotOut, tags=["snapshots"], responses=_NOT_FOUND)
def snapshot(
    request: Request,
    snapshot_id: str = Path(pattern=ID_PATTERN),
    principal: Principal = Depends(viewer),
) -> SnapshotOut:
    """One snapshot: its row, policy, manifest (as stored; `refinery snapshot verify` re-hashes) and what each
    check changed in it."""
    from curation.snapshot import load_snapshot

    catalog = _ws(request).catalog
    found = queries.get_snapshot(catalog, snapshot_id)
    if found is None:
        raise _not_found("snapshot", snapshot_id)
    row, policy = found
    manifest = load_snapshot(catalog, snapshot_id, verify=False).manifest.model_dump(mode="json")
    effects = catalog.query("SELECT * FROM snapshot_check_effects WHERE snapshot_id = ?", [snapshot_id])
    return SnapshotOut(snapshot=SnapshotRow(**row), policy=policy, manifest=manifest, check_effects=effects)


@router.get("/scans", response_model=ScansOut, tags=["scans"])
def scans(
    request: Request,
    limit: int = Query(100, ge=1, le=10_000, description="Newest first, at most this many."),
    principal: Principal = Depends(viewer),
) -> ScansOut:
    """Scans, newest first: status, records, config and each check's summary."""
    return ScansOut(scans=[ScanRow(**row) for row in queries.list_scans(_ws(request).catalog, limit)])


@router.get("/scans/{scan_id}", response_model=ScanRow, tags=["scans"], responses=_NOT_FOUND)
def scan(request: Request, scan_id: str = Path(pattern=ID_PATTERN), principal: Principal = Depends(viewer)) -> ScanRow:
    """One scan: status, records, config and each check's summary."""
    row = queries.get_scan(_ws(request).catalog, scan_id)
    if row is None:
        raise _not_found("scan", scan_id)
    return ScanRow(**row)


@router.get(
    "/scans/{scan_id}/report",
    response_class=HTMLResponse,
    tags=["scans"],
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The report page."},
        # errors are JSON here too (FastAPI would document them as the route's text/html)
        **{code: _json_error(info["description"]) for code, info in {**_AUTH, **_NOT_FOUND, **_BAD}.items()},
    },
)
def scan_report(
    request: Request, scan_id: str = Path(pattern=ID_PATTERN), principal: Principal = Depends(viewer)
) -> HTMLResponse:
    """The self-contained HTML quality report of a complete scan (what `refinery report` writes), served from memory:
    while the catalog changes it may be one render (a few seconds) behind."""
    ws = _ws(request)
    if queries.get_scan(ws.catalog, scan_id) is None:
        raise _not_found("scan", scan_id)
    return HTMLResponse(_REPORTS.page(ws, scan_id))


class _ReportCache:
    """Rendered reports by scan. A page is fresh while the catalog files are unchanged (any write changes them).
    When they changed and a page exists, the request gets that page at once and one background thread renders the
    new one (a report is at most one render, about 2 s of CPU, behind the catalog: a scan job writing every few
    seconds does not make report requests wait); only a scan never rendered makes its requests wait, for one
    render they share."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: dict[str, tuple[tuple[int, ...], str]] = {}  # key -> (catalog state it was made at, page)
        self._first: dict[str, threading.Lock] = {}  # key -> held while its first page is made
        self._refreshing: set[str] = set()

    def page(self, ws: Workspace, scan_id: str) -> str:
        key = f"{ws.root}:{scan_id}"
        state = catalog_state(ws.root)
        with self._lock:
            cached = self._pages.get(key)
            if cached is not None:
                if cached[0] != state and key not in self._refreshing:
                    self._refreshing.add(key)
                    threading.Thread(target=self._refresh, args=(ws, scan_id, key), daemon=True).start()
                return cached[1]
            first = self._first.setdefault(key, threading.Lock())
        with first:
            with self._lock:
                cached = self._pages.get(key)
            if cached is not None:  # made while this request waited
                return cached[1]
            return self._render(ws, scan_id, key)

    def _render(self, ws: Workspace, scan_id: str, key: str) -> str:
        from curation.report.collect import collect_report
        from curation.report.page import render_html

        state = catalog_state(ws.root)  # taken before reading: a write meanwhile makes the next request refresh
        text = render_html(collect_report(ws.catalog, scan_id))
        with self._lock:
            self._pages[key] = (state, text)
            if len(self._pages) > 32:
                self._pages.pop(next(iter(self._pages)))
        return text

    def _refresh(self, ws: Workspace, scan_id: str, key: str) -> None:
        try:
            self._render(ws, scan_id, key)
        except Exception as exc:  # the stale page stays; the next request after a write tries again
            log(f"report of {scan_id}: refresh failed, serving the previous page: {exc}")
        finally:
            with self._lock:
                self._refreshing.discard(key)


_REPORTS = _ReportCache()


# ------------------------------------------------------------------------------------------ adapters and evals


@router.get("/adapters", response_model=AdaptersOut, tags=["adapters"])
def adapters(request: Request, principal: Principal = Depends(viewer)) -> AdaptersOut:
    """Every adapter with its status in the registry and its latest verdict, newest first."""
    return AdaptersOut(adapters=[AdapterRow(**row) for row in queries.list_adapters(_ws(request).catalog)])


@router.get("/adapters/{adapter_id}", response_model=AdapterOut, tags=["adapters"], responses=_NOT_FOUND)
def adapter(
    request: Request, adapter_id: str = Path(pattern=ID_PATTERN), principal: Principal = Depends(viewer)
) -> AdapterOut:
    """One adapter: its registry row, every eval run of it (newest first) and its promotion history."""
    from eval.registry import history

    catalog = _ws(request).catalog
    rows = [row for row in queries.list_adapters(catalog) if row["adapter_id"] == adapter_id]
    if not rows:
        raise _not_found("adapter", adapter_id)
    return AdapterOut(
        adapter=AdapterRow(**rows[0]),
        evals=[_eval_row(row) for row in queries.list_evals(catalog, adapter_id)],
        promotions=[PromotionOut(**_event(e)) for e in history(catalog, adapter_id)],
    )


@router.get("/evals", response_model=EvalsOut, tags=["evals"])
def evals(
    request: Request,
    adapter_id: str | None = Query(None, pattern=ID_PATTERN, description="Only the eval runs of this adapter."),
    limit: int = Query(100, ge=1, le=10_000, description="Newest first, at most this many."),
    principal: Principal = Depends(viewer),
) -> EvalsOut:
    """Eval runs with their verdict (pass or fail), score, confidence interval and reason, newest first."""
    rows = queries.list_evals(_ws(request).catalog, adapter_id, limit)
    return EvalsOut(evals=[_eval_row(row) for row in rows])


@router.get("/evals/{eval_id}", response_model=EvalOut, tags=["evals"], responses=_NOT_FOUND)
def eval_run(
    request: Request, eval_id: str = Path(pattern=ID_PATTERN), principal: Principal = Depends(viewer)
) -> EvalOut:
    """One eval run: its verdict with the evidence, the comparison with each baseline and the extra checks
    (contamination, regression on general prompts)."""
    found = queries.get_eval(_ws(request).catalog, eval_id)
    if found is None:
        raise _not_found("eval run", eval_id)
    row, comparisons, checks = found
    return EvalOut(eval=_eval_row(row), comparisons=comparisons, checks=checks)


def _eval_row(row: dict[str, Any]) -> EvalRow:
    row = dict(row)
    row["baselines"] = _json(row.pop("baselines_json", None))
    return EvalRow(**row)


def _event(event: Any) -> dict[str, Any]:
    payload: dict[str, Any] = event.to_json()
    payload.pop("noop", None)
    return payload


@router.get("/registry", response_model=RegistryOut, tags=["adapters"])
def registry(request: Request, principal: Principal = Depends(viewer)) -> RegistryOut:
    """The adapter in service, every adapter with its status, and every promotion and rollback (oldest first)."""
    from eval.registry import current, history, list_registry

    catalog = _ws(request).catalog
    now = current(catalog)
    return RegistryOut(
        current=None if now is None else PromotionOut(**_event(now)),
        adapters=[AdapterRow(**row) for row in list_registry(catalog)],
        history=[PromotionOut(**_event(e)) for e in history(catalog)],
    )


# ------------------------------------------------------------------------------------------ lineage


@router.get(
    "/lineage/{identifier}",
    response_model=dict[str, Any],
    tags=["lineage"],
    responses={**_NOT_FOUND, 200: {"description": "A tree of nodes, each with kind, id, facts and parents."}},
)
def lineage(
    request: Request, identifier: str = Path(pattern=ID_PATTERN), principal: Principal = Depends(viewer)
) -> Any:
    """The chain from any id (eval_, adp_, snap_, scan_, batch_, rec_, promo_) back to source files and rows:
    what `refinery lineage ID --json` prints."""
    from refinery.lineage import LineageError
    from refinery.lineage import lineage as build

    try:
        tree = build(_ws(request).catalog, identifier)
    except LineageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=" ".join(str(exc).split())) from exc
    return JSONResponse(_plain_json(tree))


# ------------------------------------------------------------------------------------------ SQL


@router.post(
    "/sql",
    response_model=SqlOut,
    tags=["sql"],
    responses={
        **_BAD,
        200: {
            "description": "The rows: JSON, an Arrow IPC stream or a Parquet file (the `format` field).",
            "content": {media: {} for media in MEDIA_TYPES.values()},
        },
    },
)
def sql(body: SqlIn, request: Request, principal: Principal = Depends(viewer)) -> Response:
    """Read-only SQL over the catalog (its tables, views and macros: docs/CATALOG.md) and nothing else: no file,
    network or extension access, no setting changed (`Catalog.analyst_query`, as `refinery sql`, run in a worker
    process so that a long query never holds up the server's other reads). At most
    `limit` rows come back; the query is stopped after `timeout_s` seconds. Errors are 400 with DuckDB's message."""
    pool: AnalystPool = request.app.state.analyst_pool  # Catalog.analyst_query, in a worker process
    result = pool.query(_ws(request).catalog, body.sql, limit=body.limit, timeout=body.timeout_s)
    if body.format == "json":
        rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        payload = {
            "columns": result.columns,
            "rows": rows,
            "row_count": len(rows),
            "more": result.more,
            "more_exact": result.more_exact,
        }
        return JSONResponse(_plain_json(payload))
    headers = {"X-Refinery-More-Rows": str(result.more), "X-Refinery-More-Exact": str(result.more_exact).lower()}
    table = _arrow_table(result.columns, result.rows)
    return Response(_arrow_bytes(table, body.format), media_type=MEDIA_TYPES[body.format], headers=headers)


def _plain_json(value: Any) -> Any:
    """``value`` as plain JSON types: BLOBs as hex, NaN and infinities as text, anything else JSON lacks (dates,
    decimals, UUIDs, intervals) as its text."""
    text = json.dumps(_finite(replace_blobs(value, bytes.hex)), default=str, ensure_ascii=False, allow_nan=False)
    return json.loads(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(key) if not isinstance(key, str) else key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _arrow_table(columns: list[str], rows: list[tuple[Any, ...]]) -> Any:
    """The rows as an Arrow table, each column typed from its values; a column Arrow cannot type (mixed values,
    maps with odd keys) becomes text."""
    import pyarrow as pa

    arrays = []
    for i, _ in enumerate(columns):
        values = [row[i] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, TypeError, ValueError):
            arrays.append(pa.array([None if v is None else json.dumps(_plain_json(v)) for v in values], pa.string()))
    return pa.table(arrays, names=columns) if columns else pa.table({})


def _arrow_bytes(table: Any, fmt: str) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    if fmt == "arrow":
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
