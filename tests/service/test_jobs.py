"""Jobs through the real `refinery serve` (a subprocess on loopback): ingest of an upload, scan and snapshot jobs
give exactly the CLI's --json results; a failing command is a failed job with the CLI's one-line error; paths
outside the server's folders are refused; queued and running jobs are cancelled (the child is gone); each role
gets 401/403 where it should; train and promote record who submitted them; no token reaches a job's files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from refinery.workspace import open_workspace
from schemas.catalog import Catalog
from tests.service.jobs_support import client, run_job, submit, wait_gone, wait_job, without
from tests.support.cli import invoke_cli, run_cli
from tests.support.service import Service, running_service

pytestmark = pytest.mark.slow

MAPPING = {"question": "user", "answer": "assistant"}
POLICY = {"train_fraction": 0.7, "validation_fraction": 0.15, "test_fraction": 0.15, "seed": 3}


@dataclass
class Served:
    service: Service
    root: Path
    data: Path
    ws: Path
    tiny: Path

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.ws / "catalog.duckdb")


def _csv() -> bytes:
    labels = ["card_lost", "refund", "password", "delivery"]
    rows = ["question,answer"]
    rows += [f"customer question {i} about the {labels[i % 4]} topic number {i},{labels[i % 4]}" for i in range(60)]
    rows += ["Where is my card?,card_lost", "Where is my card?,card_lost"]  # an exact duplicate
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    """An empty workspace, a data folder (a CSV, a folder that is no dataset) and the server over them."""
    root = tmp_path_factory.mktemp("jobs")
    data = root / "data"
    data.mkdir()
    (data / "small.csv").write_bytes(_csv())
    (data / "not_a_dataset").mkdir()
    ws = root / "ws"
    open_workspace(ws)
    with running_service(ws, data_dirs=[data, tiny_model_dir]) as service:
        yield Served(service, root, data, ws, tiny_model_dir)


@pytest.fixture(scope="module")
def job_chain(served: Served) -> dict[str, dict[str, Any]]:
    """An uploaded CSV ingested, scanned and snapshotted with three jobs (waited for)."""
    with client(served.service) as http:
        answer = http.post("/uploads", files={"file": ("small data.csv", _csv(), "text/csv")})
        assert answer.status_code == 201, answer.text
        upload = answer.json()
        ingest = run_job(http, "ingest", uploads=[upload["name"]], map=MAPPING, name="small")
        scan = run_job(http, "scan", checks=["exact", "near_dup"])
        snapshot = run_job(http, "snapshot", policy=POLICY)
    return {"upload": upload, "ingest": ingest, "scan": scan, "snapshot": snapshot}


def test_upload_ingest_scan_and_snapshot_jobs_give_the_cli_results(
    served: Served, job_chain: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    upload = job_chain["upload"]
    assert upload["sha256"] == hashlib.sha256(_csv()).hexdigest() and upload["size"] == len(_csv())
    assert upload["name"] == f"{upload['sha256'][:16]}-small_data.csv"
    assert Path(upload["path"]) == served.ws / "uploads" / upload["name"]
    assert Path(upload["path"]).read_bytes() == _csv()

    # the same commands, run with the CLI on a workspace of their own
    cli_ws = tmp_path / "cli"
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    maps = [a for f, r in MAPPING.items() for a in ("--map", f"{f}={r}")]
    expected = {
        "ingest": run_cli(cli_ws, "ingest", upload["path"], *maps, "--name", "small"),
        "scan": run_cli(cli_ws, "scan", "--checks", "exact,near_dup"),
        "snapshot": run_cli(cli_ws, "snapshot", "create", "--policy", str(policy_file)),
    }
    for kind, cli in expected.items():
        job = job_chain[kind]
        assert job["state"] == "succeeded", job
        assert job["exit_code"] == 0 and job["error"] is None
        assert job["created_by"] == "test-engineer"
        assert job["started_at"] <= job["finished_at"]
        assert job["log_tail"][0].startswith(f"$ refinery {'snapshot create' if kind == 'snapshot' else kind} ")
        assert job["progress"] is not None and job["progress"]["final"] is True
        # the job's result is the CLI's --json output: same keys, same ids and counts (paths aside)
        assert set(job["result"]) == set(cli)
        volatile = frozenset({"path"})
        assert without(job["result"], volatile) == without(cli, volatile), kind
    assert job_chain["snapshot"]["result"]["scan_id"] == job_chain["scan"]["result"]["scan_id"]
    assert job_chain["ingest"]["result"]["rows_read"] == 62
    # the inline policy went to the job's folder, and the snapshot used it (70/15/15 of the records)
    folder = served.ws / "jobs" / job_chain["snapshot"]["job_id"]
    assert json.loads((folder / "policy.json").read_text()) == POLICY

    with client(served.service, "viewer") as http:
        listed = http.get("/jobs", params={"state": "succeeded", "kind": "scan"}).json()["jobs"]
    assert job_chain["scan"]["job_id"] in [j["job_id"] for j in listed]
    assert {j["kind"] for j in listed} == {"scan"}
    rows = served.catalog.query("SELECT state, created_by FROM jobs WHERE job_id = ?", [job_chain["ingest"]["job_id"]])
    assert rows == [{"state": "succeeded", "created_by": "test-engineer"}]


def test_a_failing_command_is_a_failed_job_with_the_cli_one_line_error(served: Served, tmp_path: Path) -> None:
    target = served.data / "not_a_dataset"
    with client(served.service) as http:
        job = run_job(http, "ingest", paths=[str(target)])
    cli = invoke_cli(tmp_path / "cli", "ingest", str(target), "--json")
    assert cli.exit_code == 2
    assert job["state"] == "failed" and job["exit_code"] == 2
    assert job["error"] == json.loads(cli.stdout)["error"]
    assert "\n" not in job["error"] and "not a saved Hugging Face dataset" in job["error"]
    assert job["result"] is None
    with client(served.service) as http:
        evaluated = run_job(http, "eval", adapter="adp_0000000000000000", limit=4)
    assert evaluated["state"] == "failed" and evaluated["exit_code"] == 2
    assert evaluated["log_tail"][0] == "$ refinery eval --adapter=adp_0000000000000000 --limit=4 --json"
    assert "adp_0000000000000000" in evaluated["error"] and "\n" not in evaluated["error"]


def test_an_eval_the_gate_fails_is_a_failed_job_that_keeps_the_cli_result(tmp_path: Path) -> None:
    """What the dispatcher makes of a finished `refinery eval` child: exit 1 with its verdict object on stdout."""
    from refinery.service.job_worker import LOG_NAME, STDOUT_NAME, _outcome

    verdict = {"eval_id": "eval_1", "adapter": "adp_1", "verdict": "fail", "reason": "adapter  below\nthe baseline"}
    (tmp_path / STDOUT_NAME).write_text(json.dumps(verdict))
    (tmp_path / LOG_NAME).write_text("$ refinery eval --adapter=adp_1 --json\nscored 8 examples\n")
    assert _outcome(1, tmp_path, None, False) == (
        "failed", verdict, "the gate's verdict is fail: adapter below the baseline"
    )  # fmt: skip
    assert _outcome(0, tmp_path, None, False) == ("succeeded", verdict, None)
    assert _outcome(-15, tmp_path, "ana", False) == ("cancelled", verdict, "cancelled by ana")
    (tmp_path / STDOUT_NAME).write_text("")  # a crash: no object; the last line of the log says why
    (tmp_path / LOG_NAME).write_text("Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n")
    assert _outcome(1, tmp_path, None, False) == ("failed", None, "exit 1: MemoryError: out of memory")


def test_paths_outside_the_server_folders_and_bad_parameters_are_refused(served: Served) -> None:
    link = served.data / "escape.csv"
    if not link.exists():
        link.symlink_to("/etc/hostname")
    refused = {
        "outside": ("ingest", {"paths": ["/etc/hostname"]}, "outside the folders"),
        "through a link": ("ingest", {"paths": [str(link)]}, "outside the folders"),
        "relative": ("ingest", {"paths": ["data/small.csv"]}, "absolute path"),
        "missing": ("ingest", {"paths": [str(served.data / "nope.csv")]}, "does not exist"),
        "upload as path": ("ingest", {"uploads": ["../catalog.duckdb"]}, "not a path"),
        "no input": ("ingest", {}, "at least one"),
        "config twice": ("scan", {"config": {"exact": {}}, "config_path": str(served.data / "small.csv")}, "not both"),
        "model outside": ("train", {"snapshot": "snap_x", "base_model": "/etc"}, "outside the folders"),
    }
    with client(served.service) as http:
        for case, (kind, params, message) in refused.items():
            answer = http.post("/jobs", json={"kind": kind, "params": params})
            assert answer.status_code == 422, case
            (problem,) = answer.json()["detail"]  # the shape of FastAPI's validation errors
            assert message in problem["msg"] and problem["loc"] == ["body", "params"], (case, problem)
        for body in (
            {"kind": "shell", "params": {}},
            {"kind": "scan", "params": {"checks": ["exact"], "rm": "-rf"}},
            {"kind": "eval", "params": {}},
            {"kind": "scan", "params": {"threshold": 3}},
        ):
            assert http.post("/jobs", json=body).status_code == 422, body
        assert http.get("/jobs", params={"state": "exploded"}).status_code == 422
    assert served.catalog.scalar("SELECT count(*) FROM jobs WHERE kind = 'ingest' AND params_json LIKE '%/etc%'") == 0


def test_cancel_a_queued_and_a_running_job(served: Served) -> None:
    fifo = served.data / "pipe.csv"
    os.mkfifo(fifo)  # ingest blocks reading it: a job that runs until it is stopped
    with client(served.service) as http:
        blocked = submit(http, "ingest", paths=[str(fifo)])
        wait_job(http, blocked, until=lambda job: job["state"] == "running")
        queued = submit(http, "scan", checks=["exact"])
        pid = None
        while pid is None:
            pid = served.catalog.scalar("SELECT pid FROM jobs WHERE job_id = ?", [blocked])

        answer = http.delete(f"/jobs/{queued}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "cancelled" and answer.json()["error"] == "cancelled by test-engineer"

        answer = http.delete(f"/jobs/{blocked}")
        assert answer.status_code == 202, answer.text
        stopped = wait_job(http, blocked, timeout=60)
        assert stopped["state"] == "cancelled" and stopped["error"] == "cancelled by test-engineer"
        assert stopped["exit_code"] == -15  # SIGTERM ended it, within the grace period
        assert wait_gone(pid), f"the job's child {pid} is still running"

        assert http.delete(f"/jobs/{blocked}").status_code == 409
        assert http.delete("/jobs/job_0000000000000000").status_code == 404
        # the dispatcher goes on with the next job
        assert run_job(http, "scan", checks=["exact"])["state"] == "succeeded"
        assert wait_job(http, queued)["started_at"] is None  # the cancelled queued job never ran


def test_each_role_gets_401_or_403_on_the_job_endpoints(served: Served) -> None:
    service = served.service
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/jobs", {}),
        ("GET", "/jobs/job_0000000000000000", {}),
        ("POST", "/jobs", {"json": {"kind": "scan", "params": {}}}),
        ("DELETE", "/jobs/job_0000000000000000", {}),
        ("POST", "/uploads", {"files": {"file": ("a.csv", b"q,a\n1,2\n")}}),
    ]
    for headers in ({}, {"Authorization": "Bearer rfy_not-a-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=30) as anonymous:
            for method, path, extra in calls:
                answer = anonymous.request(method, path, **extra)
                assert answer.status_code == 401, (headers, method, path)
                assert answer.headers["www-authenticate"] == "Bearer"
    with client(service, "viewer") as viewer:
        assert viewer.get("/jobs").status_code == 200
        for method, path, extra in calls[2:]:
            answer = viewer.request(method, path, **extra)
            assert answer.status_code == 403, (method, path)
            assert "engineer" in answer.json()["detail"]
    with client(service, "engineer") as engineer:
        for kind, params in (("promote", {"adapter": "adp_x", "force": True, "reason": "r"}), ("rollback", {})):
            answer = engineer.post("/jobs", json={"kind": kind, "params": params})
            assert answer.status_code == 403 and "admin" in answer.json()["detail"]
        assert engineer.get("/jobs/job_0000000000000000").status_code == 404
        answer = engineer.post("/jobs", json={"kind": "forget", "params": {"record": "rec_x"}})
        assert answer.status_code == 403 and "admin" in answer.json()["detail"]
    with client(service, "admin") as admin:
        job = run_job(admin, "rollback")
        both = admin.post("/jobs", json={"kind": "forget", "params": {"record": "rec_x", "source": "a.csv"}})
        assert both.status_code == 422 and "exactly one of record and source" in both.text
        forget = run_job(admin, "forget", record="rec_0000", reason="takedown")
    assert job["state"] == "failed" and job["exit_code"] == 2 and job["created_by"] == "test-admin"
    assert job["error"] == "nothing to roll back: no adapter has been promoted"  # the CLI's own line
    assert forget["state"] == "failed" and forget["exit_code"] == 2 and "rec_0000" in forget["error"]


def test_train_and_promote_jobs_record_who_submitted_them(served: Served, job_chain: dict[str, dict[str, Any]]) -> None:
    snapshot_id = job_chain["snapshot"]["result"]["snapshot_id"]
    with client(served.service, "engineer", "ml-engineer-ana") as http:
        train = run_job(
            http, "train", snapshot=snapshot_id, base_model=str(served.tiny), config={"max_steps": 2}, timeout=600
        )
    assert train["state"] == "succeeded", train
    assert train["created_by"] == "ml-engineer-ana"
    assert train["result"]["steps"] == 2 and train["result"]["snapshot_id"] == snapshot_id
    adapter_id = train["result"]["adapter_id"]
    assert json.loads((served.ws / "jobs" / train["job_id"] / "train-config.json").read_text()) == {"max_steps": 2}

    with client(served.service, "admin", "release-manager-bo") as admin:
        promote = run_job(admin, "promote", adapter=adapter_id, force=True, reason="service test")
    assert promote["state"] == "succeeded", promote
    assert promote["result"]["action"] == "force_promote" and promote["result"]["adapter_id"] == adapter_id
    # the CLI child recorded the token's name as the actor ($REFINERY_ACTOR)
    rows = served.catalog.query("SELECT actor, reason FROM promotions WHERE adapter_id = ?", [adapter_id])
    assert rows == [{"actor": "release-manager-bo", "reason": "service test"}]


def test_no_token_reaches_a_job_file_or_the_server_log(served: Served, job_chain: dict[str, dict[str, Any]]) -> None:
    tokens = [served.service.token(role) for role in ("viewer", "engineer", "admin")]
    files = [p for p in (served.ws / "jobs").rglob("*") if p.is_file()]
    assert any(p.name == "log.txt" for p in files) and any(p.name == "stdout.json" for p in files)
    texts = [p.read_text(errors="replace") for p in files] + [served.service.log()]
    for token in tokens:
        assert token.startswith("rfy_")
        assert not any(token in text for text in texts)
        assert not any(token[4:20] in text for text in texts)


def test_uploads_are_named_safely_and_one_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    """In-process app without a dispatcher (create_app(run_jobs=False)) and a 1,000-byte upload limit."""
    from fastapi.testclient import TestClient

    from refinery.service.app import create_app

    ws = tmp_path / "ws"
    open_workspace(ws)
    token = run_cli(ws, "token", "create", "--name", "uploader", "--role", "engineer")["token"]
    app = create_app(ws, run_jobs=False)
    app.state.max_upload_bytes = 1000
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as http:
        kept = http.post("/uploads", files={"file": ("../../etc/.x y.csv", b"q,a\n" + b"x" * 996)})
        assert kept.status_code == 201, kept.text
        assert kept.json()["name"].endswith("-x_y.csv") and kept.json()["size"] == 1000
        refused = http.post("/uploads", files={"file": ("big.csv", b"x" * 1001)})
        assert refused.status_code == 413 and "1,000 bytes" in refused.json()["detail"]
        # without a dispatcher a job stays queued, and DELETE cancels it at once
        job_id = submit(http, "ingest", uploads=[kept.json()["name"]])  # type: ignore[arg-type]
        cancelled = http.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["error"] == "cancelled by uploader"
    assert [p.name for p in (ws / "uploads").iterdir()] == [kept.json()["name"]]  # no partial file of the refused


def test_a_scan_job_can_run_on_ray_and_a_bad_address_is_refused_at_submit(tmp_path: Path) -> None:
    """The scan job's executor parameters become the CLI's flags (the CLI itself is tested on Ray in
    tests/curation/test_scan_on_ray.py); an address that is not auto, HOST:PORT or ray://HOST:PORT is refused."""
    from pydantic import ValidationError

    from refinery.service.jobs import JobFiles, parse_params

    files = JobFiles(tmp_path, (), tmp_path / "job")
    params = parse_params("scan", {"checks": ["near_dup"], "executor": "ray", "ray_address": "ray://head:10001"})
    assert params.arguments(files) == [
        "scan", "--executor=ray", "--ray-address=ray://head:10001", "--checks=near_dup", "--json"
    ]  # fmt: skip
    assert parse_params("scan", {}).arguments(files) == ["scan", "--json"]
    for bad in ("head; rm -rf /", "http://head:10001", "--config=/etc/passwd"):
        with pytest.raises(ValidationError):
            parse_params("scan", {"executor": "ray", "ray_address": bad})
    with pytest.raises(ValidationError):
        parse_params("scan", {"executor": "spark"})
