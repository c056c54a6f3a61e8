"""Helpers for the job tests: submit a job to the real server, wait for a state, compare with the CLI's output."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.service import Service

FINISHED = ("succeeded", "failed", "cancelled")


def client(service: Service, role: str = "engineer", name: str | None = None) -> httpx.Client:
    token = service.token(role, name)
    return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def submit(http: httpx.Client, kind: str, **params: Any) -> str:
    answer = http.post("/jobs", json={"kind": kind, "params": params})
    assert answer.status_code == 202, answer.text
    assert answer.json()["state"] == "queued"
    return str(answer.json()["job_id"])


def wait_job(
    http: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool] = lambda job: job["state"] in FINISHED,
    timeout: float = 180.0,
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until ``until(job)``; the job then."""
    deadline = time.monotonic() + timeout
    while True:
        answer = http.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not get there in {timeout:.0f}s: {job}"
        time.sleep(0.1)


def run_job(http: httpx.Client, kind: str, timeout: float = 180.0, **params: Any) -> dict[str, Any]:
    """Submit a job and wait for its end; the finished job."""
    return wait_job(http, submit(http, kind, **params), timeout=timeout)


def without(payload: Any, volatile: frozenset[str] = frozenset()) -> Any:
    """A JSON value without the keys whose values differ between two identical runs: timings (``seconds``,
    ``*_seconds``, ``tokens_per_second``), memory use (``peak_*_mb``) and ``volatile``."""
    if isinstance(payload, dict):
        return {
            k: without(v, volatile)
            for k, v in payload.items()
            if k not in volatile
            and not k.endswith("seconds")
            and k != "tokens_per_second"
            and not (k.startswith("peak_") and k.endswith("_mb"))
        }
    if isinstance(payload, list):
        return [without(v, volatile) for v in payload]
    return payload


def alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
