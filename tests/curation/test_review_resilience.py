"""Review against a REAL Argilla server when things go wrong: injected 5xx, dropped connections and timeouts
(retried with backoff, bounded), a server SIGKILLed in the middle of a push and restarted, and an annotator's
API key trying to write or delete.

Faults are injected by a local proxy between Refinery and the server (``review_support.FaultProxy``), so every
failure the client sees is a real HTTP exchange. The waits between retries are recorded, not slept.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from typer.testing import CliRunner

import curation.review.connection as connection_module
from curation.review.connection import (
    Connection,
    RetryPolicy,
    ReviewPaths,
    ReviewPermissionError,
    ReviewServerError,
    load_server_state,
    resolve_connection,
)
from curation.review.pull import pull
from curation.review.push import push
from curation.review.server import LAUNCHER, _alive, serve
from refinery.cli import app
from tests.curation.review_support import (
    NEEDS_SERVER,
    Fault,
    FaultProxy,
    ReviewEnv,
    annotator_key,
    argilla_ids,
    item_ids,
    review_environment,
)

pytestmark = NEEDS_SERVER

BULK = "/records/bulk"  # PUT /api/v1/datasets/{id}/records/bulk: the upsert each pushed batch is


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(connection_module, "sleep", recorded.append)
    return recorded


@pytest.fixture
def proxy(review_env: ReviewEnv) -> Iterator[FaultProxy]:
    with FaultProxy(review_env.url) as running:
        yield running


def _through(proxy: FaultProxy, env: ReviewEnv, **policy: Any) -> Connection:
    """The owner's connection, sent through the proxy."""
    owner = resolve_connection(env.ws)
    return Connection(proxy.url, owner.api_key, "test", RetryPolicy(**{"attempts": 3, "backoff": 0.05, **policy}))


def test_5xx_and_dropped_connections_are_retried_and_the_push_completes(
    review_env: ReviewEnv, proxy: FaultProxy, waits: list[float]
) -> None:
    catalog = review_env.catalog
    proxy.add(
        Fault("GET", "/api/v1/me", action="drop"),  # signing in: the connection is closed with no answer
        Fault("PUT", BULK, status=500, times=2, skip=1),  # batch 2 gets 500 twice, then passes
    )
    result = push(catalog, _through(proxy, review_env), round_name="retry", batch_size=2)
    assert result.queued == 6 and result.pushed == 6 and result.already_pushed == 0
    assert proxy.count("GET", "/api/v1/me", "drop") == 1
    assert proxy.count("PUT", BULK, "500") == 2 and proxy.count("PUT", BULK, "200") == 3
    assert waits == [0.05, 0.05, 0.1]  # one retry of signing in; batch 2: 0.05 s, then twice as long
    assert argilla_ids(resolve_connection(review_env.ws), "refinery-retry") == item_ids(catalog, "retry")
    assert item_ids(catalog, "retry", pushed_only=True) == item_ids(catalog, "retry")


def test_timeouts_and_gateway_errors_on_pull_are_retried(
    review_env: ReviewEnv, proxy: FaultProxy, waits: list[float]
) -> None:
    catalog = review_env.catalog
    if not catalog.scalar("SELECT count(*) FROM review_rounds WHERE round_name = 'retry'"):
        push(catalog, resolve_connection(review_env.ws), round_name="retry")
    proxy.add(
        Fault("GET", "/api/v1/users", status=503),
        Fault("GET", "/records", action="delay", seconds=4.0),  # longer than the 1 s timeout: the client gives up
    )
    [result] = pull(catalog, _through(proxy, review_env, timeout=1.0), "retry")
    assert result.fetched == 0 and result.states == {"pending": 6}
    assert proxy.count("GET", "/api/v1/users", "503") == 1 and proxy.count("GET", "/records", "delay") == 1
    assert proxy.count("GET", "/records", "200") == 1 and waits == [0.05, 0.05]


