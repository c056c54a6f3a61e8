"""Tokens and roles on the real server: no token, a wrong one or a revoked one is 401 (with WWW-Authenticate), a
role below the route's is 403; a viewer reads, an engineer runs jobs, an admin manages tokens. Tokens are shown
once, stored only as SHA-256, and appear in no log, list or catalog row."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from refinery.workspace import Workspace
from tests.support.cli import invoke_cli, run_cli
from tests.support.require import require_module
from tests.support.service import Service, running_service

READS = ["/snapshots", "/scans", "/adapters", "/evals", "/registry", "/jobs"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_module("fastapi", "pip install 'refinery[service]'")
    folder = tmp_path_factory.mktemp("auth")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {i}", "output": f"answer {i}"}) + "\n" for i in range(8)))
    run_cli(folder / "ws", "ingest", str(data))
    with running_service(folder / "ws") as running:
        yield running


def _get(service: Service, path: str, token: str | None = None, **extra: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{service.base_url}{path}", headers=headers, timeout=60, **extra)  # type: ignore[arg-type]


def _post(service: Service, path: str, token: str, body: object) -> httpx.Response:
    return httpx.post(f"{service.base_url}{path}", headers={"Authorization": f"Bearer {token}"}, json=body, timeout=60)


def _assert_401(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "\n" not in answer.json()["detail"]


@pytest.mark.parametrize("path", READS)
def test_no_token_or_a_wrong_one_is_401(service: Service, path: str) -> None:
    _assert_401(_get(service, path))
    _assert_401(_get(service, path, "rfy_" + "A" * 43))  # well-formed, unknown
    _assert_401(_get(service, path, "not-a-token"))
    _assert_401(httpx.get(f"{service.base_url}{path}", headers={"Authorization": "Basic dXNlcjpwYXNz"}))
    _assert_401(httpx.post(f"{service.base_url}/sql", json={"sql": "SELECT 1"}))


@pytest.mark.parametrize("role", ["viewer", "engineer", "admin"])
def test_every_role_reads(service: Service, role: str) -> None:
    token = service.token(role)
    for path in READS:
        assert _get(service, path, token).status_code == 200, path
    assert _post(service, "/sql", token, {"sql": "SELECT 42 AS n"}).json()["rows"] == [{"n": 42}]


def test_the_dashboard_cookie_is_a_token_too(service: Service) -> None:
    token = service.token("viewer")
    assert _get(service, "/snapshots", cookies={"refinery_token": token}).status_code == 200
    _assert_401(_get(service, "/snapshots", cookies={"refinery_token": "rfy_wrong"}))


def test_a_viewer_runs_no_job_and_manages_no_token(service: Service) -> None:
    token = service.token("viewer")
    answer = _post(service, "/jobs", token, {"kind": "scan", "params": {}})
    assert answer.status_code == 403 and "engineer" in answer.json()["detail"]
    assert _get(service, "/tokens", token).status_code == 403
    assert _post(service, "/tokens", token, {"name": "x", "role": "admin"}).status_code == 403
    assert _get(service, "/jobs", token).json()["jobs"] == []  # nothing was queued


def test_an_engineer_cannot_promote_roll_back_or_manage_tokens(service: Service) -> None:
    token = service.token("engineer")
    for kind, params in (("promote", {"adapter": "adp_0000"}), ("rollback", {})):
        answer = _post(service, "/jobs", token, {"kind": kind, "params": params})
        assert answer.status_code == 403 and "admin" in answer.json()["detail"], answer.text
    assert _get(service, "/tokens", token).status_code == 403
    assert _post(service, "/tokens", token, {"name": "x", "role": "viewer"}).status_code == 403


def test_an_admin_makes_and_revokes_tokens_over_http(service: Service) -> None:
    admin = service.token("admin", name="alice-admin")
    made = _post(service, "/tokens", admin, {"name": "ci-bot", "role": "viewer"})
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["created_by"] == "alice-admin" and new["role"] == "viewer" and new["token"].startswith("rfy_")
    assert _get(service, "/snapshots", new["token"]).status_code == 200
    listed = _get(service, "/tokens", admin).json()["tokens"]
    assert new["token_id"] in {t["token_id"] for t in listed}
    assert all("token" not in t for t in listed) and new["token"] not in json.dumps(listed)
    revoked = httpx.delete(f"{service.base_url}/tokens/{new['token_id']}", headers={"Authorization": f"Bearer {admin}"})
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    _assert_401(_get(service, "/snapshots", new["token"]))
    gone = httpx.delete(f"{service.base_url}/tokens/tok_000000000000", headers={"Authorization": f"Bearer {admin}"})
    assert gone.status_code == 404


def test_a_token_revoked_with_the_cli_is_refused_at_once(service: Service) -> None:
    made = run_cli(service.root, "token", "create", "--name", "short-lived", "--role", "engineer")
    assert _get(service, "/snapshots", made["token"]).status_code == 200
    run_cli(service.root, "token", "revoke", made["token_id"])
    _assert_401(_get(service, "/snapshots", made["token"]))
    again = run_cli(service.root, "token", "revoke", made["token_id"])  # twice: nothing changes
    assert again["revoked_at"] is not None


def test_tokens_are_shown_once_and_stored_hashed(service: Service) -> None:
    made = run_cli(service.root, "token", "create", "--name", "hash-check", "--role", "viewer")
    token = made["token"]
    assert token.startswith("rfy_") and len(token) >= 40
    listed = run_cli(service.root, "token", "list")["tokens"]
    entry = next(t for t in listed if t["token_id"] == made["token_id"])
    assert entry["name"] == "hash-check" and "token" not in entry and token not in json.dumps(listed)
    rows = Workspace(service.root).catalog.query("SELECT * FROM api_tokens WHERE token_id = ?", [made["token_id"]])
    assert rows[0]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(rows, default=str)
    for name in ("catalog.duckdb", "catalog.duckdb.wal"):
        path: Path = service.root / name
        if path.exists():
            assert token.encode() not in path.read_bytes(), name


def test_a_wrong_role_or_name_is_refused_by_the_cli(service: Service) -> None:
    bad = invoke_cli(service.root, "token", "create", "--name", "x", "--role", "root", "--json")
    assert bad.exit_code == 2 and "unknown role 'root'" in json.loads(bad.stdout)["error"]
    blank = invoke_cli(service.root, "token", "create", "--name", "  ", "--role", "viewer", "--json")
    assert blank.exit_code == 2
    unknown = invoke_cli(service.root, "token", "revoke", "tok_nope", "--json")
    assert unknown.exit_code == 2 and "no token" in json.loads(unknown.stdout)["error"]


def test_no_token_ever_reaches_the_server_log(service: Service) -> None:
    """Last in this module: every token used above, valid, wrong, revoked or sent as a cookie, is absent from
    everything the server printed."""
    tokens = service.made_tokens()
    tokens.append(run_cli(service.root, "token", "create", "--name", "log-check", "--role", "viewer")["token"])
    _get(service, "/snapshots", tokens[-1])
    _get(service, "/snapshots", cookies={"refinery_token": tokens[-1]})
    _get(service, f"/snapshots?token={tokens[-1][:10]}")
    log = service.log()
    assert "GET /snapshots" in log  # the access log is on
    for token in tokens:
        assert token not in log and token[4:20] not in log
