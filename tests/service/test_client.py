"""`refinery.client.RefineryClient` against the real `refinery serve` (a subprocess on loopback): every read, SQL in
its three formats, an upload ingested by a job and waited for, a failed job, and errors as one-line exceptions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refinery.client import RefineryClient, RefineryClientError, RefineryJobError
from tests.support.cli import run_cli
from tests.support.service import Service, running_service

pytestmark = pytest.mark.slow

LABELS = ["card_lost", "refund", "password"]


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A workspace with 30 records (10 per label), a scan and a snapshot, made with the CLI; the server."""
    root = tmp_path_factory.mktemp("client")
    lines = [_chat(f"question {i} about {LABELS[i % 3]}", LABELS[i % 3]) for i in range(30)]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws = root / "ws"
    batch = run_cli(ws, "ingest", str(root / "train.jsonl"))
    scan = run_cli(ws, "scan", "--checks", "exact")
    snap = run_cli(ws, "snapshot", "create")
    with running_service(ws) as service:
        yield {"service": service, "root": root, "batch": batch, "scan": scan, "snapshot": snap}


def _client(service: Service, role: str = "viewer") -> RefineryClient:
    return RefineryClient(service.base_url, service.token(role), timeout=60)


def test_reads(served: dict[str, Any]) -> None:
    service, snap_id, scan_id = served["service"], served["snapshot"]["snapshot_id"], served["scan"]["scan_id"]
    with _client(service) as client:
        assert client.health()["status"] == "ok"
        snapshots = client.snapshots()
        assert snap_id in json.dumps(snapshots)
        assert snap_id in json.dumps(client.snapshot(snap_id))
        assert scan_id in json.dumps(client.scans())
        assert client.scan(scan_id)["records"] == 30
        assert client.adapters() == {"adapters": []} and client.evals() == {"evals": []}
        assert client.registry()["current"] is None
        tree = client.lineage(snap_id)
        assert (tree["kind"], tree["id"]) == ("snapshot", snap_id)
        assert {p["kind"] for p in tree["parents"]} >= {"scan", "batch"}
        report = client.report_html(scan_id)
        assert report.startswith("<!DOCTYPE html>") and scan_id in report


def test_sql_in_three_formats(served: dict[str, Any]) -> None:
    query = "SELECT response, count(*) AS n FROM records GROUP BY response ORDER BY response"
    expected = [{"response": label, "n": 10} for label in sorted(LABELS)]
    with _client(served["service"]) as client:
        assert client.sql(query) == expected
        arrow = client.sql(query, format="arrow")
        assert arrow.column_names == ["response", "n"] and arrow.to_pylist() == expected
        parquet = client.sql(query, format="parquet")
        assert parquet.to_pylist() == expected
        assert len(client.sql("SELECT record_id FROM records", limit=7)) == 7


def test_upload_ingest_job_and_wait(served: dict[str, Any]) -> None:
    extra = served["root"] / "extra.jsonl"
    extra.write_text("".join(_chat(f"new question {i}", "refund") + "\n" for i in range(5)), encoding="utf-8")
    with _client(served["service"], "engineer") as client:
        upload = client.upload(extra)
        job_id = client.submit("ingest", uploads=[upload["name"]], name="from-client")
        job = client.wait(job_id, timeout=180)
        assert job["state"] == "succeeded" and job["created_by"] == "test-engineer"
        assert job["result"]["ingested"] == 5 and job["result"]["batch_id"].startswith("batch_")
        assert job_id in [j["job_id"] for j in client.jobs()]
        assert job_id in [j["job_id"] for j in client.jobs(state="succeeded", kind="ingest")]
        assert job_id not in [j["job_id"] for j in client.jobs(kind="scan")]
        assert client.sql("SELECT count(*) AS n FROM ingest_batches WHERE name = 'from-client'") == [{"n": 1}]
        with pytest.raises(RefineryClientError) as ended:
            client.cancel(job_id)
        assert ended.value.status == 409 and "already ended" in str(ended.value)


def test_a_failed_job_raises_with_its_error(served: dict[str, Any]) -> None:
    with _client(served["service"], "engineer") as client:
        job_id = client.submit("snapshot", parent="snap_doesnotexist")
        with pytest.raises(RefineryJobError) as failed:
            client.wait(job_id, timeout=180)
        assert failed.value.job["state"] == "failed" and failed.value.status is None
        assert str(failed.value).startswith(f"job {job_id} (snapshot) failed: ")
        assert "snap_doesnotexist" in str(failed.value) and "\n" not in str(failed.value)
        assert client.wait(job_id, check=False)["state"] == "failed"


@pytest.mark.parametrize(
    ("call", "role", "status", "words"),
    [
        (lambda c: c.snapshots(), None, 401, "token"),
        (lambda c: c.submit("scan"), "viewer", 403, "engineer role"),
        (lambda c: c.sql("COPY records TO '/tmp/refinery-client-leak.csv'"), "viewer", 400, ""),
        (lambda c: c.lineage("snap_doesnotexist"), "viewer", 404, "snap_doesnotexist"),
        (lambda c: c.job("job_doesnotexist"), "viewer", 404, "no job job_doesnotexist"),
        (lambda c: c.submit("ingest", paths=["/etc/passwd"]), "engineer", 422, "outside the folders"),
    ],
)
def test_http_errors_are_one_line_exceptions(
    served: dict[str, Any], call: Any, role: str | None, status: int, words: str
) -> None:
    service = served["service"]
    token = service.token(role) if role else "rfy_not-a-real-token"
    with RefineryClient(service.base_url, token) as client, pytest.raises(RefineryClientError) as failed:
        call(client)
    message = str(failed.value)
    assert failed.value.status == status, message
    assert words in message and "\n" not in message and message == failed.value.message
    assert not Path("/tmp/refinery-client-leak.csv").exists()


def test_unreachable_server(tmp_path: Path) -> None:
    with RefineryClient("http://127.0.0.1:9", "rfy_x", timeout=5) as client, pytest.raises(RefineryClientError) as e:
        client.health()
    assert e.value.status is None and "cannot reach http://127.0.0.1:9" in str(e.value)
