"""Review without a real server: a server that answers 500 or 403, no server at all, bounded retries with
backoff, the key file, and the policies.

The real-server flows are in test_review_server.py and test_review_resilience.py; here a tiny local HTTP server
injects the failure and the waits between retries are recorded instead of slept.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import curation.review.connection as connection_module
from curation.checks import run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.review.connection import (
    Connection,
    RetryPolicy,
    ReviewError,
    ReviewPaths,
    ReviewPermissionError,
    ReviewServerError,
    owner_credentials,
    refused,
    resolve_connection,
    retryable,
)
from curation.review.pull import agreement, resolve
from curation.review.push import push
from refinery.cli import app
from schemas.catalog import CATALOG_NAME, Catalog

SECRET = "rfy.secret-key-that-must-never-show"


class _Failing(BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` and counts the requests."""

    server: _FailingServer

    def _fail(self) -> None:
        self.server.hits.append(f"{self.command} {self.path}")
        body = b'{"detail": "boom"}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _FailingServer(ThreadingHTTPServer):
    status = 500
    hits: list[str]


@pytest.fixture
def failing() -> Iterator[_FailingServer]:
    server = _FailingServer(("127.0.0.1", 0), _Failing)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def failing_url(failing: _FailingServer) -> str:
    return f"http://127.0.0.1:{failing.server_address[1]}"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between retries, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(connection_module, "sleep", recorded.append)
    for name in ("REFINERY_REVIEW_ATTEMPTS", "REFINERY_REVIEW_BACKOFF", "REFINERY_REVIEW_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    return recorded


@pytest.fixture
def scanned(workspace: Path) -> Catalog:
    catalog = Catalog(workspace / "catalog.duckdb")
    catalog.migrate()
    rows = [{"instruction": "Where is my card?", "output": "card_lost"}] * 2
    rows += [{"instruction": "Where is my card?", "output": "card_stolen"}]
    (workspace / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ingest(catalog, [workspace / "train.jsonl"], IngestOptions(name="train"))
    run_scan(catalog, ["exact", "exact_prompt"])
    return catalog


def test_push_to_a_failing_server_is_a_clear_error_and_queues_the_round(
    scanned: Catalog,
    workspace: Path,
    failing: _FailingServer,
    failing_url: str,
    waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARGILLA_API_URL", failing_url)
    monkeypatch.setenv("ARGILLA_API_KEY", SECRET)
    with pytest.raises(ReviewServerError, match=r"after 4 attempts .*rerun the command to resume") as caught:
        push(scanned, resolve_connection(workspace), round_name="r1")
    assert SECRET not in str(caught.value) and failing_url in str(caught.value)
    assert "InternalServerError" in str(caught.value)
    # bounded: 4 tries of the first call (signing in), with exponential backoff between them
    assert failing.hits == ["GET /api/v1/me"] * 4 and waits == [0.5, 1.0, 2.0]
    # the round and its items are recorded: a rerun against a working server pushes them
    assert scanned.scalar("SELECT count(*) FROM review_items WHERE round_name = 'r1' AND pushed_at IS NULL") == 2
    monkeypatch.setenv("REFINERY_REVIEW_ATTEMPTS", "2")
    result = CliRunner().invoke(app, ["--workspace", str(workspace), "--quiet", "review", "push", "--round", "r1"])
    assert result.exit_code == 2 and "failed after 2 attempts" in result.output and SECRET not in result.output
    assert len(failing.hits) == 6


def test_a_server_that_is_down_is_retried_with_backoff_then_named(
    scanned: Catalog, workspace: Path, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("ARGILLA_API_URL", url)
    monkeypatch.setenv("ARGILLA_API_KEY", SECRET)
    monkeypatch.setenv("REFINERY_REVIEW_ATTEMPTS", "6")
    with pytest.raises(ReviewServerError) as caught:
        push(scanned, resolve_connection(workspace), round_name="r1")
    message = str(caught.value)
    assert message.startswith(f"signing in at {url} failed after 6 attempts (ConnectError")
    assert SECRET not in message and waits == [0.5, 1.0, 2.0, 4.0, 8.0]  # doubling, capped at 8 s


def test_refused_and_client_errors_are_not_retried(
    scanned: Catalog,
    workspace: Path,
    failing: _FailingServer,
    failing_url: str,
    waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARGILLA_API_URL", failing_url)
    monkeypatch.setenv("ARGILLA_API_KEY", SECRET)
    failing.status = 403
    with pytest.raises(ReviewPermissionError, match=r"was refused .*owner's or admin's key") as refused_error:
        push(scanned, resolve_connection(workspace), round_name="r1")
    assert SECRET not in str(refused_error.value) and failing_url in str(refused_error.value)
    failing.status = 422
    with pytest.raises(ReviewServerError) as client_error:
        push(scanned, resolve_connection(workspace), round_name="r1")
    assert "attempts" not in str(client_error.value) and "UnprocessableEntityError" in str(client_error.value)
    assert len(failing.hits) == 2 and waits == []


def test_connection_call_retries_only_what_is_worth_retrying(waits: list[float]) -> None:
    from argilla._exceptions import ForbiddenError, InternalServerError

    connection = Connection("http://argilla.test", SECRET, "test", RetryPolicy(attempts=3, backoff=0.25))
    outcomes: list[Exception] = [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("disconnected")]

    def flaky() -> str:
        if outcomes:
            raise outcomes.pop(0)
        return "done"

    assert connection.call("reading", flaky) == "done" and waits == [0.25, 0.5]
    with pytest.raises(ValueError, match="invalid literal for int"):  # not an Argilla failure: raised at once
        connection.call("reading", lambda: int("x"))
    # the SDK's own role check raises ForbiddenError with status_code 500 and no HTTP response behind it
    assert refused(ForbiddenError("not authorized")) and not retryable(ForbiddenError("not authorized"))
    request = httpx.Request("GET", "http://argilla.test/api/v1/me")
    for status, worth in ((500, True), (502, True), (503, True), (429, True), (404, False), (403, False)):
        error = httpx.HTTPStatusError("x", request=request, response=httpx.Response(status, request=request))
        assert retryable(error) is worth
    try:
        try:
            raise httpx.HTTPStatusError("x", request=request, response=httpx.Response(503, request=request))
        except httpx.HTTPStatusError:
            raise InternalServerError("wrapped by the SDK", status_code=503) from None
    except InternalServerError as wrapped:
        assert retryable(wrapped)  # the status behind the SDK error decides
    assert len(waits) == 2


def test_retry_policy_from_environment_and_config(monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    for name in ("ARGILLA_API_URL", "ARGILLA_API_KEY", "REFINERY_REVIEW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name in ("REFINERY_REVIEW_ATTEMPTS", "REFINERY_REVIEW_BACKOFF", "REFINERY_REVIEW_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    default = RetryPolicy.load()
    assert (default.attempts, default.backoff, default.timeout) == (4, 0.5, 60.0)
    assert [default.wait(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    (workspace / "review.json").write_text(
        json.dumps({"api_url": "https://argilla.example", "api_key": SECRET, "attempts": 2, "timeout": 5})
    )
    assert resolve_connection(workspace).retry == RetryPolicy(attempts=2, timeout=5.0)
    monkeypatch.setenv("REFINERY_REVIEW_ATTEMPTS", "7")
    monkeypatch.setenv("REFINERY_REVIEW_BACKOFF", "0.1")
    assert resolve_connection(workspace).retry == RetryPolicy(attempts=7, backoff=0.1, timeout=5.0)
    monkeypatch.setenv("REFINERY_REVIEW_ATTEMPTS", "0")
    with pytest.raises(ReviewError, match="attempts 0"):
        resolve_connection(workspace)
    monkeypatch.setenv("REFINERY_REVIEW_ATTEMPTS", "many")
    with pytest.raises(ReviewError, match="REFINERY_REVIEW_ATTEMPTS"):
        RetryPolicy.load()


def test_without_a_server_commands_say_how_to_get_one(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARGILLA_API_URL", "ARGILLA_API_KEY", "REFINERY_REVIEW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ReviewError, match="refinery review serve"):
        resolve_connection(workspace)
    Catalog(workspace / CATALOG_NAME).migrate()  # a real workspace, so the refusal is about the server
    result = CliRunner().invoke(app, ["--workspace", str(workspace), "review", "pull"])
    assert result.exit_code == 2
    assert "refinery review serve" in result.output and "no workspace" not in result.output


def test_config_file_points_at_a_team_deployment(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARGILLA_API_URL", "ARGILLA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    key_file = workspace / "key.txt"
    key_file.write_text(SECRET + "\n")
    (workspace / "review.json").write_text(
        json.dumps({"api_url": "https://argilla.example/", "api_key_file": str(key_file)})
    )
    connection = resolve_connection(workspace)
    assert connection.api_url == "https://argilla.example" and connection.api_key == SECRET
    assert SECRET not in repr(connection)


def test_owner_key_file_is_private_and_stable(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    paths = ReviewPaths(workspace)
    first = owner_credentials(paths)
    assert paths.credentials.stat().st_mode & 0o777 == 0o600
    assert owner_credentials(paths) == first
    monkeypatch.setenv("ARGILLA_API_KEY", SECRET)
    assert owner_credentials(paths)["api_key"] == SECRET
    paths.credentials.chmod(0o644)
    with pytest.raises(ReviewError, match="readable by others"):
        owner_credentials(paths)


def _votes(*decisions: str, corrected: str | None = None) -> list[dict[str, Any]]:
    return [
        {"record_id": "rec_x", "response_id": f"r{i}", "annotator": f"a{i}", "status": "submitted", "decision": d,
         "corrected_response": corrected if d == "edit" else None, "updated_at": datetime(2026, 1, 1, 0, 0, i)}
        for i, d in enumerate(decisions)
    ]  # fmt: skip


def test_policies_resolve_disagreements() -> None:
    assert resolve(_votes("reject", "reject", "approve"), 2, "majority").decision == "reject"
    assert resolve(_votes("reject", "approve"), 2, "majority").state == "disagreement"
    assert resolve(_votes("reject", "reject", "approve"), 2, "unanimous").state == "disagreement"
    assert resolve(_votes("reject", "approve"), 2, "escalate").state == "escalated"
    assert resolve(_votes("reject"), 2, "majority").state == "pending"
    edit = resolve(_votes("edit", "edit", corrected=" fixed "), 2, "unanimous")
    assert edit.decision == "edit" and edit.corrected == "fixed" and len(edit.responses) == 2
    assert resolve(_votes("edit"), 1, "majority").state == "invalid"  # an edit needs the corrected response


def test_agreement_figures() -> None:
    by_record = {
        "a": _votes("approve", "approve"),
        "b": _votes("reject", "approve"),
        "c": _votes("reject", "reject", "reject"),
        "d": _votes("approve"),  # one annotator: not counted
    }
    figures = agreement(by_record)
    assert figures["*"]["records"] == 3
    assert figures["*"]["agreement"] == pytest.approx((1 + 0 + 1) / 3, abs=1e-4)
    assert figures["*"]["kappa"] is not None and figures["*"]["kappa"] < figures["*"]["agreement"]
    assert figures["a0"]["records"] == 3 and figures["a2"]["records"] == 1
