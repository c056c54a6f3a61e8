"""`refinery review auto`: decisions by policy on a real scan's label_issue findings (the real all-MiniLM-L6-v2).

A relabel writes a new record version with the suggested label and an 'edit' decision (source 'policy'); the
snapshot takes the new version in place of the original and counts it as changed by label_issue; rerunning adds
nothing; a human decision wins; the policy's edit clears only the flag of the check it acted on; reject leaves the
record out with label_issue as its cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.checks import run_scan
from curation.review.auto import apply_policy
from curation.snapshot import create_snapshot
from curation.snapshot.policy import SnapshotPolicy
from schemas.catalog import Catalog
from schemas.errors import InputError
from tests.curation.embedding_support import MISFILED, banking_like
from tests.curation.snapshot_support import decide
from tests.support.cli import invoke_cli, run_cli

CHECKS = ["exact", "exact_prompt", "near_dup", "label_issue"]
#: label_issue holds flagged records back (as the curated arm of examples/noisy-banking77 does)
POLICY = SnapshotPolicy(
    train_fraction=0.8, validation_fraction=0.2, test_fraction=0.0, blocking_checks=["label_issue", "pii"]
)


@pytest.fixture
def scanned(catalog: Catalog, tmp_path: Path) -> tuple[dict[str, str], str, float]:
    """The banking-like corpus scanned; the misfiled query's id, the scan and its label_issue score."""
    ids = banking_like(catalog, tmp_path)
    scan = run_scan(catalog, CHECKS)
    score = catalog.scalar(
        "SELECT score FROM findings WHERE scan_id = ? AND check_name = 'label_issue' AND record_id = ? AND flagged",
        [scan.scan_id, ids[MISFILED]],
    )
    assert score is not None and score > 0.35
    return ids, scan.scan_id, float(score)


def _member(catalog: Catalog, snapshot_id: str, original: str) -> dict | None:
    rows = catalog.query(
        "SELECT m.record_id, m.basis, m.original_record_id, r.response FROM snapshot_members m "
        "JOIN records r USING (record_id) WHERE m.snapshot_id = ? AND coalesce(m.original_record_id, m.record_id) = ?",
        [snapshot_id, original],
    )
    return rows[0] if rows else None


def test_relabel_by_policy_puts_the_suggested_label_in_the_snapshot(
    catalog: Catalog, tmp_path: Path, scanned: tuple[dict[str, str], str, float]
) -> None:
    ids, scan_id, score = scanned
    misfiled = ids[MISFILED]
    before = create_snapshot(catalog, tmp_path / "snaps", POLICY)
    assert _member(catalog, before.snapshot_id, misfiled) is None  # held back by label_issue, nobody approved it

    result = apply_policy(catalog, min_score=round(score - 0.01, 3))
    assert (result.considered, result.decided, result.already, result.left_to_humans) == (1, 1, 0, 0)
    assert result.changes == {"card_arrival -> exchange_rate": 1}
    decision = catalog.query("SELECT * FROM record_decisions WHERE record_id = ?", [misfiled])[0]
    assert (decision["decision"], decision["source"], decision["check_names"]) == ("edit", "policy", "label_issue")
    assert decision["actor"] == f"policy:label_issue>={round(score - 0.01, 3):g}" and decision["round_name"] is None
    new_id = decision["edited_record_id"]
    version = catalog.query("SELECT * FROM record_versions WHERE record_id = ?", [new_id])[0]
    assert (version["parent_record_id"], version["kind"], version["source_id"]) == (misfiled, "relabel", scan_id)
    new = catalog.query("SELECT prompt, response, parent_record_id, metadata_json FROM records WHERE record_id = ?",
                        [new_id])[0]  # fmt: skip
    old = catalog.query("SELECT prompt FROM records WHERE record_id = ?", [misfiled])[0]
    assert (new["prompt"], new["response"], new["parent_record_id"]) == (old["prompt"], "exchange_rate", misfiled)
    assert json.loads(new["metadata_json"])["relabelled_from"] == misfiled
    edge = catalog.query("SELECT * FROM lineage_edges WHERE child_id = ? AND parent_id = ?", [new_id, misfiled])
    assert [e["relation"] for e in edge] == ["relabel_of"]

    again = apply_policy(catalog, min_score=round(score - 0.01, 3))  # the same policy again: nothing new
    assert (again.decided, again.already) == (0, 1)
    assert catalog.scalar("SELECT count(*) FROM review_decisions WHERE source = 'policy'") == 1

    after = create_snapshot(catalog, tmp_path / "snaps", POLICY)
    member = _member(catalog, after.snapshot_id, misfiled)
    assert member is not None and (member["record_id"], member["basis"], member["response"]) == (
        new_id, "edited", "exchange_rate"
    )  # fmt: skip
    assert after.check_effects["label_issue"] == {"dropped": 0, "dropped_alone": 0, "changed": 1}


