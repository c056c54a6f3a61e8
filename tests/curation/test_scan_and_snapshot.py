"""Scan (exact checks) and snapshots on planted-defect fixtures, through the real ingest into a real catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.checks import DEFAULT_CHECKS, ScanError, run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.snapshot import SnapshotError, SnapshotPolicy, create_snapshot, load_snapshot
from curation.snapshot.splits import split_of
from schemas.catalog import Catalog
from schemas.manifest import ManifestError


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def planted(tmp_path: Path, catalog: Catalog) -> dict[str, str]:
    lines = [_chat(f"question number {i} about topic {i % 7}", f"label_{i % 3}") for i in range(60)]
    lines += [
        _chat("Where is my card?", "card_lost"),  # row 61: kept (earliest)
        _chat("where is my  CARD", "card_lost"),  # row 62: exact duplicate after normalisation
        _chat("Where is my card?", "card_lost"),  # row 63: byte-identical: same record, second source row
        _chat("Has my top up gone through?", "pending_top_up"),  # row 64
        _chat("Has my top up gone through?", "top_up_failed"),  # row 65: same prompt, other label
        _chat("held out question", "label_0"),  # row 66: also in the eval set below
    ]
    _write(tmp_path / "train.jsonl", lines)
    _write(tmp_path / "eval.jsonl", [_chat("held out question", "label_0"), _chat("brand new eval item", "label_1")])
    ingest(catalog, [tmp_path / "train.jsonl"], IngestOptions(name="train"))
    ingest(catalog, [tmp_path / "eval.jsonl"], IngestOptions(eval_set="heldout"))
    ids = {
        r["prompt"]: r["record_id"]
        for r in catalog.query("SELECT record_id, prompt FROM records WHERE prompt NOT LIKE 'question number%'")
    }
    return ids


def test_exact_checks_flag_exactly_the_planted_records(catalog: Catalog, planted: dict[str, str]) -> None:
    result = run_scan(catalog)
    assert result.records == 65  # 66 rows minus one byte-identical repeat; eval-only items are not scanned
    assert result.checks["exact"]["clusters"] == 1 and result.checks["exact"]["duplicates"] == 1
    flagged = catalog.query("SELECT record_id, check_name, reason FROM flagged_records ORDER BY check_name, record_id")
    exact = [f for f in flagged if f["check_name"] == "exact"]
    assert [f["record_id"] for f in exact] == [planted["where is my  CARD"]]
    assert planted["Where is my card?"] in exact[0]["reason"] and "earliest ingest" in exact[0]["reason"]
    prompt_flags = {f["record_id"] for f in flagged if f["check_name"] == "exact_prompt"}
    assert prompt_flags == {planted["Where is my card?"], planted["where is my  CARD"]} | {
        r["record_id"] for r in catalog.query("SELECT record_id FROM records WHERE prompt LIKE 'Has my top up%'")
    }
    assert result.checks["exact_prompt"]["conflicting_clusters"] == 1
    kept = catalog.query("SELECT record_id, kept_record_id FROM duplicate_clusters WHERE check_name = 'exact'")
    assert {r["kept_record_id"] for r in kept} == {planted["Where is my card?"]}


def test_rescan_of_unchanged_records_is_reused(catalog: Catalog, planted: dict[str, str]) -> None:
    first = run_scan(catalog)
    again = run_scan(catalog)
    assert again.scan_id == first.scan_id and again.reused
    assert catalog.scalar("SELECT count(*) FROM findings") == len(DEFAULT_CHECKS) * first.records


def test_unknown_check_and_empty_catalog_are_clear_errors(catalog: Catalog) -> None:
    with pytest.raises(ScanError, match="unknown check"):
        run_scan(catalog, ["nope"])
    with pytest.raises(ScanError, match="no training records"):
        run_scan(catalog)


def test_snapshot_excludes_duplicates_and_eval_items_and_keeps_prompts_in_one_split(
    tmp_path: Path, catalog: Catalog, planted: dict[str, str]
) -> None:
    with pytest.raises(SnapshotError, match="run `refinery scan`"):
        create_snapshot(catalog, tmp_path / "snaps")
    run_scan(catalog)
    result = create_snapshot(catalog, tmp_path / "snaps")
    # minus one exact duplicate, the eval item, and the two top-up records: the default scan's inconsistency check
    # flags a conflict (blocking) and holds both back until a human decides (cluster splits: test_snapshot_policy.py)
    assert sum(result.counts.values()) == 65 - 1 - 1 - 2
    assert result.excluded == {"duplicate": 1, "held_back": 2, "in_eval_set": 1}
    members = {r["record_id"]: r["split"] for r in catalog.query("SELECT record_id, split FROM snapshot_members")}
    assert planted["where is my  CARD"] not in members and planted["held out question"] not in members
    conflicting = catalog.query("SELECT record_id FROM records WHERE prompt LIKE 'Has my top up%'")
    assert len(conflicting) == 2 and not {r["record_id"] for r in conflicting} & set(members)
    snap = load_snapshot(catalog, result.snapshot_id)
    train = snap.read_split("train")
    assert len(train) == result.counts["train"] and train[0]["messages"][0]["role"] == "user"
    assert snap.manifest.counts["excluded_duplicate"] == 1 and snap.manifest.counts["excluded_in_eval_set"] == 1
    again = create_snapshot(catalog, tmp_path / "snaps")
    assert again.snapshot_id == result.snapshot_id and again.reused
    assert catalog.scalar("SELECT count(*) FROM snapshots") == 1


def test_split_assignment_is_stable_and_roughly_proportional() -> None:
    policy = SnapshotPolicy()
    splits = [split_of(f"rec_{i}", policy) for i in range(5000)]
    assert splits == [split_of(f"rec_{i}", policy) for i in range(5000)]
    assert 0.77 < splits.count("train") / 5000 < 0.83
    # another seed deals independently: about 1 - (0.8² + 0.1² + 0.1²) = 34% of records change split
    reseeded = [split_of(f"rec_{i}", SnapshotPolicy(seed=1)) for i in range(5000)]
    changed = sum(a != b for a, b in zip(splits, reseeded, strict=True)) / 5000
    assert 0.30 < changed < 0.38 and 0.77 < reseeded.count("train") / 5000 < 0.83
    with pytest.raises(ValueError, match="sum to 1"):
        SnapshotPolicy(train_fraction=0.9, validation_fraction=0.2, test_fraction=0.1)


def test_snapshot_refuses_records_ingested_after_the_scan(tmp_path: Path, catalog: Catalog, planted: dict) -> None:
    run_scan(catalog)
    _write(tmp_path / "more.jsonl", [_chat("a late addition", "label_2")])
    ingest(catalog, [tmp_path / "more.jsonl"], IngestOptions())
    with pytest.raises(SnapshotError, match="ingested after scan"):
        create_snapshot(catalog, tmp_path / "snaps")


def test_tampered_snapshot_fails_verification(tmp_path: Path, catalog: Catalog, planted: dict) -> None:
    run_scan(catalog)
    result = create_snapshot(catalog, tmp_path / "snaps")
    table = pq.read_table(result.path / "train.parquet")
    pq.write_table(table.slice(1), result.path / "train.parquet")
    with pytest.raises(ManifestError, match=r"train\.parquet was modified"):
        load_snapshot(catalog, result.snapshot_id)
