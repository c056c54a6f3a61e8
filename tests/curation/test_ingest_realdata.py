"""Every file family in ../shared/data ingests with the expected counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import Catalog
from tests.curation.ingest_support import records_of, run

pytestmark = pytest.mark.realdata
INTENT = {"text": "user", "category": "assistant"}


def test_banking77_train(catalog: Catalog, shared_data: Path) -> None:
    result = run(catalog, [shared_data / "banking77/train.csv"], format="csv", mapping=INTENT, template="intent")
    assert (result.rows_read, result.ingested, result.quarantined) == (10_003, 10_003, 0)
    # Some queries repeat once whitespace is normalised (e.g. a leading newline): one record, several sources.
    assert result.new_records < result.rows_read
    assert catalog.scalar("SELECT count(DISTINCT label) FROM records") == 77
    assert catalog.scalar("SELECT count(*) FROM records WHERE label IS NULL OR label <> response") == 0
    repeated = catalog.query("SELECT record_id, count(*) AS n FROM source_rows GROUP BY record_id HAVING count(*) > 1")
    assert len(repeated) == result.rows_read - result.new_records
    row = catalog.query("SELECT r.prompt, r.label FROM records r JOIN source_rows s USING (record_id) WHERE s.row = 2")[
        0
    ]
    assert row["prompt"].endswith("Customer message: I am still waiting on my card?")
    assert row["label"] == "card_arrival"


def test_banking77_test_as_eval_set(catalog: Catalog, shared_data: Path) -> None:
    result = run(catalog, [shared_data / "banking77/test.csv"], mapping=INTENT, eval_set="banking77-test")
    assert (result.rows_read, result.ingested, result.quarantined) == (3080, 3080, 0)
    assert result.purpose.value == "eval"
    items = catalog.scalar("SELECT count(*) FROM eval_items WHERE eval_set = 'banking77-test'")
    assert items == result.new_records


def test_gpteacher_toolformer_alpaca(catalog: Catalog, shared_data: Path) -> None:
    result = run(catalog, [shared_data / "gpteacher_toolformer/toolformer-dedupe-only.json"])
    assert (result.rows_read, result.ingested, result.quarantined) == (7673, 7673, 0)
    assert result.files[0].format == "alpaca"
    first = records_of(catalog, result.batch_id)[0]
    assert first["prompt"].endswith("French Revolution") and "wikipedia(" in first["response"]


def test_sharegpt_dummy(catalog: Catalog, shared_data: Path) -> None:
    result = run(catalog, [shared_data / "sharegpt/fastchat_dummy_conversation.json"])
    assert (result.rows_read, result.ingested, result.quarantined) == (500, 500, 0)
    first = records_of(catalog, result.batch_id)[0]
    assert first["n_messages"] == 4 and first["metadata"] == {"id": "identity_0"}


def _leaf_roles(node: dict[str, Any]) -> list[str]:
    replies = node.get("replies") or []
    if not replies:
        return [node["role"]]
    return [role for child in replies for role in _leaf_roles(child)]


def test_oasst_message_trees(catalog: Catalog, shared_data: Path) -> None:
    path = shared_data / "oasst/en_100_message.jsonl"
    leaves = [role for line in path.open("rb") for role in _leaf_roles(json.loads(line))]
    result = run(catalog, [path])
    assert result.rows_read == len(leaves)
    assert result.ingested == leaves.count("assistant") and result.ingested > 100
    reasons = catalog.query("SELECT DISTINCT reason FROM quarantined_rows")
    assert reasons == [{"reason": "no assistant reply (prompt-only rows are accepted only in eval sets)"}]
    meta = records_of(catalog, result.batch_id)[0]["metadata"]
    assert {"message_id", "rank", "review_count", "synthetic", "lang", "path", "tree_id"} <= set(meta)


def test_self_instruct_both_files(catalog: Catalog, shared_data: Path) -> None:
    files = [
        shared_data / "self_instruct/seed_tasks.jsonl",
        shared_data / "self_instruct/user_oriented_instructions.jsonl",
    ]
    result = run(catalog, files)
    assert (result.rows_read, result.ingested, result.quarantined) == (175 + 252, 427, 0)
    assert [f.format for f in result.files] == ["selfinstruct", "selfinstruct"]
    apps = catalog.scalar("SELECT count(*) FROM records WHERE metadata_json->>'motivation_app' IS NOT NULL")
    assert apps > 0


def test_mt_bench_as_prompt_only_eval_set(catalog: Catalog, shared_data: Path) -> None:
    result = run(catalog, [shared_data / "mt_bench/question.jsonl"], eval_set="mt_bench")
    assert (result.rows_read, result.ingested, result.quarantined) == (80, 80, 0)
    assert catalog.scalar("SELECT count(*) FROM records WHERE response <> '' OR n_messages <> 1") == 0
    first = records_of(catalog, result.batch_id)[0]
    assert len(first["metadata"]["turns"]) == 2 and first["metadata"]["category"] == "writing"
