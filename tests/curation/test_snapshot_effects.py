"""What a snapshot did with the scan's findings: each exclusion's causes (check, finding score, kept duplicate,
review decision), per-check effects (dropped, dropped alone, changed) in the catalog, the manifest, the create
result, lineage and the quality report; and migration 0010's backfill of snapshots made before it."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from curation.report.collect import collect_report
from curation.snapshot import create_snapshot, load_snapshot
from refinery.lineage import lineage
from schemas.catalog import Catalog
from tests.curation.snapshot_support import add_edit, build_corpus, decide


@pytest.fixture
def ids(catalog: Catalog, tmp_path: Path) -> dict[str, str]:
    return build_corpus(catalog, tmp_path)


def _checks_sent(catalog: Catalog, decision_id: str, checks: str) -> None:
    with catalog.write() as con:
        con.execute("UPDATE review_decisions SET check_names = ? WHERE decision_id = ?", [checks, decision_id])


def _causes(catalog: Catalog, sid: str) -> set[tuple]:
    rows = catalog.query(
        "SELECT record_id, check_name, scan_id, score, kept_record_id FROM snapshot_exclusion_causes "
        "WHERE snapshot_id = ?",
        [sid],
    )
    return {(r["record_id"], r["check_name"], r["scan_id"], r["score"], r["kept_record_id"]) for r in rows}


def test_every_exclusion_points_at_its_finding_and_every_check_says_what_it_did(
    catalog: Catalog, tmp_path: Path, ids: dict[str, str]
) -> None:
    rejected = decide(catalog, ids["q0"], "reject", actor="carol")
    _checks_sent(catalog, rejected, "near_dup, pii")  # the checks that sent q0 to review
    edited = add_edit(catalog, ids["q1"], "question number 1 about topic 1, and more words here", "label_1")
    edit_decision = catalog.scalar("SELECT decision_id FROM review_decisions WHERE edited_record_id = ?", [edited])
    _checks_sent(catalog, str(edit_decision), "label_issue")
    result = create_snapshot(catalog, tmp_path / "snaps")
    sid, scan = result.snapshot_id, result.scan_id

    causes = _causes(catalog, sid)
    near_removed = next(r for r in (ids["near_a"], ids["near_b"]) if any(c[0] == r for c in causes))
    near_kept = ({ids["near_a"], ids["near_b"]} - {near_removed}).pop()
    assert causes == {
        (ids["dup_removed"], "exact", scan, None, ids["dup_kept"]),
        (near_removed, "near_dup", scan, None, near_kept),
        (ids["pii"], "pii", scan, 1.0, None),  # held back by the blocking check, with the finding's score
        (ids["q0"], "near_dup", scan, None, None),  # rejected in review: the checks that sent it there
        (ids["q0"], "pii", scan, None, None),
    }  # q3 (also an eval item) has no cause: no check made that exclusion
    # each held-back cause is a real finding of the snapshot's scan
    assert (
        catalog.scalar(
            "SELECT count(*) FROM snapshot_exclusion_causes c JOIN findings f USING (scan_id, record_id, check_name) "
            "WHERE c.snapshot_id = ? AND f.flagged AND c.check_name = 'pii'",
            [sid],
        )
        == 1
    )

    effects = catalog.query(
        "SELECT check_name, dropped, dropped_alone, changed FROM snapshot_check_effects WHERE snapshot_id = ?", [sid]
    )
    expected = {
        "exact": {"dropped": 1, "dropped_alone": 1, "changed": 0},
        "near_dup": {"dropped": 2, "dropped_alone": 1, "changed": 0},  # q0's other cause is pii
        "pii": {"dropped": 2, "dropped_alone": 1, "changed": 0},
        "label_issue": {"dropped": 0, "dropped_alone": 0, "changed": 1},  # the edited member
    }
    assert {e["check_name"]: {k: e[k] for k in ("dropped", "dropped_alone", "changed")} for e in effects} == expected
    assert result.check_effects == expected and result.to_json()["check_effects"] == expected
    assert load_snapshot(catalog, sid).manifest.extra["check_effects"] == expected

    node = lineage(catalog, sid)
    assert {e["check_name"]: e["dropped"] for e in node["check_effects"]} == {
        "near_dup": 2, "pii": 2, "exact": 1, "label_issue": 0
    }  # fmt: skip
    record = lineage(catalog, ids["q0"])
    (excluded,) = record["excluded_from"]
    assert (excluded["snapshot_id"], excluded["reason"], excluded["checks"], excluded["scan_id"]) == (
        sid, "rejected", ["near_dup", "pii"], scan
    )  # fmt: skip
    assert excluded["decision_id"] == rejected

    report = collect_report(catalog, scan, examples=0)
    rows = {
        (r["snapshot"], r["check"]): (r["dropped"], r["dropped_alone"], r["changed"]) for r in report.snapshot_effects
    }
    assert rows == {(sid, check): tuple(e.values()) for check, e in expected.items()}


def test_the_migration_reads_the_causes_of_older_snapshots_back_from_their_details(
    catalog: Catalog, tmp_path: Path, ids: dict[str, str]
) -> None:
    rejected = decide(catalog, ids["q0"], "reject", actor="carol")
    _checks_sent(catalog, rejected, "near_dup,pii")
    sid = create_snapshot(catalog, tmp_path / "snaps").snapshot_id
    written = _causes(catalog, sid)
    assert len(written) == 5
    sql = resources.files("schemas").joinpath("migrations/0010_exclusion_causes.sql").read_text(encoding="utf-8")
    backfill = re.findall(r"^INSERT INTO snapshot_exclusion_causes\b.*?;", sql, flags=re.S | re.M)
    assert len(backfill) == 3
    with catalog.write() as con:  # a snapshot as 0009 left it: exclusions with their details, no causes
        con.execute("DELETE FROM snapshot_exclusion_causes")
        for statement in backfill:
            con.execute(statement)
    assert _causes(catalog, sid) == written
