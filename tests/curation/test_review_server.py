"""Review against a REAL Argilla server (argilla-server 2.8.0 from its own venv, SQL search, redis-server).

One server for the module: serve into a temporary workspace, push a planted scan, submit responses as two
annotators through the REST API with their own keys, pull, and check decisions, edit versions, idempotence,
agreement, status, calibrate, resumption after injected faults, and that the key appears in no log or output.

Every test can run alone: round r1 of the served workspace is pushed and answered by module fixtures (both
idempotent), and the tests that need a workspace of their own (a resumed push, vectors, calibration under a
budget) make a fresh planted workspace that talks to the same server as a team deployment (``review.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from curation.review.connection import ReviewPaths, ReviewServerError, resolve_connection
from curation.review.pull import pull
from curation.review.push import push, push_round
from curation.review.status import calibrate, status
from refinery.cli import app
from schemas.catalog import Catalog
from tests.curation.review_support import NEEDS_SERVER, ReviewEnv, annotator_key, planted_workspace, respond_as

pytestmark = NEEDS_SERVER


def _counts(catalog: Catalog) -> dict[str, int]:
    tables = (
        "review_responses",
        "review_decisions",
        "records",
        "record_versions",
        "review_outcomes",
        "review_agreement",
    )
    return {t: int(catalog.scalar(f"SELECT count(*) FROM {t}")) for t in tables}


def _ids(catalog: Catalog) -> dict[str, str]:
    """'prompt|response' -> record id."""
    return {r["prompt"] + "|" + r["response"]: r["record_id"] for r in catalog.query("SELECT * FROM records")}


def _team_workspace(env: ReviewEnv, root: Path) -> tuple[Path, Catalog]:
    """A fresh planted, scanned workspace whose review commands use the module's server as a team deployment."""
    ws, catalog, _ = planted_workspace(root)
    key = json.loads(ReviewPaths(env.ws).credentials.read_text())["api_key"]
    (ws / "review.json").write_text(json.dumps({"api_url": env.url, "api_key": key}), encoding="utf-8")
    return ws, catalog


