"""Review without a real server: a server that answers 500, no server at all, the key file, and the policies.

The real-server flow is in test_review_server.py; here a tiny local HTTP server injects the failure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.review.connection import (
    ReviewError,
    ReviewPaths,
    ReviewServerError,
    owner_credentials,
    resolve_connection,
)
from curation.review.pull import agreement, resolve
from curation.review.push import push
from curation.scan import run_scan
from refinery.cli import app
from schemas.catalog import Catalog

SECRET = "rfy.secret-key-that-must-never-show"


class _Failing(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        body = b'{"detail": "boom"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def failing_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
    scanned: Catalog, workspace: Path, failing_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGILLA_API_URL", failing_url)
    monkeypatch.setenv("ARGILLA_API_KEY", SECRET)
    with pytest.raises(ReviewServerError, match="rerun the command to resume") as caught:
        push(scanned, resolve_connection(workspace), round_name="r1")
    assert SECRET not in str(caught.value) and failing_url in str(caught.value)
    # the round and its items are recorded: a rerun against a working server pushes them
    assert scanned.scalar("SELECT count(*) FROM review_items WHERE round_name = 'r1' AND pushed_at IS NULL") == 2
    result = CliRunner().invoke(app, ["--workspace", str(workspace), "--quiet", "review", "push", "--round", "r1"])
    assert result.exit_code == 2 and "failed" in result.output and SECRET not in result.output


def test_without_a_server_commands_say_how_to_get_one(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARGILLA_API_URL", "ARGILLA_API_KEY", "REFINERY_REVIEW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ReviewError, match="refinery review serve"):
        resolve_connection(workspace)
    result = CliRunner().invoke(app, ["--workspace", str(workspace), "review", "pull"])
    assert result.exit_code == 2


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
