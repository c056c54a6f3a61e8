"""The records a scan reads (curation/checks/records.py): an Arrow file, unlinked once mapped, read into memory or
read from the mapping as the ``Sequence[ScanRecord]`` the checks take. Blocks are made tiny here so every path
(singles, materialised blocks, the block cache's evictions) runs on a few dozen records; a whole default scan of the
mapped table stores what the scan of the records in memory stores."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from curation.checks import records as scan_records
from curation.checks import runner as scan_runner
from curation.checks.spec import ScanRecord
from curation.checks.store import delete_scan_rows
from curation.similarity.exact import KeepRank
from schemas.catalog import Catalog
from schemas.ids import sha256_text
from tests.curation.embedding_support import banking_like
from tests.curation.ingest_support import run, write_lines, write_synthetic_families
from tests.curation.test_scan_on_ray import stored
from tests.support.cli import run_cli


def _rows(lo: int, hi: int) -> list[dict[str, str]]:
    return [{"instruction": f"question {i} ü 漢字", "output": f"answer {i} " * (1 + i % 4)} for i in range(lo, hi)]


def _reference(catalog: Catalog) -> list[ScanRecord]:
    """The training records as the scan read them before the file: one query, every row in memory."""
    with catalog.read() as con:
        rows = con.execute(scan_records.TRAINING_RECORDS_SQL).fetchall()
    return [
        ScanRecord(rid, prompt, response, label, KeepRank(1, 0.0, (t, int(row), int(sub)), rid))
        for rid, prompt, response, label, t, row, sub in rows
    ]


@pytest.fixture
def two_batches(catalog: Catalog, tmp_path: Path) -> Catalog:
    """60 training records, 20 of them in both batches (their rank is their first batch's), and an eval set."""
    run(catalog, [write_lines(tmp_path / "a.jsonl", _rows(0, 40))], format="alpaca")
    run(catalog, [write_lines(tmp_path / "b.jsonl", _rows(20, 60))], format="alpaca")
    run(catalog, [write_lines(tmp_path / "e.jsonl", _rows(100, 105))], format="alpaca", eval_set="heldout")
    return catalog


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_records, "BLOCK_ROWS", 7)
    monkeypatch.setattr(scan_records, "CACHED_BLOCKS", 2)
    monkeypatch.setattr(scan_records, "SINGLES_PER_BLOCK", 3)
    monkeypatch.setattr(scan_records, "IN_MEMORY_RECORDS", 10)  # 60 records: the mapped table


@pytest.mark.usefixtures("tiny_blocks")
def test_the_table_reads_the_training_records_in_id_order_by_every_access_path(two_batches: Catalog) -> None:
    expected = _reference(two_batches)
    assert len(expected) == 60
    assert [r.record_id for r in expected] == sorted(r.record_id for r in expected)
    table = scan_records.read_training_records(two_batches)
    assert table.mapped and len(table._batches) == 9  # 60 rows in blocks of 7
    assert len(table) == 60 and bool(table)
    assert list(table) == expected
    assert table.records_hash == sha256_text("\n".join(r.record_id for r in expected))
    order = list(range(60)) * 3
    random.Random(0).shuffle(order)
    assert [table[i] for i in order] == [expected[i] for i in order]  # singles, then blocks, evicted and re-read
    assert [table[i] for i in range(60)] == expected
    assert [table[-i] for i in range(1, 61)] == [expected[-i] for i in range(1, 61)]
    assert table[5:40:3] == expected[5:40:3] and table[::-1] == expected[::-1] and table[70:] == []
    assert expected[33] in table and table.index(expected[33]) == 33
    for bad in (60, -61):
        with pytest.raises(IndexError, match="of 60"):
            table[bad]
    table.close()
    assert len(table) == 0 and list(table) == []


@pytest.mark.usefixtures("tiny_blocks")
def test_up_to_the_in_memory_limit_the_records_are_read_into_memory_and_the_mapping_dropped(
    two_batches: Catalog,
) -> None:
    expected = _reference(two_batches)
    table = scan_records.read_training_records(two_batches, in_memory=60)
    assert not table.mapped and table._source is None and table._batches == []
    assert list(table) == expected and [table[i] for i in range(-60, 60)] == expected + expected
    assert table[3:50:4] == expected[3:50:4] and len(table) == 60
    assert table.records_hash == sha256_text("\n".join(r.record_id for r in expected))
    mapped = scan_records.read_training_records(two_batches, in_memory=59)
    assert mapped.mapped and list(mapped) == expected
    mapped.load()  # a mapped table read into memory later is the same table
    assert not mapped.mapped and list(mapped) == expected and mapped[-1] == expected[-1]


def test_the_file_is_gone_once_mapped_and_leftovers_of_dead_scans_are_removed(two_batches: Catalog) -> None:
    scratch = scan_records.scratch_folder(two_batches)
    scratch.mkdir()
    dead = scratch / ".records-999999999.arrow"  # a pid above Linux's pid_max: a scan killed long ago
    dead.write_bytes(b"left by a killed scan")
    alive = scratch / ".records-1.arrow"  # pid 1 runs: another scan's file is never touched
    alive.write_bytes(b"another scan")
    table = scan_records.read_training_records(two_batches)
    assert sorted(p.name for p in scratch.iterdir()) == [".records-1.arrow"]
    assert not (scratch / f".records-{os.getpid()}.arrow").exists()
    assert len(table) == 60 and table[59] == _reference(two_batches)[59]  # readable without its name
    table.close()


def test_no_training_records_is_an_empty_table(catalog: Catalog, tmp_path: Path) -> None:
    run(catalog, [write_lines(tmp_path / "e.jsonl", _rows(0, 5))], format="alpaca", eval_set="heldout")
    table = scan_records.read_training_records(catalog)
    assert len(table) == 0 and not table and list(table) == []
    assert table.records_hash == sha256_text("")


@pytest.mark.slow
def test_the_default_scan_of_the_mapped_table_stores_what_the_scan_of_the_records_in_memory_stores(
    workspace: Path, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check, the embedding checks' random look-ups included, reads the mapped table as it reads a list."""
    run_cli(workspace, "ingest", str(write_synthetic_families(tmp_path, n_bases=40)))  # families, PII, truncation
    banking_like(catalog, tmp_path)  # labelled paraphrases and a misfiled one: label_issue, inconsistency
    mapped: list[bool] = []

    def spy(catalog: Catalog) -> scan_records.RecordTable:
        table = scan_records.read_training_records(catalog)
        mapped.append(table.mapped)
        return table

    monkeypatch.setattr(scan_runner, "read_training_records", spy)
    first = run_cli(workspace, "scan")
    expected = stored(workspace)
    assert len(expected["findings"]) > 2000 and len(expected["duplicate_members"]) > 100
    with catalog.write() as con:
        delete_scan_rows(con, first["scan_id"])
    monkeypatch.setattr(scan_records, "IN_MEMORY_RECORDS", 0)
    monkeypatch.setattr(scan_records, "BLOCK_ROWS", 37)
    monkeypatch.setattr(scan_records, "CACHED_BLOCKS", 2)
    monkeypatch.setattr(scan_records, "SINGLES_PER_BLOCK", 5)
    second = run_cli(workspace, "scan")
    assert mapped == [False, True]
    assert second["scan_id"] == first["scan_id"] and not second["reused"]
    assert stored(workspace) == expected