def _cli(ws: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", *args, "--json"])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


@pytest.fixture(scope="module")
def round_r1(review_env: ReviewEnv) -> Any:
    """Round r1 of the served workspace: its flagged records pushed, two annotators per record (idempotent)."""
    return push(review_env.catalog, resolve_connection(review_env.ws), round_name="r1", min_submitted=2)


@pytest.fixture(scope="module")
def answered_r1(review_env: ReviewEnv, round_r1: Any) -> dict[str, str]:
    """alice and bob answer round r1 in Argilla (not pulled yet); returns name -> record id."""
    catalog, connection = review_env.catalog, resolve_connection(review_env.ws)
    owner, url = connection.client(), connection.api_url
    dataset_id = catalog.scalar("SELECT argilla_dataset_id FROM review_rounds WHERE round_name = 'r1'")
    ids = _ids(catalog)
    named = {
        "dup": ids["where is my  CARD|card_lost"],
        "kept": ids["Where is my card?|card_lost"],
        "wrong": ids["Has my top up gone through?|top_up_failed"],
        "right": ids["Has my top up gone through?|pending_top_up"],
        "pin": ids["Can I change my PIN?|pin_blocked"],
    }
    dup, kept, wrong, right, pin = (named[k] for k in ("dup", "kept", "wrong", "right", "pin"))
    alice = annotator_key(url, owner, "alice", "refinery")
    bob = annotator_key(url, owner, "bob", "refinery")
    respond_as(url, alice, dataset_id, {
        dup: {"decision": "reject"}, kept: {"decision": "approve"}, right: {"decision": "approve"},
        wrong: {"decision": "edit", "corrected_response": "pending_top_up", "comment": "label was wrong"},
        pin: {"decision": "approve"},
    })  # fmt: skip
    respond_as(url, bob, dataset_id, {
        dup: {"decision": "reject"}, kept: {"decision": "approve"}, right: {"decision": "approve"},
        wrong: {"decision": "edit", "corrected_response": "pending_top_up"}, pin: {"decision": "reject"},
    })  # fmt: skip
    return named


def test_push_resumes_after_a_failure_without_duplicates(
    review_env: ReviewEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from argilla.records._dataset_records import DatasetRecords

    ws, catalog = _team_workspace(review_env, tmp_path)
    connection = resolve_connection(ws)
    calls = {"n": 0}
    real_log = DatasetRecords.log

    def flaky(self: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] >= 2:  # the server went away after the first batch, and stays away
            import httpx

            raise httpx.ConnectError("server went away")
        return real_log(self, records, *args, **kwargs)

    monkeypatch.setattr(DatasetRecords, "log", flaky)
    with pytest.raises(ReviewServerError, match=f"after {connection.retry.attempts} attempts.*rerun the command"):
        push(catalog, connection, round_name="resume", min_submitted=2, batch_size=2)
    assert calls["n"] == 1 + connection.retry.attempts  # batch 1, then batch 2 tried 4 times (bounded)
    pushed = catalog.scalar("SELECT count(*) FROM review_items WHERE round_name = 'resume' AND pushed_at IS NOT NULL")
    assert pushed == 2
    monkeypatch.setattr(DatasetRecords, "log", real_log)
    result = push(catalog, connection, round_name="resume", min_submitted=2)
    assert result.queued == 6 and result.already_pushed == 2 and result.pushed == 4
    again = push_round(catalog, connection, "resume")
    assert again.pushed == 0 and again.already_pushed == 6
    owner = connection.client()
    dataset = owner.datasets(name="refinery-resume", workspace="refinery")
    server_records = list(dataset.records(with_suggestions=True))
    assert sorted(r.id for r in server_records) == sorted(
        r["record_id"] for r in catalog.query("SELECT record_id FROM review_items WHERE round_name = 'resume'")
    )
    flagged = {r.id: r for r in server_records}
    dup = catalog.scalar("SELECT record_id FROM records WHERE prompt = 'where is my  CARD'")
    assert flagged[dup].fields["other_prompt"] == "Where is my card?"
    assert flagged[dup].suggestions["decision"].value == "reject"
    assert flagged[dup].metadata["score_exact"] == 1.0


def test_pull_applies_decisions_edits_and_agreement_idempotently(
    review_env: ReviewEnv, answered_r1: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, ws = review_env.catalog, review_env.ws
    connection = resolve_connection(ws)
    dup, kept, wrong, right, pin = (answered_r1[k] for k in ("dup", "kept", "wrong", "right", "pin"))

    # a pull interrupted after storing the raw responses: nothing applied, the rerun completes
    import curation.review.pull as pull_module

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("killed")

    monkeypatch.setattr(pull_module, "apply_round", broken)
    with pytest.raises(RuntimeError, match="killed"):
        pull(catalog, connection, "r1")
    assert catalog.scalar("SELECT count(*) FROM review_responses") == 10
    assert catalog.scalar("SELECT count(*) FROM review_decisions") == 0
    monkeypatch.undo()

    [result] = pull(catalog, connection, "r1")
    assert result.new_responses == 0 and result.fetched == 10 and result.new_decisions == 4
    decisions = {d["record_id"]: d for d in catalog.query("SELECT * FROM record_decisions")}
    assert decisions[dup]["decision"] == "reject" and decisions[kept]["decision"] == "approve"
    assert decisions[right]["decision"] == "approve" and pin not in decisions
    edit = decisions[wrong]
    assert edit["decision"] == "edit" and edit["actor"] == "alice,bob" and edit["comment"] == "label was wrong"
    assert edit["source"] == "argilla" and edit["round_name"] == "r1" and "exact_prompt" in edit["check_names"]
    assert len(json.loads(edit["external_ids_json"])["response_ids"]) == 2
    new = catalog.query("SELECT * FROM records WHERE record_id = ?", [edit["edited_record_id"]])[0]
    assert new["response"] == "pending_top_up" and new["prompt"] == "Has my top up gone through?"
    assert new["parent_record_id"] == wrong
    version = catalog.query("SELECT * FROM record_versions WHERE record_id = ?", [new["record_id"]])[0]
    assert version["parent_record_id"] == wrong and version["kind"] == "edit" and version["source_id"] == "r1"
    outcome = catalog.query("SELECT * FROM review_outcomes WHERE record_id = ?", [pin])[0]
    assert outcome["state"] == "disagreement" and json.loads(outcome["votes_json"]) == {"approve": 1, "reject": 1}
    figures = {a["annotator"]: a for a in catalog.query("SELECT * FROM review_agreement WHERE round_name = 'r1'")}
    assert figures["*"]["records"] == 5 and figures["*"]["agreement"] == pytest.approx(0.8)
    assert figures["alice"]["agreement"] == pytest.approx(0.8) and figures["bob"]["records"] == 5

    before = _counts(catalog)
    [second] = pull(catalog, connection, "r1")
    assert second.new_responses == 0 and second.new_decisions == 0 and _counts(catalog) == before

    [row] = status(catalog, "r1")
    assert row["items"] == 6 and row["pushed"] == 6 and row["decided"] == 4 and row["unresolved"] == 1
    assert row["pending"] == 1 and row["submitted"] == 5 and row["annotators"]["bob"] == pytest.approx(0.8)
    report = calibrate(catalog, thresholds=[0.5, 1.0])
    exact_prompt = report["checks"]["exact_prompt"]["thresholds"][0]
    assert exact_prompt["reviewed"] == 4 and exact_prompt["rejected_or_edited"] == 2
    assert exact_prompt["precision"] == pytest.approx(0.5)


def test_escalate_policy_queues_a_second_round(review_env: ReviewEnv, answered_r1: dict[str, str]) -> None:
    catalog, ws = review_env.catalog, review_env.ws
    [result] = pull(catalog, resolve_connection(ws), "r1", policy="escalate")
    assert result.escalated_to == "r1-escalation"
    items = catalog.query("SELECT record_id FROM review_items WHERE round_name = 'r1-escalation'")
    assert [i["record_id"] for i in items] == [
        catalog.scalar("SELECT record_id FROM records WHERE response = 'pin_blocked'")
    ]
    pushed = push(catalog, resolve_connection(ws), round_name="r1-escalation")
    assert pushed.pushed == 1 and pushed.dataset_name == "refinery-r1-escalation"


def test_cli_and_logs_never_show_the_key(review_env: ReviewEnv, round_r1: Any) -> None:
    ws: Path = review_env.ws
    paths = ReviewPaths(ws)
    key = json.loads(paths.credentials.read_text())["api_key"]
    assert oct(paths.credentials.stat().st_mode & 0o777) == "0o600"
    runner = CliRunner()
    outputs = []
    for args in (["review", "serve"], ["review", "status", "--json"], ["review", "pull", "--round", "r1"]):
        result = runner.invoke(app, ["--workspace", str(ws), "--quiet", *args])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert str(paths.credentials) in outputs[0] and "already running" in outputs[0]
    assert "r1" in [r["round_name"] for r in json.loads(outputs[1])["rounds"]]
    logs = [paths.server_log.read_text(errors="replace"), paths.state.read_text()]
    if paths.redis_log.exists():
        logs.append(paths.redis_log.read_text(errors="replace"))
    dump = json.dumps(
        [
            review_env.catalog.query(f"SELECT * FROM {t}")
            for t in ("review_rounds", "review_decisions", "review_responses")
        ],
        default=str,
    )
    for text in [*outputs, *logs, dump]:
        assert key not in text
    # and nowhere else: every catalog table, and every file in the workspace (the catalog's bytes, manifests,
    # reports, exports, logs)
    # except the credentials file itself and the Argilla server's own data folder, which must hold the key
    tables = [
        r["table_name"]
        for r in review_env.catalog.query(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        )
    ]
    assert "review_rounds" in tables and "records" in tables
    catalog_text = json.dumps([review_env.catalog.query(f'SELECT * FROM "{t}"') for t in tables], default=str)
    assert key not in catalog_text
    searched = 0
    for file in ws.rglob("*"):
        if not file.is_file() or file == paths.credentials or paths.home in file.parents:
            continue
        assert key.encode() not in file.read_bytes(), f"the Argilla key is in {file}"
        searched += 1
    assert searched >= 3


def test_push_vectors_sends_each_prompt_embedding(review_env: ReviewEnv, tmp_path: Path) -> None:
    import numpy as np

    from curation.embeddings.cache import record_embeddings

    ws, catalog = _team_workspace(review_env, tmp_path)
    pushed = _cli(ws, "review", "push", "--round", "vectors", "--vectors")
    assert pushed["pushed"] == pushed["queued"] == 6
    dataset = resolve_connection(ws).client().datasets(name="refinery-vectors", workspace="refinery")
    (field,) = dataset.settings.vectors
    assert (field.name, field.dimensions) == ("prompt_embedding", 384)
    records = {str(r.id): r for r in dataset.records(with_vectors=True)}
    ids = sorted(records)
    assert ids == sorted(r["record_id"] for r in catalog.query("SELECT record_id FROM review_items"))
    expected = record_embeddings(catalog, ids, field="prompt")  # read back from the workspace cache (float16)
    sent = np.array([records[i].vectors["prompt_embedding"] for i in ids], dtype=np.float32)
    assert sent.shape == (6, 384) and float((sent * expected).sum(axis=1).min()) > 0.9999
    assert float((sent[0] * sent[1]).sum()) < 0.99  # one vector per prompt, not one for all


def test_calibrate_budget_picks_a_threshold_the_team_can_review(review_env: ReviewEnv, tmp_path: Path) -> None:
    ws, catalog = _team_workspace(review_env, tmp_path)
    _cli(ws, "review", "push", "--round", "calib")
    connection = resolve_connection(ws)
    alice = annotator_key(connection.api_url, connection.client(), "alice", "refinery")
    dataset_id = catalog.scalar("SELECT argilla_dataset_id FROM review_rounds WHERE round_name = 'calib'")
    ids = _ids(catalog)
    verdicts = {
        "where is my  CARD|card_lost": "reject",
        "Where is my card?|card_lost": "approve",
        "Has my top up gone through?|pending_top_up": "approve",
        "Has my top up gone through?|top_up_failed": "reject",
        "Can I change my PIN?|change_pin": "approve",
        "Can I change my PIN?|pin_blocked": "reject",
    }
    respond_as(connection.api_url, alice, dataset_id, {ids[k]: {"decision": v} for k, v in verdicts.items()})
    (pulled,) = _cli(ws, "review", "pull", "--round", "calib")["rounds"]
    assert pulled["new_decisions"] == 6
    records = catalog.scalar("SELECT count(*) FROM findings WHERE check_name = 'exact_prompt'")

    # exact_prompt scores are 0 or 1: at threshold 0 every record would be flagged, at 1 the six reviewed ones;
    # three of the six were rejected, so both thresholds have precision 0.5, below the 0.8 target
    args = ["review", "calibrate", "--thresholds", "0,1"]
    free = _cli(ws, *args)["checks"]["exact_prompt"]
    assert [(t["threshold"], t["would_flag"], t["precision"]) for t in free["thresholds"]] == [
        (0.0, records, 0.5),
        (1.0, 6, 0.5),
    ]
    assert free["suggested_threshold"] == 0.0  # no budget: the best precision, lowest threshold on a tie
    budgeted = _cli(ws, *args, "--budget", "10")
    assert budgeted["budget"] == 10 and budgeted["checks"]["exact_prompt"]["suggested_threshold"] == 1.0
    exact = budgeted["checks"]["exact"]  # the one exact duplicate, rejected: precision 1 at threshold 1
    assert (exact["suggested_threshold"], exact["suggested_precision"]) == (1.0, 1.0)
    assert _cli(ws, *args, "--budget", "5")["checks"]["exact_prompt"]["suggested_threshold"] is None  # nothing fits
