"""Persisted jobs of `refinery serve`: the kinds, their parameters, and the rows of the catalog table ``jobs``.

A job is one run of a CLI command (``refinery <command> ... --json``) that the server's dispatcher
(``job_worker.py``) starts in a child process, one at a time. Each kind's parameters are a pydantic model that
maps to that command's arguments (:meth:`JobParams.arguments`), so the HTTP layer validates and the CLI does the
work: a job's result is the command's ``--json`` output and nothing is computed twice. Options are passed as
``--option=value`` and positional arguments after ``--``, so no value can be read as an option.

Server-side files a job reads (ingest inputs, config and policy files, a base-model folder) must lie under one
of the server's ``--data-dir`` folders or ``<workspace>/uploads`` (where ``POST /uploads`` stores files);
anything else is a :class:`JobParamsError` (HTTP 422). Inline configs and policies are written into the job's
folder, ``<workspace>/jobs/<job_id>/``, which also holds its log (``log.txt``), progress (``progress.json``) and
raw stdout (``stdout.json``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.catalog import Catalog, utcnow
from schemas.errors import InputError

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
#: States a job never leaves.
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})
JOBS_FOLDER = "jobs"
UPLOADS_FOLDER = "uploads"
#: What a job that was running when the server stopped is failed with (at shutdown or at the next start).
SERVER_STOPPED = "the server stopped while the job ran; nothing it left half-done is kept: submit it again"

_COLUMNS = (
    "job_id, kind, params_json, state, created_by, created_at, started_at, finished_at, pid, exit_code, "
    "result_json, error"
)

#: An id or name handed to the CLI: no control characters, bounded length.
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
ServerPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$")]
#: An inline config or policy: a JSON object, or YAML text.
InlineConfig = dict[str, Any] | Annotated[str, Field(max_length=1_000_000)]


class JobParamsError(InputError):
    """Job parameters the server will not run: a path outside the allowed folders, a missing file (HTTP 422)."""


class JobNotFound(InputError):
    """No job with that id (HTTP 404)."""


@dataclass(frozen=True)
class JobFiles:
    """Where a job may read server-side files, and its own folder (for inline configs)."""

    root: Path
    data_dirs: tuple[Path, ...]
    folder: Path

    @property
    def allowed(self) -> tuple[Path, ...]:
        return (*self.data_dirs, self.root / UPLOADS_FOLDER)

    def server_path(self, given: str, what: str) -> str:
        """``given`` resolved (links followed); it must exist under an allowed folder."""
        path = Path(given).expanduser()
        if not path.is_absolute():
            raise JobParamsError(f"{what} {given!r}: give an absolute path on the server")
        try:
            resolved = path.resolve()
            inside = any(resolved.is_relative_to(folder.resolve()) for folder in self.allowed)
            exists = inside and resolved.exists()
        except (OSError, RuntimeError) as exc:  # a name too long, a loop of links
            raise JobParamsError(f"{what} {given!r} cannot be read: {exc}") from None
        if not inside:
            places = ", ".join(str(f) for f in self.allowed)
            raise JobParamsError(f"{what} {given} is outside the folders this server reads from ({places})")
        if not exists:
            raise JobParamsError(f"{what} {given} does not exist")
        return str(resolved)

    def upload(self, name: str) -> str:
        """The path of an upload by the name ``POST /uploads`` returned."""
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise JobParamsError(f"upload {name!r}: give the name POST /uploads returned, not a path")
        path = self.root / UPLOADS_FOLDER / name
        try:
            found = path.is_file()
        except OSError:  # a name too long
            found = False
        if not found:
            raise JobParamsError(f"upload {name!r} does not exist (upload the file with POST /uploads first)")
        return str(path)

    def config(self, inline: InlineConfig | None, path: str | None, stem: str, what: str) -> str | None:
        """A config file for the CLI: an inline one written into the job's folder, or an allowed server path."""
        if inline is not None and path is not None:
            raise JobParamsError(f"give {what} inline or as a path, not both")
        if path is not None:
            return self.server_path(path, what)
        if inline is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / (f"{stem}.json" if isinstance(inline, dict) else f"{stem}.yaml")
        target.write_text(json.dumps(inline) if isinstance(inline, dict) else inline, encoding="utf-8")
        return str(target)


