"""kill -9 during `refinery review pull`, against a real local Argilla server (argilla-server 2.8.0).

The scanned workspace gets its own server (``refinery review serve``'s library function); its flagged records are
pushed as round ``r1`` with two annotators each; alice and bob answer through Argilla's REST API with their own
keys (approvals, rejections, a disagreement, and an edit both make, which becomes a new record version). Then the
pull is killed and rerun like every other stage (``kill_trials``). The server's database lives in the workspace
(``argilla/``): restoring the workspace leaves it alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from collections.abc import Iterator
from typing import Any

import requests

from tests.reliability.bench import Bench
from tests.reliability.kill_trials import Stage, kill_trials
from tests.reliability.rows import Row

ROUND = "r1"
KEEP = ("argilla",)


def _respond(url: str, key: str, dataset_id: str, answer: Any) -> int:
    """Every record of the annotator's queue answered by ``answer(index, external id)``; how many."""
    found = requests.post(
        f"{url}/api/v1/me/datasets/{dataset_id}/records/search",
        headers={"X-Argilla-Api-Key": key},
        json={},
        params={"limit": 500},
        timeout=60,
    )
    found.raise_for_status()
    items = sorted(found.json()["items"], key=lambda item: item["record"]["external_id"])
    for index, item in enumerate(items):
        values = answer(index, item["record"]["external_id"])
        response = requests.post(
            f"{url}/api/v1/records/{item['record']['id']}/responses",
            headers={"X-Argilla-Api-Key": key},
            json={"values": {q: {"value": v} for q, v in values.items()}, "status": "submitted"},
            timeout=60,
        )
        if response.status_code != 201:
            raise RuntimeError(f"answering {item['record']['external_id']}: {response.text}")
    return len(items)


@contextlib.contextmanager
def reviewed_workspace(bench: Bench, scanned: str) -> Iterator[int]:
    """The scanned state with a running server, round r1 pushed and answered, saved as ``reviewed``; yields the
    number of records answered. The server is stopped on exit."""
    from curation.review.connection import resolve_connection
    from curation.review.push import push
    from curation.review.server import serve, stop
    from tests.curation.review_support import annotator_key, free_port

    saved = {k: os.environ.pop(k) for k in ("ARGILLA_API_URL", "ARGILLA_API_KEY") if k in os.environ}
    bench.restore(scanned)
    logging.getLogger("argilla").setLevel(logging.ERROR)
    with contextlib.ExitStack() as stack:
        stack.callback(os.environ.update, saved)
        stack.enter_context(warnings.catch_warnings())  # the SDK warns of each user, workspace, dataset not found yet
        warnings.simplefilter("ignore")
        stack.callback(stop, bench.ws)
        info = serve(bench.ws, port=free_port())
        connection = resolve_connection(bench.ws)
        push(bench.catalog, connection, round_name=ROUND, min_submitted=2)
        dataset_id = bench.catalog.scalar("SELECT argilla_dataset_id FROM review_rounds WHERE round_name = ?", [ROUND])
        owner, url = connection.client(), str(info["url"])
        alice = annotator_key(url, owner, "alice", "refinery")
        bob = annotator_key(url, owner, "bob", "refinery")
        edit = {"decision": "edit", "corrected_response": "card_lost", "comment": "label fixed"}
        # both edit record 1 alike; record 0 is a disagreement (alice rejects, bob approves); the rest agree
        answered = _respond(url, alice, dataset_id, lambda i, _: edit if i == 1 else {
            "decision": "approve" if i % 3 else "reject"})  # fmt: skip
        _respond(url, bob, dataset_id, lambda i, _: edit if i == 1 else {
            "decision": "approve" if i % 3 or i == 0 else "reject"})  # fmt: skip
        bench.save("reviewed")
        yield answered


def review_pull_trials(bench: Bench, scanned: str, trials: int, rng: random.Random) -> Row:
    """``trials`` kills of ``refinery review pull`` (marked slow in pytest: a server start is 10-60 s)."""
    with reviewed_workspace(bench, scanned) as answered:
        stage = Stage("review pull", ("review", "pull", "--round", ROUND), "reviewed", "pulled", keep=KEEP)
        row, reference = kill_trials(bench, stage, trials, rng)
    decided = reference.json
    rounds = decided.get("rounds", []) if isinstance(decided, dict) else []
    summary = rounds[0] if rounds else {}
    row.details.insert(
        0,
        f"{answered} records answered by 2 annotators; the reference pull made decisions: "
        f"{summary.get('new_decisions')}, edited records: {summary.get('new_edits')}",
    )
    return row
