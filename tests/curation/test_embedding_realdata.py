"""Acceptance on banking77: the same query filed under two intents is a stored conflict (embeds 10k prompts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.checks import run_scan
from schemas.catalog import Catalog
from tests.curation.ingest_support import run

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
INTENT = {"text": "user", "category": "assistant"}


def test_banking77_top_up_query_under_two_intents_is_a_conflict(catalog: Catalog, shared_data: Path) -> None:
    run(catalog, [shared_data / "banking77/train.csv"], format="csv", mapping=INTENT, template="intent")
    result = run_scan(catalog, ["inconsistency"])
    assert "error" not in result.checks["inconsistency"]
    rows = catalog.query(
        "SELECT prompt_a, prompt_b, label_a, label_b, reason FROM conflicts "
        "WHERE prompt_a LIKE '%Has my top%up gone through?' AND prompt_b LIKE '%Has my top%up gone through?'"
    )
    assert len(rows) == 1
    assert {rows[0]["label_a"], rows[0]["label_b"]} == {"pending_top_up", "top_up_reverted"}
    flagged = catalog.query(
        "SELECT r.label FROM findings f JOIN records r USING (record_id) WHERE f.check_name = 'inconsistency' "
        "AND f.flagged AND r.prompt LIKE '%Has my top%up gone through?'"
    )
    assert sorted(f["label"] for f in flagged) == ["pending_top_up", "top_up_reverted"]
    # precision guard: conflicts stay a small share of the 10k records (measured 2026-12: see docs/CHECKS.md)
    assert result.checks["inconsistency"]["flagged"] < 1000