def _option(name: str, value: object) -> list[str]:
    """``--name=value`` (nothing for None; a bare ``--name`` for True, nothing for False)."""
    if value is None or value is False:
        return []
    if value is True:
        return [f"--{name}"]
    return [f"--{name}={value}"]


class JobParams(BaseModel):
    """Parameters of one job kind; :meth:`arguments` is the CLI command line after ``refinery``."""

    model_config = ConfigDict(extra="forbid")
    #: The lowest role that may submit this kind.
    min_role: ClassVar[str] = "engineer"

    def arguments(self, files: JobFiles) -> list[str]:
        raise NotImplementedError


class IngestParams(JobParams):
    """``refinery ingest``: files uploaded with ``POST /uploads`` (by name) and/or server-side paths."""

    uploads: list[Name] = Field(default_factory=list, description="Names returned by POST /uploads.")
    paths: list[ServerPath] = Field(
        default_factory=list, description="Absolute server paths under a --data-dir folder or <workspace>/uploads."
    )
    format: Literal[
        "auto", "alpaca", "sharegpt", "openai", "oasst", "selfinstruct", "csv", "tsv", "json", "jsonl", "parquet", "hf"
    ] = "auto"
    map: dict[Name, Name] = Field(default_factory=dict, description="FIELD -> ROLE (user, assistant, label, ...).")
    template: Name | None = None
    name: Name | None = Field(None, description="Batch name.")
    eval_set: Name | None = Field(None, description="Register the rows as this eval set, not training data.")
    max_bad_ratio: float | None = Field(None, ge=0.0, le=1.0)

    def arguments(self, files: JobFiles) -> list[str]:
        inputs = [files.upload(n) for n in self.uploads] + [files.server_path(p, "path") for p in self.paths]
        if not inputs:
            raise JobParamsError("an ingest job needs at least one of uploads or paths")
        mapping = [a for field, role in self.map.items() for a in _option("map", f"{field}={role}")]
        return [
            "ingest",
            *_option("format", self.format),
            *mapping,
            *_option("template", self.template),
            *_option("name", self.name),
            *_option("eval-set", self.eval_set),
            *_option("max-bad-ratio", self.max_bad_ratio),
            "--json",
            "--",
            *inputs,
        ]


class ScanParams(JobParams):
    """``refinery scan``."""

    checks: list[Name] | None = Field(None, description="Checks to run (default: the default set).")
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    scope: Literal["pair", "prompt", "response"] | None = None
    ngram: int | None = Field(None, ge=1, le=64)
    num_perm: int | None = Field(None, ge=8, le=4096)
    config: InlineConfig | None = Field(None, description="Check name -> its options (JSON object or YAML text).")
    config_path: ServerPath | None = None
    executor: Literal["local", "ray"] | None = Field(None, description="Where the heavy stages run (docs/SCALE.md).")
    ray_address: str | None = Field(
        None, pattern=r"^(auto|(ray://)?[A-Za-z0-9.\-]+:[0-9]{1,5})$", description="auto, HOST:PORT or ray://HOST:PORT."
    )

    def arguments(self, files: JobFiles) -> list[str]:
        return [
            "scan",
            *_option("executor", self.executor),
            *_option("ray-address", self.ray_address),
            *_option("checks", ",".join(self.checks) if self.checks else None),
            *_option("threshold", self.threshold),
            *_option("scope", self.scope),
            *_option("ngram", self.ngram),
            *_option("num-perm", self.num_perm),
            *_option("config", files.config(self.config, self.config_path, "scan-config", "config")),
            "--json",
        ]


class SnapshotParams(JobParams):
    """``refinery snapshot create``."""

    policy: InlineConfig | None = Field(None, description="A snapshot policy (JSON object or YAML text).")
    policy_path: ServerPath | None = None
    parent: Name | None = Field(None, description="The snapshot this one succeeds.")

    def arguments(self, files: JobFiles) -> list[str]:
        policy = files.config(self.policy, self.policy_path, "policy", "policy")
        return ["snapshot", "create", *_option("policy", policy), *_option("parent", self.parent), "--json"]


class TrainParams(JobParams):
    """``refinery train``."""

    snapshot: Name
    base_model: Name | None = Field(None, description="'smollm2' or an absolute model folder under a data dir.")
    config: InlineConfig | None = None
    config_path: ServerPath | None = None
    max_steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)

    def arguments(self, files: JobFiles) -> list[str]:
        base = self.base_model
        if base is not None and ("/" in base or "\\" in base):
            base = files.server_path(base, "base_model")
        return [
            "train",
            *_option("snapshot", self.snapshot),
            *_option("base-model", base),
            *_option("config", files.config(self.config, self.config_path, "train-config", "config")),
            *_option("max-steps", self.max_steps),
            *_option("epochs", self.epochs),
            "--json",
        ]


