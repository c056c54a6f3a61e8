"""kill -9 of `refinery serve` while a job runs: the job's child dies with the server, a restart marks the job
failed with a clear reason, jobs still queued run after the restart, `refinery audit` stays clean, and a new job
succeeds. A graceful stop (SIGTERM) stops the running job's child and fails the job the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from refinery.service.jobs import SERVER_STOPPED
from refinery.workspace import open_workspace
from schemas.catalog import Catalog
from tests.service.jobs_support import client, run_job, submit, wait_gone, wait_job
from tests.support.cli import invoke_cli, run_cli
from tests.support.service import running_service

pytestmark = pytest.mark.slow


def _chats(n: int) -> str:
    labels = ["card_lost", "refund", "password"]
    rows = [
        {"messages": [{"role": "user", "content": f"question {i} about {labels[i % 3]}"},
                      {"role": "assistant", "content": labels[i % 3]}]}
        for i in range(n)
    ]  # fmt: skip
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def _job_children(ws: Path) -> list[int]:
    """Pids of job children (``refinery.cli`` commands over ``ws`` other than the server itself)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"refinery.cli" in argv and str(ws).encode() in argv and b"serve" not in argv:
            found.append(int(cmdline.parent.name))
    return found


def _audit_is_clean(ws: Path) -> None:
    result = invoke_cli(ws, "audit", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["problems"] == []


def test_kill9_of_the_server_during_a_train_job_then_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "train.jsonl").write_text(_chats(60), encoding="utf-8")
    ws = tmp_path / "ws"
    run_cli(ws, "ingest", str(tmp_path / "train.jsonl"))
    run_cli(ws, "scan", "--checks", "exact")
    snapshot_id = run_cli(ws, "snapshot", "create")["snapshot_id"]
    catalog = Catalog(ws / "catalog.duckdb")

    with running_service(ws, data_dirs=[tiny_model_dir]) as service:
        with client(service) as http:
            killed = submit(http, "train", snapshot=snapshot_id, base_model=str(tiny_model_dir), max_steps=5000)
            waiting = submit(http, "scan", checks=["exact", "exact_prompt"])

            def training(job: dict[str, object]) -> bool:
                progress = job["progress"]
                return isinstance(progress, dict) and progress["total"] == 5000 and progress["done"] >= 1  # steps

            wait_job(http, killed, until=training, timeout=300)
        pid = catalog.scalar("SELECT pid FROM jobs WHERE job_id = ?", [killed])
        assert pid is not None and pid in _job_children(ws)
        service.kill9()  # mid-training: optimizer steps done, the adapter not yet written
    assert wait_gone(pid, timeout=30), f"the job's child {pid} outlived the killed server"
    assert _job_children(ws) == []
    assert catalog.scalar("SELECT state FROM jobs WHERE job_id = ?", [killed]) == "running"  # as the server left it

    with running_service(ws, data_dirs=[tiny_model_dir]) as service, client(service) as http:
        failed = http.get(f"/jobs/{killed}").json()
        assert failed["state"] == "failed" and failed["error"] == SERVER_STOPPED
        assert failed["exit_code"] is None and failed["finished_at"] is not None
        assert catalog.scalar("SELECT pid FROM jobs WHERE job_id = ?", [killed]) is None
        assert catalog.scalar("SELECT count(*) FROM adapters") == 0  # nothing half-written was registered
        # the job queued behind it was not lost: it runs after the restart
        assert wait_job(http, waiting)["state"] == "succeeded"
        _audit_is_clean(ws)
        # the same work, submitted again, succeeds
        again = run_job(http, "train", snapshot=snapshot_id, base_model=str(tiny_model_dir), max_steps=2, timeout=600)
        assert again["state"] == "succeeded", again
        assert catalog.scalar("SELECT count(*) FROM adapters") == 1
    _audit_is_clean(ws)
    assert _job_children(ws) == []


def test_sigterm_stops_the_server_its_running_job_and_fails_the_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    fifo = data / "pipe.csv"
    os.mkfifo(fifo)  # ingest blocks reading it: the job runs until it is stopped
    ws = tmp_path / "ws"
    open_workspace(ws)
    catalog = Catalog(ws / "catalog.duckdb")
    with running_service(ws, data_dirs=[data]) as service:
        with client(service) as http:
            job_id = submit(http, "ingest", paths=[str(fifo)])
            wait_job(http, job_id, until=lambda job: job["state"] == "running")
        pid = None
        while pid is None:
            pid = catalog.scalar("SELECT pid FROM jobs WHERE job_id = ?", [job_id])
        assert service.stop() == 0
    assert wait_gone(pid, timeout=30)
    rows = catalog.query("SELECT state, error, pid FROM jobs WHERE job_id = ?", [job_id])
    assert rows == [{"state": "failed", "error": SERVER_STOPPED, "pid": None}]
    assert _job_children(ws) == []
