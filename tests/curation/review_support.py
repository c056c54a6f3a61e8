"""Helpers for the review tests: a planted, scanned workspace, a real local Argilla server for it, annotators,
and a fault-injecting HTTP proxy placed between Refinery and that server.

The server is argilla-server 2.8.0 from its own venv (``.venv/argilla-server``), started by ``review serve``; the
fixture that uses these helpers is ``review_env`` in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from curation.checks import run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.review.connection import Connection
from curation.review.server import serve, server_venv, stop
from schemas.catalog import Catalog
from tests.support.require import in_ci

#: Marks for every test that talks to the real server (slow: a server start is 5-30 s).
NEEDS_SERVER = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (server_venv() / "bin" / "python").exists() and not in_ci(),
        reason="argilla-server venv missing (make install creates it)",
    ),
]
#: Quick retries for tests against the real server (the defaults wait 0.5 s, 1 s, 2 s).
TEST_BACKOFF = "0.05"


def chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ReviewEnv:
    """A scanned workspace with its own running Argilla server."""

    ws: Path
    catalog: Catalog
    scan_id: str
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def port(self) -> int:
        return int(urllib.parse.urlsplit(self.url).port or 0)


def planted_workspace(root: Path) -> tuple[Path, Catalog, str]:
    """20 clean chats, an exact duplicate pair and two same-prompt conflicts, ingested and scanned."""
    ws = root / "ws"
    ws.mkdir(parents=True)
    catalog = Catalog(ws / "catalog.duckdb")
    catalog.migrate()
    lines = [chat(f"question {i} about topic {i}", f"answer {i}") for i in range(20)]
    lines += [
        chat("Where is my card?", "card_lost"),
        chat("where is my  CARD", "card_lost"),  # exact duplicate
        chat("Has my top up gone through?", "pending_top_up"),
        chat("Has my top up gone through?", "top_up_failed"),  # same prompt, conflicting answer
        chat("Can I change my PIN?", "change_pin"),
        chat("Can I change my PIN?", "pin_blocked"),
    ]
    data = root / "train.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest(catalog, [data], IngestOptions(name="train"))
    scan = run_scan(catalog, ["exact", "exact_prompt"])
    return ws, catalog, scan.scan_id


@contextlib.contextmanager
def review_environment(root: Path) -> Iterator[ReviewEnv]:
    """A planted workspace and its server; ARGILLA_* variables hidden, quick retries, everything stopped after."""
    saved = {k: os.environ.pop(k) for k in ("ARGILLA_API_URL", "ARGILLA_API_KEY") if k in os.environ}
    previous = {k: os.environ.get(k) for k in ("REFINERY_PROGRESS", "REFINERY_REVIEW_BACKOFF")}
    os.environ["REFINERY_PROGRESS"] = "0"
    os.environ["REFINERY_REVIEW_BACKOFF"] = TEST_BACKOFF
    ws, catalog, scan_id = planted_workspace(root)
    try:
        info = serve(ws, port=free_port())
        yield ReviewEnv(ws, catalog, scan_id, info)
    finally:
        stop(ws)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.update(saved)


def annotator_key(url: str, owner: Any, name: str, workspace: str, password: str | None = None) -> str:
    """Create (once) annotator ``name`` with the owner's SDK client, add it to ``workspace``, return its API key.

    The SDK's ``User`` has no key: it comes from ``POST /api/v1/token`` (password sign-in) then ``GET /api/v1/me``.
    """
    import argilla as rg

    password = password or name + "-pass-1234"
    user = owner.users(name) or rg.User(username=name, password=password, role="annotator", client=owner).create()
    with contextlib.suppress(Exception):  # already a member
        user.add_to_workspace(owner.workspaces(workspace))
    token = requests.post(f"{url}/api/v1/token", data={"username": name, "password": password}, timeout=30).json()
    me = requests.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=30)
    return str(me.json()["api_key"])


def argilla_ids(connection: Connection, dataset_name: str, workspace: str = "refinery") -> list[str]:
    """The Refinery record ids the server holds in ``dataset_name`` (as the owner sees them), duplicates kept."""
    dataset = connection.client().datasets(name=dataset_name, workspace=workspace)
    assert dataset is not None, f"no dataset {dataset_name}"
    return sorted(str(r.id) for r in dataset.records())


def annotator_queue(url: str, key: str, dataset_id: str) -> dict[str, str]:
    """The annotator's own queue in a dataset: Refinery record id (Argilla's external id) -> Argilla record id."""
    found = requests.post(
        f"{url}/api/v1/me/datasets/{dataset_id}/records/search",
        headers={"X-Argilla-Api-Key": key},
        json={},
        params={"limit": 100},
        timeout=30,
    )
    found.raise_for_status()
    return {str(item["record"]["external_id"]): str(item["record"]["id"]) for item in found.json()["items"]}


def respond_as(url: str, key: str, dataset_id: str, answers: dict[str, dict[str, str]]) -> None:
    """Submit ``answers`` (Refinery record id -> question values) from the annotator's own queue."""
    queue = annotator_queue(url, key, dataset_id)
    for record_id, values in answers.items():
        response = requests.post(
            f"{url}/api/v1/records/{queue[record_id]}/responses",
            headers={"X-Argilla-Api-Key": key},
            json={"values": {q: {"value": v} for q, v in values.items()}, "status": "submitted"},
            timeout=30,
        )
        assert response.status_code == 201, response.text