class EvalParams(JobParams):
    """``refinery eval`` (a 'fail' verdict ends the job as failed, with the CLI's result kept)."""

    adapter: Name
    eval_set: Name | None = None
    limit: int | None = Field(None, ge=1)
    config: InlineConfig | None = None
    config_path: ServerPath | None = None

    def arguments(self, files: JobFiles) -> list[str]:
        return [
            "eval",
            *_option("adapter", self.adapter),
            *_option("eval-set", self.eval_set),
            *_option("limit", self.limit),
            *_option("config", files.config(self.config, self.config_path, "eval-config", "config")),
            "--json",
        ]


class ReviewPushParams(JobParams):
    """``refinery review push`` to the workspace's Argilla (its local server or ``review.json``)."""

    scan: Name | None = None
    checks: list[Name] | None = None
    limit: int | None = Field(None, ge=1)
    round: Name | None = None
    annotators: int = Field(1, ge=1, le=100)
    policy: Literal["majority", "unanimous", "escalate"] = "majority"
    vectors: bool = False

    def arguments(self, files: JobFiles) -> list[str]:
        return [
            "review",
            "push",
            *_option("scan", self.scan),
            *_option("checks", ",".join(self.checks) if self.checks else None),
            *_option("limit", self.limit),
            *_option("round", self.round),
            *_option("annotators", self.annotators),
            *_option("policy", self.policy),
            *_option("vectors", self.vectors),
            "--json",
        ]


class ReviewPullParams(JobParams):
    """``refinery review pull``."""

    round: Name | None = None
    policy: Literal["majority", "unanimous", "escalate"] | None = None

    def arguments(self, files: JobFiles) -> list[str]:
        return ["review", "pull", *_option("round", self.round), *_option("policy", self.policy), "--json"]


class PromoteParams(JobParams):
    """``refinery promote`` (admin)."""

    min_role: ClassVar[str] = "admin"
    adapter: Name
    force: bool = False
    reason: Name | None = None

    def arguments(self, files: JobFiles) -> list[str]:
        return ["promote", *_option("force", self.force), *_option("reason", self.reason), "--json", "--", self.adapter]


class RollbackParams(JobParams):
    """``refinery rollback`` (admin)."""

    min_role: ClassVar[str] = "admin"

    def arguments(self, files: JobFiles) -> list[str]:
        return ["rollback", "--json"]


class ForgetParams(JobParams):
    """``refinery forget`` (admin): a record, or every record of a source file, kept out of future snapshots."""

    min_role: ClassVar[str] = "admin"
    record: Name | None = Field(None, description="A record id (rec_...).")
    source: Name | None = Field(None, description="A source file, as it was given to ingest.")
    reason: Name | None = Field(None, description="Why (recorded with the request).")

    @model_validator(mode="after")
    def _one_target(self) -> ForgetParams:
        if (self.record is None) == (self.source is None):
            raise ValueError("give exactly one of record and source")
        return self

    def arguments(self, files: JobFiles) -> list[str]:
        target = [*_option("record", self.record), *_option("source", self.source)]
        return ["forget", *target, *_option("reason", self.reason), "--json"]


#: Every job kind and its parameters.
KINDS: dict[str, type[JobParams]] = {
    "ingest": IngestParams,
    "scan": ScanParams,
    "snapshot": SnapshotParams,
    "train": TrainParams,
    "eval": EvalParams,
    "review_push": ReviewPushParams,
    "review_pull": ReviewPullParams,
    "promote": PromoteParams,
    "rollback": RollbackParams,
    "forget": ForgetParams,
}
JobKind = Literal[
    "ingest", "scan", "snapshot", "train", "eval", "review_push", "review_pull", "promote", "rollback", "forget"
]


@dataclass(frozen=True)
class Job:
    """A row of ``jobs``."""

    job_id: str
    kind: str
    params: dict[str, Any]
    state: str
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pid: int | None
    exit_code: int | None
    result: dict[str, Any] | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def parsed_params(self) -> JobParams:
        return KINDS[self.kind].model_validate(self.params)


