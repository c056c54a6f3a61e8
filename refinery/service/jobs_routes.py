"""The job endpoints of `refinery serve`: submit, list, show and cancel jobs, and upload files for ingest jobs.

``POST /jobs`` (engineer; admin for promote, rollback and forget) queues ``{kind, params}`` and answers 202 with the job
(422 also for parameters the server will not run: a path outside its folders, a missing upload);
``GET /jobs`` and ``GET /jobs/{job_id}`` (viewer) show jobs with their progress, log tail, result and error;
``DELETE /jobs/{job_id}`` (engineer) cancels one. ``POST /uploads`` (engineer, multipart) stores a file under
``<workspace>/uploads/`` for an ingest job. The jobs themselves live in ``jobs.py`` and run in ``job_worker.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, UploadFile, status
from pydantic import BaseModel, ConfigDict, Field

from refinery.service.auth import Principal, require_role
from refinery.service.job_worker import JobDispatcher, job_files, log_tail, read_progress
from refinery.service.jobs import (
    UPLOADS_FOLDER,
    EvalParams,
    ForgetParams,
    IngestParams,
    Job,
    JobKind,
    JobNotFound,
    JobParams,
    JobParamsError,
    JobState,
    PromoteParams,
    ReviewPullParams,
    ReviewPushParams,
    RollbackParams,
    ScanParams,
    SnapshotParams,
    TrainParams,
    cancel_queued,
    get_job,
    list_jobs,
    submit,
)
from refinery.service.models import ErrorOut, UtcDateTime
from refinery.service.tokens import role_rank
from refinery.workspace import Workspace

router = APIRouter(tags=["jobs"])

#: The largest upload ``POST /uploads`` keeps (``app.state.max_upload_bytes`` overrides it).
MAX_UPLOAD_BYTES = 1 << 30
LOG_TAIL_LINES = 50

# ------------------------------------------------------------------------------------------ request models


class IngestJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ingest"]
    params: IngestParams


class ScanJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["scan"]
    params: ScanParams = Field(default_factory=ScanParams)


class SnapshotJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["snapshot"]
    params: SnapshotParams = Field(default_factory=SnapshotParams)


class TrainJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["train"]
    params: TrainParams


class EvalJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["eval"]
    params: EvalParams


class ReviewPushJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["review_push"]
    params: ReviewPushParams = Field(default_factory=ReviewPushParams)


class ReviewPullJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["review_pull"]
    params: ReviewPullParams = Field(default_factory=ReviewPullParams)


class PromoteJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["promote"]
    params: PromoteParams


class RollbackJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["rollback"]
    params: RollbackParams = Field(default_factory=RollbackParams)


class ForgetJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["forget"]
    params: ForgetParams


JobIn = Annotated[
    IngestJobIn
    | ScanJobIn
    | SnapshotJobIn
    | TrainJobIn
    | EvalJobIn
    | ReviewPushJobIn
    | ReviewPullJobIn
    | PromoteJobIn
    | RollbackJobIn
    | ForgetJobIn,
    Field(discriminator="kind"),
]

# ------------------------------------------------------------------------------------------ response models


class ProgressOut(BaseModel):
    """The current progress bar of a running job (``schemas.progress``'s REFINERY_PROGRESS_FILE)."""

    description: str
    done: float
    total: float | None = None
    unit: str | None = None
    final: bool = False
    updated_at: float | None = None


class JobSummaryOut(BaseModel):
    job_id: str
    kind: JobKind
    state: JobState
    params: dict[str, Any]
    created_by: str
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    exit_code: int | None
    error: str | None
    progress: ProgressOut | None


class JobOut(JobSummaryOut):
    """A job with its result (the CLI's ``--json`` output) and the last lines of its log."""

    result: dict[str, Any] | None
    log_tail: list[str]


class JobListOut(BaseModel):
    jobs: list[JobSummaryOut]


class UploadOut(BaseModel):
    """A stored upload: give ``name`` in an ingest job's ``uploads``."""

    name: str
    path: str
    sha256: str
    size: int


# ------------------------------------------------------------------------------------------ helpers


def _workspace(request: Request) -> Workspace:
    ws: Workspace = request.app.state.workspace
    return ws


def _progress(ws: Workspace, job: Job) -> ProgressOut | None:
    if job.state not in ("running", "succeeded"):
        return None
    found = read_progress(job_files(ws.root, job.job_id)[1])
    if found is None:
        return None
    with contextlib.suppress(ValueError):
        return ProgressOut.model_validate(found)
    return None


def _summary(ws: Workspace, job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "state": job.state,
        "params": job.params,
        "created_by": job.created_by,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "error": job.error,
        "progress": _progress(ws, job),
    }


def _job_out(ws: Workspace, job: Job) -> JobOut:
    tail = log_tail(job_files(ws.root, job.job_id)[0], LOG_TAIL_LINES)
    return JobOut(**_summary(ws, job), result=job.result, log_tail=tail)


def _find(ws: Workspace, job_id: str) -> Job:
    try:
        return get_job(ws.catalog, job_id)
    except JobNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No job with that id."}}

# ------------------------------------------------------------------------------------------ routes


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
)
def submit_job(request: Request, body: JobIn, principal: Principal = Depends(require_role("engineer"))) -> JobOut:
    """Queue a job (engineer; promote, rollback and forget need admin). It runs when the jobs before it have ended."""
    params: JobParams = body.params
    if role_rank(principal.role) < role_rank(params.min_role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"a {body.kind} job needs the {params.min_role} role; the token of {principal.name!r} has "
            f"{principal.role}",
        )
    ws = _workspace(request)
    try:
        job = submit(ws.catalog, ws.root, request.app.state.data_dirs, body.kind, params, principal.name)
    except JobParamsError as exc:  # shaped like FastAPI's own validation errors: one schema for every 422
        problem = {"loc": ["body", "params"], "msg": str(exc), "type": "value_error"}
        raise HTTPException(422, detail=[problem]) from None
    dispatcher: JobDispatcher | None = request.app.state.dispatcher
    if dispatcher is not None:
        dispatcher.wake()
    return _job_out(ws, job)


