"""The reliability suite's short subset, in CI: a few seeded trials of every scenario (the full suite, with more
trials and review pull against a real Argilla server, is ``make reliability``; docs/RELIABILITY.md).

Every row must pass: killed commands rerun to the reference result with ``refinery audit`` clean, every tampering
is caught, a full disk gives one clear line and no damage, and a second writer says that it waits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.curation.review_support import NEEDS_SERVER
from tests.reliability.rows import Row, details, table
from tests.reliability.suite import QUICK, Plan, run_suite


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Row]:
    rows = run_suite(tmp_path_factory.mktemp("reliability"), QUICK, seed=0, model=tiny_model_dir)
    print(table(rows), details(rows), sep="\n")
    return {row.scenario: row for row in rows}


def _passed(row: Row) -> None:
    assert row.trials > 0 and row.ok, f"{row.scenario}: {row.passed}/{row.trials} passed: {row.detail}"


@pytest.mark.parametrize("stage", ["ingest", "scan", "snapshot", "train (resume)", "eval"])
def test_a_killed_command_reruns_to_the_reference_result(quick_rows: dict[str, Row], stage: str) -> None:
    row = quick_rows[f"kill -9: {stage}"]
    _passed(row)
    assert row.reached_reference == row.audit_clean == row.trials


def test_every_tampering_is_caught(quick_rows: dict[str, Row]) -> None:
    row = quick_rows["tampering: snapshot, adapter, eval files"]
    _passed(row)
    assert row.trials >= 20 and row.caught == row.trials


def test_a_full_disk_fails_clearly_and_the_rerun_succeeds(quick_rows: dict[str, Row]) -> None:
    row = quick_rows["disk full mid-write"]
    _passed(row)
    assert row.caught is not None and row.caught >= 1  # at least one write really failed


def test_a_second_writer_says_it_waits(quick_rows: dict[str, Row]) -> None:
    row = quick_rows["two writers: scan + scan"]
    _passed(row)
    assert "notice after" in row.detail


def _needs_server(test: Callable[..., None]) -> Callable[..., None]:
    """Slow, and skipped where the Argilla server's venv is missing (outside CI), like the other review tests."""
    for mark in NEEDS_SERVER:
        test = mark(test)
    return test


@_needs_server
def test_a_killed_review_pull_reruns_to_the_reference_result(tmp_path: Path, tiny_model_dir: Path) -> None:
    plan = Plan(kills={}, review_pull=2, disk_full=0, writers=0, writers_timeout=False)
    rows = run_suite(tmp_path, plan, seed=0, only=("review",), model=tiny_model_dir)
    assert [row.scenario for row in rows] == ["kill -9: review pull"]
    _passed(rows[0])
