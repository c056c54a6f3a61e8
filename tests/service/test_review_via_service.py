"""Review push and pull as jobs of the real `refinery serve`, against the real Argilla server the review tests start
(tests/curation/review_support.py): the push job fills an Argilla dataset, an annotator answers there, the pull
job applies the decisions; results are the CLI's --json outputs, and the Argilla key reaches no job file."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from curation.review.connection import ReviewPaths, resolve_connection
from tests.curation.review_support import (
    NEEDS_SERVER,
    ReviewEnv,
    annotator_key,
    annotator_queue,
    argilla_ids,
    item_ids,
    respond_as,
    review_environment,
)
from tests.service.jobs_support import client, run_job
from tests.support.cli import run_cli
from tests.support.service import Service, running_service

pytestmark = NEEDS_SERVER


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReviewEnv, Service]]:
    """A planted, scanned workspace with its Argilla server, and `refinery serve` over it."""
    with review_environment(tmp_path_factory.mktemp("review-service")) as env, running_service(env.ws) as service:
        yield env, service


def _approve_all(url: str, key: str, dataset_id: str) -> list[str]:
    """The annotator approves every record in its queue; the Refinery record ids it answered."""
    queue = annotator_queue(url, key, dataset_id)
    respond_as(url, key, dataset_id, {record_id: {"decision": "approve"} for record_id in queue})
    return sorted(queue)


def test_review_push_and_pull_run_as_jobs(served: tuple[ReviewEnv, Service]) -> None:
    env, service = served
    with client(service, "engineer", "curator-cy") as http:
        push = run_job(http, "review_push", round="svc", checks=["exact", "exact_prompt"], annotators=1)
    assert push["state"] == "succeeded", push
    result = push["result"]
    assert result["round_name"] == "svc" and result["pushed"] > 0 and result["api_url"] == env.url
    pushed = item_ids(env.catalog, "svc", pushed_only=True)
    assert len(pushed) == result["pushed"]
    assert argilla_ids(resolve_connection(env.ws), result["dataset_name"]) == pushed
    # the CLI's push of the same round: the same --json keys, and nothing pushed twice (the job's push is done)
    again = run_cli(env.ws, "review", "push", "--round", "svc", "--checks", "exact,exact_prompt")
    assert set(again) == set(result) and again["pushed"] == 0 and again["already_pushed"] == result["pushed"]

    connection = resolve_connection(env.ws)
    alice = annotator_key(connection.api_url, connection.client(), "alice", "refinery")
    answered = _approve_all(env.url, alice, result["dataset_id"])
    assert answered == pushed

    with client(service, "engineer", "curator-cy") as http:
        pull = run_job(http, "review_pull", round="svc")
    assert pull["state"] == "succeeded", pull
    (round_result,) = pull["result"]["rounds"]
    assert round_result["round_name"] == "svc"
    assert round_result["new_responses"] == len(pushed) and round_result["new_decisions"] == len(pushed)
    decisions = env.catalog.query(
        "SELECT record_id, decision, actor FROM review_decisions WHERE round_name = 'svc' ORDER BY record_id"
    )
    assert [d["record_id"] for d in decisions] == pushed
    assert {(d["decision"], d["actor"]) for d in decisions} == {("approve", "alice")}
    assert [j["created_by"] for j in (push, pull)] == ["curator-cy", "curator-cy"]

    # the Argilla API key is in the workspace's 0600 credentials file, never in a job's files
    key = json.loads(ReviewPaths(env.ws).credentials.read_text())["api_key"]
    texts = [p.read_text(errors="replace") for p in (env.ws / "jobs").rglob("*") if p.is_file()]
    assert texts and not any(key in text or alice in text for text in texts)


def test_a_push_of_an_unknown_scan_fails_with_the_cli_error(served: tuple[ReviewEnv, Service]) -> None:
    service = served[1]
    with client(service) as http:
        job = run_job(http, "review_push", scan="scan_does_not_exist", round="nothing")
    assert job["state"] == "failed" and job["exit_code"] == 2
    assert job["error"] == "no scan 'scan_does_not_exist' in the catalog"
