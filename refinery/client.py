"""`refinery.client`: a Python client for `refinery serve` (docs/SERVICE.md), one method per endpoint.

    from refinery.client import RefineryClient

    with RefineryClient("http://127.0.0.1:8000", token) as client:
        rows = client.sql("SELECT check_name, flagged FROM check_summary", limit=100)
        job = client.wait(client.submit("scan", checks=["exact"]), timeout=600)

Every HTTP error becomes one :class:`RefineryClientError` with the status and the server's own one-line message
(``client.snapshot('snap_x')`` -> ``GET /snapshots/snap_x: 404 no snapshot snap_x in the catalog``); a job that ends
failed or cancelled makes :meth:`RefineryClient.wait` raise :class:`RefineryJobError`. The transport is httpx
(``pip install 'refinery[service]'``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx

if TYPE_CHECKING:
    import pyarrow as pa

#: Job states after which nothing changes any more.
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
SqlFormat = Literal["json", "arrow", "parquet"]


class RefineryClientError(Exception):
    """A request failed: ``status`` is the HTTP status (None when the server could not be reached or the job
    failed), ``message`` the server's own message; ``str()`` is one line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RefineryJobError(RefineryClientError):
    """A waited-for job ended failed or cancelled; ``job`` is its last state from ``GET /jobs/{id}``."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        error = _one_line(str(job.get("error") or "no error message"))
        super().__init__(f"job {job.get('job_id')} ({job.get('kind')}) {job.get('state')}: {error}")
        self.job = dict(job)


class RefineryTimeoutError(RefineryClientError):
    """A job did not end within the time :meth:`RefineryClient.wait` was given."""


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_message(response: httpx.Response) -> str:
    """The server's message: FastAPI's ``detail`` (a text, or a validation error's list of problems), else the
    body's first characters, else the reason phrase."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text) or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # request validation: [{"loc": [...], "msg": "..."}]
        parts = []
        for problem in detail:
            if isinstance(problem, dict):
                where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
                parts.append(f"{where}: {problem.get('msg', '')}" if where else str(problem.get("msg", "")))
            else:
                parts.append(str(problem))
        return _one_line("; ".join(parts))
    return _one_line(detail if isinstance(detail, str) else str(detail))


class RefineryClient:
    """The service at ``base_url`` with a bearer ``token`` (``refinery token create``). ``timeout`` is the
    seconds one HTTP request may take (a SQL query's own limit is ``timeout_s``)."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RefineryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise RefineryClientError(f"{method} {path}: no answer from {self.base_url} in time ({exc})") from exc
        except httpx.HTTPError as exc:
            raise RefineryClientError(f"{method} {path}: cannot reach {self.base_url} ({exc})") from exc
        if response.is_error:
            raise RefineryClientError(
                f"{method} {path}: {response.status_code} {_server_message(response)}", response.status_code
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise RefineryClientError(
                f"{method} {path}: the server answered {response.status_code} without JSON", response.status_code
            ) from exc

    # -- reads ---------------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no token needed): the server is up and its catalog readable."""
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def snapshots(self) -> Any:
        """``GET /snapshots``: every snapshot with its split sizes."""
        return self._json("GET", "/snapshots")

    def snapshot(self, snapshot_id: str) -> Any:
        """``GET /snapshots/{id}``: one snapshot's manifest."""
        return self._json("GET", f"/snapshots/{snapshot_id}")

    def adapters(self) -> Any:
        """``GET /adapters``: every adapter."""
        return self._json("GET", "/adapters")

    def adapter(self, adapter_id: str) -> Any:
        """``GET /adapters/{id}``: one adapter's registry row, eval runs and promotion history."""
        return self._json("GET", f"/adapters/{adapter_id}")

    def evals(self, adapter_id: str | None = None) -> Any:
        """``GET /evals``: eval runs with their verdicts, newest first (only ``adapter_id``'s if given)."""
        return self._json("GET", "/evals", params={"adapter_id": adapter_id} if adapter_id else None)

    def eval_run(self, eval_id: str) -> Any:
        """``GET /evals/{id}``: one eval run's verdict and evidence."""
        return self._json("GET", f"/evals/{eval_id}")

    def registry(self) -> Any:
        """``GET /registry``: the current adapter and every adapter's status."""
        return self._json("GET", "/registry")

    def scans(self) -> Any:
        """``GET /scans``: scans, newest first, with each check's summary."""
        return self._json("GET", "/scans")

    def scan(self, scan_id: str) -> Any:
        """``GET /scans/{id}``: one scan."""
        return self._json("GET", f"/scans/{scan_id}")

    def lineage(self, artifact_id: str) -> dict[str, Any]:
        """``GET /lineage/{id}``: the lineage tree of a record, batch, scan, snapshot, adapter, eval or promotion
        (what ``refinery lineage ID --json`` prints)."""
        result: dict[str, Any] = self._json("GET", f"/lineage/{artifact_id}")
        return result

    def report_html(self, scan_id: str) -> str:
        """``GET /scans/{id}/report``: the scan's HTML quality report (one self-contained page)."""
        return self._request("GET", f"/scans/{scan_id}/report").text

    @overload
    def sql(
        self, query: str, *, limit: int | None = ..., timeout_s: float | None = ..., format: Literal["json"] = ...
    ) -> list[dict[str, Any]]: ...

    @overload
    def sql(
        self,
        query: str,
        *,
        limit: int | None = ...,
        timeout_s: float | None = ...,
        format: Literal["arrow", "parquet"],
    ) -> pa.Table: ...

    def sql(
        self, query: str, *, limit: int | None = None, timeout_s: float | None = None, format: SqlFormat = "json"
    ) -> list[dict[str, Any]] | pa.Table:
        """``POST /sql``: read-only SQL over the catalog. ``format="json"`` gives a list of row dicts;
        ``"arrow"`` (an Arrow IPC stream) and ``"parquet"`` give a ``pyarrow.Table``."""
        body: dict[str, Any] = {"sql": query, "format": format}
        if limit is not None:
            body["limit"] = limit
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        response = self._request("POST", "/sql", json=body)
        if format == "json":
            payload = response.json()
            return _rows(payload)
        import pyarrow as pa

        if format == "arrow":
            with pa.ipc.open_stream(pa.py_buffer(response.content)) as reader:
                return reader.read_all()
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(response.content))

    # -- jobs ----------------------------------------------------------------------------------------------------

    def submit(self, kind: str, **params: Any) -> str:
        """``POST /jobs``: queue a job (``scan``, ``snapshot``, ``ingest``, ``train``, ``eval``, ``review_push``,
        ``review_pull``, ``promote``, ``rollback``, ``forget``) with its parameters; its id."""
        payload = self._json("POST", "/jobs", json={"kind": kind, "params": params})
        return str(payload["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}``: state, progress, log tail, result (the CLI's ``--json`` output) and error."""
        result: dict[str, Any] = self._json("GET", f"/jobs/{job_id}")
        return result

    def jobs(self, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """``GET /jobs``: recent jobs, newest first; only those in ``state`` or of ``kind`` if given."""
        params = {"limit": limit, **({"state": state} if state else {}), **({"kind": kind} if kind else {})}
        payload = self._json("GET", "/jobs", params=params)
        jobs: list[dict[str, Any]] = payload["jobs"] if isinstance(payload, dict) else payload
        return jobs

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: cancel a queued or running job; its state afterwards."""
        result: dict[str, Any] = self._json("DELETE", f"/jobs/{job_id}")
        return result

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.5, check: bool = True) -> dict[str, Any]:
        """Poll ``GET /jobs/{id}`` until the job ends; its final state. With ``check`` a failed or cancelled job
        raises :class:`RefineryJobError`; after ``timeout`` seconds :class:`RefineryTimeoutError`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("state") in FINAL_STATES:
                if check and job["state"] != "succeeded":
                    raise RefineryJobError(job)
                return job
            if time.monotonic() >= deadline:
                raise RefineryTimeoutError(f"job {job_id} still {job.get('state')} after {timeout:g} s")
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    def upload(self, path: Path | str) -> dict[str, Any]:
        """``POST /uploads``: send a local file for an ``ingest`` job; the server's answer names where it is."""
        path = Path(path)
        with path.open("rb") as handle:
            result: dict[str, Any] = self._json("POST", "/uploads", files={"file": (path.name, handle)})
        return result


def _rows(payload: Any) -> list[dict[str, Any]]:
    """JSON rows: the server's ``rows`` (objects, or lists matched with ``columns``), or a plain list."""
    if isinstance(payload, list):
        return payload
    rows = payload.get("rows", [])
    columns = payload.get("columns")
    if rows and not isinstance(rows[0], dict) and columns:
        names = [c["name"] if isinstance(c, dict) else c for c in columns]
        return [dict(zip(names, row, strict=True)) for row in rows]
    result: list[dict[str, Any]] = rows
    return result