def test_a_policy_edit_clears_only_its_own_check_and_a_human_decision_wins(
    catalog: Catalog, tmp_path: Path, scanned: tuple[dict[str, str], str, float]
) -> None:
    ids, scan_id, score = scanned
    misfiled = ids[MISFILED]
    with catalog.write() as con:  # another blocking check flags the same record (a real findings row of the scan)
        con.execute(
            "INSERT INTO findings SELECT scan_id, record_id, 'pii', 1.0, true, 'phone number', NULL FROM findings "
            "WHERE scan_id = ? AND check_name = 'exact' AND record_id = ?",
            [scan_id, misfiled],
        )
    apply_policy(catalog, min_score=score)
    snap = create_snapshot(catalog, tmp_path / "snaps", POLICY)
    assert _member(catalog, snap.snapshot_id, misfiled) is None
    (cause,) = catalog.query(
        "SELECT check_name FROM snapshot_exclusion_causes WHERE snapshot_id = ? AND record_id = ?",
        [snap.snapshot_id, misfiled],
    )
    assert cause["check_name"] == "pii"  # label_issue is resolved by the relabel; the PII flag is not

    decide(catalog, misfiled, "approve", actor="carol")  # a human approves the original as it is
    rerun = apply_policy(catalog, min_score=score)
    assert (rerun.decided, rerun.left_to_humans) == (0, 1)
    snap = create_snapshot(catalog, tmp_path / "snaps", POLICY)
    member = _member(catalog, snap.snapshot_id, misfiled)
    assert member is not None and (member["record_id"], member["basis"], member["response"]) == (
        misfiled, "approved", "card_arrival"
    )  # fmt: skip


def test_reject_by_policy_and_the_cli(
    catalog: Catalog, workspace: Path, tmp_path: Path, scanned: tuple[dict[str, str], str, float]
) -> None:
    ids, scan_id, score = scanned
    out = run_cli(workspace, "review", "auto", "--action", "reject", "--min-score", f"{score - 0.001:.4f}")
    assert (out["decided"], out["action"], out["scan_id"]) == (1, "reject", scan_id)
    snap = create_snapshot(catalog, tmp_path / "snaps", POLICY.model_copy(update={"blocking_checks": []}))
    assert _member(catalog, snap.snapshot_id, ids[MISFILED]) is None
    rows = catalog.query(
        "SELECT e.reason, c.check_name FROM snapshot_exclusions e JOIN snapshot_exclusion_causes c "
        "USING (snapshot_id, record_id) WHERE e.snapshot_id = ? AND e.record_id = ?",
        [snap.snapshot_id, ids[MISFILED]],
    )
    assert [(r["reason"], r["check_name"]) for r in rows] == [("rejected", "label_issue")]
    bad = invoke_cli(workspace, "review", "auto", "--action", "delete")
    assert bad.exit_code == 2 and "--action must be one of relabel, reject" in bad.output
    with pytest.raises(InputError, match="min-score must be in"):
        apply_policy(catalog, min_score=1.5)
    with pytest.raises(InputError, match="has no findings of pii"):
        apply_policy(catalog, check="pii")
