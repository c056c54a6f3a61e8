"""`refinery lineage` and the audit views on a real catalog with review decisions, an edit and a forget."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from curation.snapshot import create_snapshot
from refinery.cli import app
from schemas.catalog import Catalog, utcnow
from tests.curation.snapshot_support import add_edit, build_corpus, decide


def _cli(ws: Path, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["--workspace", str(ws), "--quiet", *args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def test_lineage_tree_audit_views_and_forget(tmp_path: Path, workspace: Path) -> None:
    catalog = Catalog(workspace / "catalog.duckdb")
    catalog.migrate()
    ids = build_corpus(catalog, tmp_path)
    decide(catalog, ids["pii"], "approve", actor="alice")
    decide(catalog, ids["q0"], "reject", actor="carol")
    edited = add_edit(catalog, ids["q1"], "question number 1, about topic 1 and more words here", "label_1")
    snap = create_snapshot(catalog, workspace / "snapshots")
    with catalog.write() as con:  # an adapter row is all the views and lineage need
        con.execute("INSERT INTO base_models VALUES ('base_t', 't', '/nowhere', 'x', ?)", [utcnow()])
        con.execute(
            "INSERT INTO adapters VALUES ('adp_1', ?, 'base_t', '/nowhere', 'x', '{}', 1.0, 1.0, ?)",
            [snap.snapshot_id, utcnow()],
        )

    code, tree = _cli(workspace, "lineage", "adp_1")
    assert code == 0
    snapshot = tree["parents"][0]
    rounds = [n for n in snapshot["parents"] if n["kind"] == "review_round"]
    assert [r["id"] for r in rounds] == ["round-1"]
    assert {(d["actor"], d["decision"], d["records"]) for d in rounds[0]["decisions"]} == {
        ("alice", "approve", 1),
        ("bob", "edit", 1),
        ("carol", "reject", 1),
    }
    assert snapshot["basis"] == {"approved": 1, "edited": 1, "policy": sum(snap.counts.values()) - 2}
    scan = next(n for n in snapshot["parents"] if n["kind"] == "scan")
    assert scan["config"]["params"]["near_dup"]["threshold"] == 0.6
    files = next(n for n in snapshot["parents"] if n["kind"] == "batch")["parents"]
    assert files[0]["id"] == str(tmp_path / "train.jsonl") and files[0]["records"] == sum(snap.counts.values()) - 1

    code, record = _cli(workspace, "lineage", edited)
    original = record["parents"][0]
    assert original["id"] == ids["q1"] and original["relation"] == "edit" and original["by"] == "bob"
    assert record["used_in"][0]["adapter_id"] == "adp_1"

    by_alice = catalog.query(
        "SELECT record_id FROM adapter_record_decisions WHERE adapter_id = 'adp_1' AND actor = 'alice'"
    )
    assert by_alice == [{"record_id": ids["pii"]}]
    takedown = catalog.query(
        "SELECT DISTINCT adapter_id FROM source_row_usage WHERE file = ? AND adapter_id IS NOT NULL",
        [str(tmp_path / "train.jsonl")],
    )
    assert takedown == [{"adapter_id": "adp_1"}]
    assert catalog.query("SELECT * FROM adapter_data_diff('adp_1', 'adp_1')") == []

    code, result = _cli(workspace, "forget", "--record", ids["q5"], "--reason", "user request")
    assert code == 0 and result["adapters"] == [{"adapter_id": "adp_1", "snapshot_id": snap.snapshot_id}]
    code, _ = _cli(workspace, "forget", "--record", "rec_nope")
    assert code == 2