@router.get("/jobs", response_model=JobListOut)
def jobs_list(
    request: Request,
    state: JobState | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    principal: Principal = Depends(require_role("viewer")),
) -> JobListOut:
    """The newest jobs first (viewer), optionally of one state or kind."""
    ws = _workspace(request)
    jobs = list_jobs(ws.catalog, state, kind, limit)
    return JobListOut(jobs=[JobSummaryOut(**_summary(ws, j)) for j in jobs])


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_NOT_FOUND)
def job_show(request: Request, job_id: str, principal: Principal = Depends(require_role("viewer"))) -> JobOut:
    """A job's state, progress, log tail, result (the CLI's --json output) and error (viewer)."""
    ws = _workspace(request)
    return _job_out(ws, _find(ws, job_id))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={
        **_NOT_FOUND,
        202: {"model": JobOut, "description": "A running job: it is being stopped (poll until 'cancelled')."},
        409: {"model": ErrorOut, "description": "The job has already ended."},
    },
)
def job_cancel(
    request: Request, response: Response, job_id: str, principal: Principal = Depends(require_role("engineer"))
) -> JobOut:
    """Cancel a job (engineer): a queued one at once (200), a running one is stopped (202: SIGTERM, then SIGKILL
    after a grace period; it ends 'cancelled')."""
    ws = _workspace(request)
    job = _find(ws, job_id)
    if job.finished:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} has already ended ({job.state})")
    dispatcher: JobDispatcher | None = request.app.state.dispatcher
    if dispatcher is not None:
        job = dispatcher.cancel(job_id, principal.name)
    elif cancel_queued(ws.catalog, job_id, principal.name):
        job = get_job(ws.catalog, job_id)
    if job.state == "running":
        response.status_code = status.HTTP_202_ACCEPTED
    elif not job.finished:  # queued again? never: but say so rather than pretend
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} could not be cancelled ({job.state})")
    return _job_out(ws, job)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(filename: str | None) -> str:
    """A file name that is safe in a folder: the base name, other characters as '_', no leading dot, at most 100
    characters (the suffix kept: ingest reads the format from it)."""
    base = _UNSAFE.sub("_", os.path.basename((filename or "").replace("\\", "/"))).lstrip(".") or "upload"
    stem, dot, suffix = base.rpartition(".")
    if dot and len(suffix) <= 16:
        return stem[: 99 - len(suffix)] + "." + suffix if stem else base[:100]
    return base[:100]


@router.post(
    "/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    responses={413: {"model": ErrorOut, "description": "The file is larger than the server accepts."}},
)
def upload(request: Request, file: UploadFile, principal: Principal = Depends(require_role("engineer"))) -> UploadOut:
    """Store a file for an ingest job (engineer) as ``<workspace>/uploads/<sha256 prefix>-<safe name>``; the same
    content under the same name is stored once."""
    limit = int(getattr(request.app.state, "max_upload_bytes", MAX_UPLOAD_BYTES))
    folder = _workspace(request).root / UPLOADS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".incoming-{secrets.token_hex(8)}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "wb") as out:
            while chunk := file.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        413,
                        detail=f"the upload is larger than this server's limit of {limit:,} bytes",
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        name = f"{sha[:16]}-{safe_name(file.filename)}"
        os.replace(partial, folder / name)
    finally:
        partial.unlink(missing_ok=True)
    return UploadOut(name=name, path=str(folder / name), sha256=sha, size=size)