def test_a_server_that_keeps_failing_stops_the_push_clearly_and_a_rerun_resumes(
    review_env: ReviewEnv, proxy: FaultProxy, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = review_env.catalog
    connection = _through(proxy, review_env)
    proxy.add(Fault("PUT", BULK, status=500, times=None, skip=1))  # batch 1 passes, then 500 for good
    with pytest.raises(ReviewServerError) as caught:
        push(catalog, connection, round_name="keeps", batch_size=2)
    message = str(caught.value)
    assert message.startswith(f"pushing records 3-4 of 6 at {proxy.url} failed after 3 attempts (InternalServerError")
    assert "rerun the command to resume" in message and connection.api_key not in message
    assert proxy.count("PUT", BULK) == 1 + 3 and waits == [0.05, 0.1]  # bounded: 3 attempts for batch 2
    assert len(item_ids(catalog, "keeps", pushed_only=True)) == 2
    # the server recovers: the CLI rerun pushes the other 4, and Argilla holds each record once
    proxy.clear()
    monkeypatch.setenv("ARGILLA_API_URL", proxy.url)
    monkeypatch.setenv("ARGILLA_API_KEY", connection.api_key)
    run = CliRunner().invoke(
        app, ["--workspace", str(review_env.ws), "--quiet", "review", "push", "--round", "keeps", "--json"]
    )
    assert run.exit_code == 0, run.output
    rerun = json.loads(run.stdout)
    assert rerun["pushed"] == 4 and rerun["already_pushed"] == 2
    assert argilla_ids(resolve_connection(review_env.ws), "refinery-keeps") == item_ids(catalog, "keeps")


def test_server_killed_mid_push_then_restarted_resumes_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the server right after it stored batch 2, before its answer reached Refinery; restart it on the
    same workspace and port; the rerun sends what the catalog has not marked (batch 2 again: an upsert)."""
    from argilla._api._records import RecordsAPI

    with review_environment(tmp_path) as env:
        catalog, paths = env.catalog, ReviewPaths(env.ws)
        state = load_server_state(paths)
        assert state is not None
        pid, redis_pid = int(state["pid"]), state["redis_pid"]
        calls: list[int] = []
        real_upsert = RecordsAPI.bulk_upsert

        def upsert_then_kill(self: Any, dataset_id: Any, records: Any) -> Any:
            calls.append(len(records))
            result = real_upsert(self, dataset_id, records)  # after the server is killed: a real ConnectError
            if len(calls) == 2:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            return result

        monkeypatch.setattr(RecordsAPI, "bulk_upsert", upsert_then_kill)
        with pytest.raises(ReviewServerError, match=r"pushing records 3-4 of 6 .* failed after 4 attempts \(Connect"):
            push(catalog, resolve_connection(env.ws), round_name="crash", batch_size=2)
        monkeypatch.undo()
        assert calls == [2, 2, 2, 2, 2] and not _alive(pid, str(LAUNCHER))
        assert len(item_ids(catalog, "crash", pushed_only=True)) == 2  # batch 1 marked; batch 2's answer was lost

        info = serve(env.ws, port=env.port)
        assert not info["already_running"] and info["pid"] != pid and info["url"] == env.url
        assert redis_pid is None or not _alive(redis_pid, "redis-server")  # the dead server's redis was stopped
        connection = resolve_connection(env.ws)
        assert len(argilla_ids(connection, "refinery-crash")) == 4  # batches 1 and 2 survived the SIGKILL

        result = push(catalog, connection, round_name="crash", batch_size=2)
        assert result.pushed == 4 and result.already_pushed == 2
        held = argilla_ids(connection, "refinery-crash")
        assert held == item_ids(catalog, "crash") and len(held) == len(set(held)) == 6
        assert item_ids(catalog, "crash", pushed_only=True) == item_ids(catalog, "crash")
        [pulled] = pull(catalog, connection, "crash")  # and the restarted server serves the round as before
        assert pulled.states == {"pending": 6}


def test_an_annotator_key_cannot_push_pull_or_delete(review_env: ReviewEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    import argilla as rg
    from argilla._exceptions import ForbiddenError

    catalog, url = review_env.catalog, review_env.url
    owner_connection = resolve_connection(review_env.ws)
    push(catalog, owner_connection, round_name="guarded", checks=["exact_prompt"], limit=2)
    owner = owner_connection.client()
    key = annotator_key(url, owner, "mallory", "refinery")
    annotator = Connection(url, key, "test", owner_connection.retry)
    before = argilla_ids(owner_connection, "refinery-guarded")
    assert len(before) == 2

    # a new round: creating its dataset is refused, and nothing is created
    with pytest.raises(ReviewPermissionError) as created:
        push(catalog, annotator, round_name="guarded-new")
    assert str(created.value).startswith(f"preparing dataset refinery-guarded-new at {url} was refused")
    assert key not in str(created.value) and "owner's or admin's key" in str(created.value)
    assert owner.datasets(name="refinery-guarded-new", workspace="refinery") is None
    # (that refusal is the SDK's own role check; the server refuses the creation itself as well)
    workspace_id = str(owner.workspaces("refinery").id)
    created_raw = requests.post(
        f"{url}/api/v1/datasets",
        headers={"X-Argilla-Api-Key": key},
        json={"name": "refinery-guarded-raw", "workspace_id": workspace_id},
        timeout=30,
    )
    assert created_raw.status_code == 403, created_raw.text
    assert owner.datasets(name="refinery-guarded-raw", workspace="refinery") is None
    # more records into the round's dataset: the server answers 403 to the upsert
    with pytest.raises(
        ReviewPermissionError, match=r"pushing records 1-4 of 4 at .* was refused \(ForbiddenError"
    ) as up:
        push(catalog, annotator, round_name="guarded", checks=["exact_prompt"])
    assert key not in str(up.value)
    # reading every response of the round (the users listing) is refused too
    with pytest.raises(ReviewPermissionError, match="listing users"):
        pull(catalog, annotator, "guarded")
    monkeypatch.setenv("ARGILLA_API_URL", url)
    monkeypatch.setenv("ARGILLA_API_KEY", key)
    run = CliRunner().invoke(app, ["--workspace", str(review_env.ws), "review", "push", "--round", "guarded"])
    assert run.exit_code == 2 and "was refused" in run.output and key not in run.output

    # deleting the round's dataset with the annotator's key: refused by the server (403), through the SDK and raw
    as_annotator = rg.Argilla(api_url=url, api_key=key)
    dataset = as_annotator.datasets(name="refinery-guarded", workspace="refinery")
    assert dataset is not None
    with pytest.raises(ForbiddenError) as denied:
        dataset.delete()
    assert denied.value.status_code == 403
    raw = requests.delete(f"{url}/api/v1/datasets/{dataset.id}", headers={"X-Argilla-Api-Key": key}, timeout=30)
    assert raw.status_code == 403
    # the dataset is still there, published, with the same records; the catalog has pushed nothing more
    kept = owner.datasets(name="refinery-guarded", workspace="refinery")
    assert kept is not None and str(kept.id) == str(dataset.id) and kept._model.status == "ready"
    assert argilla_ids(owner_connection, "refinery-guarded") == before
    assert item_ids(catalog, "guarded", pushed_only=True) == before
