"""The snapshot policy on a real catalog: approvals, rejections, edits, blocking flags, forget, splits, diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.amend.forget import ForgetError, forget
from curation.checks import run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.snapshot import SnapshotPolicy, create_snapshot, load_snapshot
from curation.snapshot.diff import diff_snapshots
from curation.snapshot.splits import assign_splits
from schemas.catalog import Catalog
from tests.curation.snapshot_support import add_edit, build_corpus, decide


@pytest.fixture
def ids(catalog: Catalog, tmp_path: Path) -> dict[str, str]:
    return build_corpus(catalog, tmp_path)


def _members(catalog: Catalog, sid: str) -> dict[str, dict]:
    rows = catalog.query("SELECT * FROM snapshot_members WHERE snapshot_id = ?", [sid])
    return {r["record_id"]: r for r in rows}


def _exclusions(catalog: Catalog, sid: str) -> dict[str, str]:
    rows = catalog.query("SELECT record_id, reason FROM snapshot_exclusions WHERE snapshot_id = ?", [sid])
    return {r["record_id"]: r["reason"] for r in rows}


def test_default_policy_decisions_edits_forget_and_diff(catalog: Catalog, tmp_path: Path, ids: dict) -> None:
    snaps = tmp_path / "snaps"
    first = create_snapshot(catalog, snaps)
    members, out = _members(catalog, first.snapshot_id), _exclusions(catalog, first.snapshot_id)
    assert out[ids["dup_removed"]] == "duplicate" and out[ids["pii"]] == "held_back"
    assert out[ids["q3"]] == "in_eval_set"
    assert sorted(out.values()).count("duplicate") == 2  # the exact copy and one near-duplicate
    removed_near = next(r for r in (ids["near_a"], ids["near_b"]) if out.get(r) == "duplicate")
    assert ids["dup_kept"] in members and all(m["basis"] == "policy" for m in members.values())
    assert sum(first.counts.values()) == 45 - 1 - 1 - 1 - 1  # 45 training records minus 2 dups, pii, eval

    # a human approves the PII record and the removed near-duplicate, rejects one, edits another; one is forgotten
    decide(catalog, ids["pii"], "approve", actor="alice")
    decide(catalog, removed_near, "approve", actor="alice")
    decide(catalog, ids["dup_removed"], "approve", actor="alice")  # exact duplicate: stays out
    decide(catalog, ids["q0"], "reject", actor="carol")
    edited = add_edit(catalog, ids["q1"], "question number 1 about topic 1, and more words here", "label_1")
    decide(catalog, ids["q2"], "reject", actor="policy:auto", round_name=None, source="policy")
    forget(catalog, actor="dpo", record_id=ids["q4"], reason="takedown")
    second = create_snapshot(catalog, snaps, parent=first.snapshot_id)
    members, out = _members(catalog, second.snapshot_id), _exclusions(catalog, second.snapshot_id)
    assert members[ids["pii"]]["basis"] == "approved" and members[removed_near]["basis"] == "approved"
    assert out[ids["dup_removed"]] == "duplicate"
    assert out[ids["q0"]] == "rejected" and out[ids["q2"]] == "rejected" and out[ids["q4"]] == "forgotten"
    assert ids["q1"] not in members and members[edited]["original_record_id"] == ids["q1"]

    diff = diff_snapshots(catalog, first.snapshot_id, second.snapshot_id)
    added = {r["record_id"]: r for r in diff["added"]}
    removed = {r["record_id"]: r for r in diff["removed"]}
    assert added[ids["pii"]]["reason"] == "review_decision" and "alice" in added[ids["pii"]]["detail"]
    assert added[removed_near]["reason"] == "review_decision"
    assert removed[ids["q0"]]["reason"] == "review_decision" and removed[ids["q0"]]["actor"] == "carol"
    assert removed[ids["q4"]]["reason"] == "forgotten"
    assert [(c["record_id"], c["previous_record_id"], c["actor"]) for c in diff["changed"]] == [
        (edited, ids["q1"], "bob")
    ]
    assert diff["summary"]["added"] == 2 and diff["summary"]["removed"] == 3 and not diff["policy_changed"]

    manifest = load_snapshot(catalog, second.snapshot_id).manifest
    assert manifest.extra["parent"] == first.snapshot_id and manifest.extra["review"]["rounds"] == ["round-1"]
    actors = {(d["actor"], d["decision"]) for d in manifest.extra["review"]["decisions"]}
    assert {("alice", "approve"), ("carol", "reject"), ("bob", "edit")} <= actors
    assert manifest.counts["excluded_forgotten"] == 1


def test_policy_file_changes_what_blocks_and_diff_says_policy(catalog: Catalog, tmp_path: Path, ids: dict) -> None:
    first = create_snapshot(catalog, tmp_path / "s")
    lenient = SnapshotPolicy(blocking_checks=[], score_thresholds={"exact_prompt": 0.5})
    second = create_snapshot(catalog, tmp_path / "s", lenient)
    assert ids["pii"] in _members(catalog, second.snapshot_id)
    diff = diff_snapshots(catalog, first.snapshot_id, second.snapshot_id)
    assert {r["record_id"]: r["reason"] for r in diff["added"]} == {ids["pii"]: "policy"}
    assert diff["policy_changed"]


def test_clusters_never_span_splits_and_labels_are_stratified(catalog: Catalog, tmp_path: Path, ids: dict) -> None:
    policy = SnapshotPolicy(approval_restores_near_duplicates=True)
    decide(catalog, ids["near_a"], "approve")
    decide(catalog, ids["near_b"], "approve")
    result = create_snapshot(catalog, tmp_path / "s", policy)
    members = _members(catalog, result.snapshot_id)
    assert members[ids["near_a"]]["split"] == members[ids["near_b"]]["split"]  # one near_dup cluster, one split
    groups: dict[str, tuple[str | None, int]] = {f"g{i}": ("a" if i % 2 else "b", 1) for i in range(100)}
    splits = assign_splits(groups, SnapshotPolicy())
    for label in "ab":
        mine = [splits[g] for g, (lab, _) in groups.items() if lab == label]
        assert (mine.count("train"), mine.count("validation"), mine.count("test")) == (40, 5, 5)
    assert splits == assign_splits(dict(reversed(groups.items())), SnapshotPolicy())  # order-independent


def test_eval_contamination_is_stored_with_the_snapshot(catalog: Catalog, tmp_path: Path, ids: dict) -> None:
    policy = SnapshotPolicy(train_fraction=1.0, validation_fraction=0.0, test_fraction=0.0)
    result = create_snapshot(catalog, tmp_path / "s", policy)
    rows = catalog.query("SELECT * FROM snapshot_contamination WHERE snapshot_id = ?", [result.snapshot_id])
    # the eval item 'please tell me how to reset ... ok' nearly duplicates the kept near_a / near_b record
    assert rows and all(r["eval_set"] == "heldout" and r["similarity"] >= 0.6 for r in rows)
    manifest = load_snapshot(catalog, result.snapshot_id).manifest
    assert manifest.extra["contamination"]["contaminated_eval_items"] == 1 == result.contaminated_eval_items
    assert len(manifest.extra["contamination"]["matches"]) == len(rows)


def test_forget_by_source_lists_existing_snapshots(catalog: Catalog, tmp_path: Path, ids: dict) -> None:
    snap = create_snapshot(catalog, tmp_path / "s")
    result = forget(catalog, actor="dpo", source=str(tmp_path / "train.jsonl"), reason="takedown")
    assert len(result.records) == 45 and result.snapshots[0]["snapshot_id"] == snap.snapshot_id
    assert result.snapshots[0]["records"] == sum(snap.counts.values()) and result.adapters == []
    again = forget(catalog, actor="dpo", source=str(tmp_path / "train.jsonl"))
    assert again.already and again.forget_id == result.forget_id
    with pytest.raises(ForgetError, match="no source rows"):
        forget(catalog, actor="dpo", source=str(tmp_path / "nope.jsonl"))
    with pytest.raises(Exception, match="no training records"):
        create_snapshot(catalog, tmp_path / "s")


def test_forget_keeps_versions_derived_from_the_record_out(catalog: Catalog, tmp_path: Path, ids: dict) -> None:
    edited = add_edit(catalog, ids["q1"], "question number 1 about topic 1, and more words here", "label_1")
    before = create_snapshot(catalog, tmp_path / "s")
    members = _members(catalog, before.snapshot_id)
    assert members[edited]["original_record_id"] == ids["q1"] and ids["q1"] not in members  # the edit stands in

    result = forget(catalog, actor="dpo", record_id=ids["q1"], reason="takedown")
    assert result.records == sorted([ids["q1"], edited])  # the record and the version derived from it
    assert result.snapshots == [{"snapshot_id": before.snapshot_id, "records": 1}]  # it holds the edited version
    after = create_snapshot(catalog, tmp_path / "s", parent=before.snapshot_id)
    members, out = _members(catalog, after.snapshot_id), _exclusions(catalog, after.snapshot_id)
    assert edited not in members and ids["q1"] not in members and out[ids["q1"]] == "forgotten"
    assert set(_members(catalog, before.snapshot_id)) - set(members) == {edited}  # nothing else left
    removed = {
        r["record_id"]: r["reason"] for r in diff_snapshots(catalog, before.snapshot_id, after.snapshot_id)["removed"]
    }
    assert removed == {edited: "forgotten"}


LABELS = ("card_lost", "refund", "password_reset")


def _ingest_labelled(catalog: Catalog, path: Path, numbers: range) -> None:
    """Labelled rows (a CSV mapped to prompt + label, so records carry ``label``), then a new scan."""
    lines = ["text,category"] + [f"customer ticket {i} says issue {i * 7 % 11} again,{LABELS[i % 3]}" for i in numbers]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest(catalog, [path], IngestOptions(format="csv", mapping={"text": "user", "category": "assistant"}))
    run_scan(catalog, ["exact", "exact_prompt", "near_dup"])


def test_unstratified_splits_never_move_an_existing_record(catalog: Catalog, tmp_path: Path) -> None:
    stable, stratified = SnapshotPolicy(stratify=False), SnapshotPolicy()

    def splits(policy: SnapshotPolicy) -> dict[str, str]:
        snapshot = create_snapshot(catalog, tmp_path / "s", policy).snapshot_id
        return {rid: m["split"] for rid, m in _members(catalog, snapshot).items()}

    _ingest_labelled(catalog, tmp_path / "first.csv", range(60))
    assert catalog.scalar("SELECT count(DISTINCT label) FROM records") == 3
    first, first_dealt = splits(stable), splits(stratified)
    _ingest_labelled(catalog, tmp_path / "more.csv", range(60, 150))
    second, second_dealt = splits(stable), splits(stratified)

    assert len(first) == 60 and len(second) == 150 and set(first) < set(second)
    assert {rid: second[rid] for rid in first} == first  # stratify: false: every old record stays where it was
    # stratified dealing balances each label across splits, so new records can move old ones: here they do
    assert any(second_dealt[rid] != split for rid, split in first_dealt.items())
    labels = {r["record_id"]: r["label"] for r in catalog.query("SELECT record_id, label FROM records")}
    for dealt in (first_dealt, second_dealt):  # and it does balance: 80% of every label in train, to one record
        for label in LABELS:
            mine = [split for rid, split in dealt.items() if labels[rid] == label]
            assert abs(mine.count("train") - 0.8 * len(mine)) <= 1