def _job(row: tuple[Any, ...]) -> Job:
    job_id, kind, params, state, who, created, started, finished, pid, code, result, error = row
    return Job(
        job_id, kind, json.loads(params), state, who, created, started, finished, pid, code,
        None if result is None else json.loads(result), error,
    )  # fmt: skip


def job_folder(root: Path, job_id: str) -> Path:
    return root / JOBS_FOLDER / job_id


def parse_params(kind: str, params: dict[str, Any]) -> JobParams:
    """The validated parameters of ``kind`` (a pydantic ``ValidationError`` or :class:`JobParamsError`)."""
    if kind not in KINDS:
        raise JobParamsError(f"unknown job kind {kind!r}: choose one of {', '.join(KINDS)}")
    return KINDS[kind].model_validate(params)


def submit(
    catalog: Catalog, root: Path, data_dirs: Sequence[Path], kind: str, params: JobParams, created_by: str
) -> Job:
    """Check the parameters (paths, inline configs) and queue the job. The command line is built once here, to
    refuse what cannot run, and again when the job starts (inline configs are written into the job's folder)."""
    job_id = "job_" + secrets.token_hex(8)
    folder = job_folder(root, job_id)
    params.arguments(JobFiles(root, tuple(data_dirs), folder))
    now = utcnow()
    with catalog.write() as con:
        con.execute(
            "INSERT INTO jobs (job_id, kind, params_json, state, created_by, created_at) "
            "VALUES (?, ?, ?, 'queued', ?, ?)",
            [job_id, kind, params.model_dump_json(), created_by, now],
        )
    return get_job(catalog, job_id)


def get_job(catalog: Catalog, job_id: str) -> Job:
    with catalog.read() as con:
        row = con.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", [job_id]).fetchone()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return _job(row)


def list_jobs(catalog: Catalog, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
    """The newest jobs first, optionally of one state or kind."""
    with catalog.read() as con:
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE (? IS NULL OR state = ?) AND (? IS NULL OR kind = ?) "
            "ORDER BY created_at DESC, job_id DESC LIMIT ?",
            [state, state, kind, kind, limit],
        ).fetchall()
    return [_job(r) for r in rows]


def next_queued(catalog: Catalog) -> Job | None:
    """The oldest queued job."""
    with catalog.read() as con:
        row = con.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY created_at, job_id LIMIT 1"
        ).fetchone()
    return None if row is None else _job(row)


def _update(catalog: Catalog, job_id: str, sets: str, values: list[Any], where_state: Sequence[str]) -> bool:
    """UPDATE one job if its state is one of ``where_state``; whether it was."""
    with catalog.write() as con:
        found = con.execute(
            f"UPDATE jobs SET {sets} WHERE job_id = ? AND list_contains(?, state) RETURNING job_id",
            [*values, job_id, list(where_state)],
        ).fetchall()
    return bool(found)


def mark_running(catalog: Catalog, job_id: str) -> bool:
    """queued -> running; False when the job is no longer queued (cancelled meanwhile)."""
    return _update(catalog, job_id, "state = 'running', started_at = ?", [utcnow()], ["queued"])


def record_pid(catalog: Catalog, job_id: str, pid: int) -> None:
    _update(catalog, job_id, "pid = ?", [pid], ["running"])


def finish(
    catalog: Catalog,
    job_id: str,
    state: JobState,
    exit_code: int | None,
    result: dict[str, Any] | None,
    error: str | None,
) -> bool:
    """A running job ends in ``state``."""
    return _update(
        catalog,
        job_id,
        "state = ?, finished_at = ?, pid = NULL, exit_code = ?, result_json = ?, error = ?",
        [state, utcnow(), exit_code, None if result is None else json.dumps(result), error],
        ["running"],
    )


def cancel_queued(catalog: Catalog, job_id: str, by: str) -> bool:
    """queued -> cancelled; False when the job is not queued."""
    return _update(
        catalog, job_id, "state = 'cancelled', finished_at = ?, error = ?", [utcnow(), f"cancelled by {by}"], ["queued"]
    )


def fail_running(catalog: Catalog, reason: str = SERVER_STOPPED) -> list[Job]:
    """Every job still marked running (its server is gone) -> failed with ``reason``; the jobs as they were."""
    stale = list_jobs(catalog, state="running", limit=1_000_000)
    for job in stale:
        finish(catalog, job.job_id, "failed", None, None, reason)
    return stale