def item_ids(catalog: Catalog, round_name: str, pushed_only: bool = False) -> list[str]:
    where = " AND pushed_at IS NOT NULL" if pushed_only else ""
    rows = catalog.query(f"SELECT record_id FROM review_items WHERE round_name = ?{where}", [round_name])
    return sorted(r["record_id"] for r in rows)


# ------------------------------------------------------------------------------------------- fault injection


@dataclass
class Fault:
    """What the proxy does to requests whose method is ``method`` and whose path contains ``path``.

    ``action``: 'status' answers ``status`` without asking the server; 'drop' closes the connection with no
    answer (a server that went away); 'delay' waits ``seconds`` and then drops (a client timeout);
    'forward_then' forwards the request, runs ``then`` (e.g. SIGKILL the server) and drops the answer.
    ``skip`` matching requests pass first; then ``times`` are hit (None: all).
    """

    method: str
    path: str
    action: str = "status"
    status: int = 500
    seconds: float = 0.0
    times: int | None = 1
    skip: int = 0
    then: Callable[[], None] | None = None
    seen: int = 0
    hit: int = 0

    def applies(self, method: str, path: str) -> bool:
        if method != self.method or self.path not in path:
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.hit >= self.times):
            return False
        self.hit += 1
        return True


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "te"}


@dataclass
class FaultProxy:
    """A local HTTP proxy to ``upstream`` that injects :class:`Fault` s and logs every request it saw."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, what happened)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, *faults: Fault) -> FaultProxy:
        with self._lock:
            self.faults.extend(faults)
        return self

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(self, method: str, path: str, outcome: str | None = None) -> int:
        return sum(1 for m, p, o in self.log if m == method and path in p and (outcome is None or o == outcome))

    def _decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            return next((f for f in self.faults if f.applies(method, path)), None)

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, path, outcome))

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        target = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=120)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            conn.close()

    def __enter__(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                method, path = self.command, self.path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                fault = proxy._decide(method, path)
                if fault is not None and fault.action == "status":
                    proxy._record(method, path, str(fault.status))
                    self._answer(fault.status, [("Content-Type", "application/json")], b'{"detail": "injected"}')
                    return
                if fault is not None and fault.action in ("drop", "delay"):
                    proxy._record(method, path, fault.action)
                    time.sleep(fault.seconds)
                    self.close_connection = True
                    return
                try:
                    status, answer_headers, answer = proxy._forward(method, path, headers, body)
                except OSError:  # the server is down: answer like a reverse proxy would
                    proxy._record(method, path, "502")
                    self._answer(502, [("Content-Type", "application/json")], b'{"detail": "bad gateway"}')
                    return
                if fault is not None and fault.action == "forward_then":
                    proxy._record(method, path, f"forwarded {status}, answer dropped")
                    if fault.then is not None:
                        fault.then()
                    self.close_connection = True
                    return
                proxy._record(method, path, str(status))
                self._answer(status, answer_headers, answer)

            def _answer(self, status: int, headers: list[Any], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
