"""Real data: banking77 train scanned for contamination against its own test split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.scan import run_scan
from schemas.catalog import Catalog

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
INTENT = {"text": "user", "category": "assistant"}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_banking77_test_queries_in_train_are_contamination(catalog: Catalog, shared_data: Path) -> None:
    train_csv, test_csv = shared_data / "banking77/train.csv", shared_data / "banking77/test.csv"
    ingest(catalog, [train_csv], IngestOptions(format="csv", mapping=INTENT, template="intent"))
    ingest(catalog, [test_csv], IngestOptions(mapping=INTENT, eval_set="banking77-test"))
    with train_csv.open(newline="", encoding="utf-8") as handle:
        train = {_norm(row["text"]) for row in csv.DictReader(handle)}
    with test_csv.open(newline="", encoding="utf-8") as handle:
        leaked = {_norm(row["text"]) for row in csv.DictReader(handle)} & train
    assert len(leaked) == 7  # counted with plain Python over the CSVs

    result = run_scan(catalog, ["contamination"])
    summary = result.checks["contamination"]
    assert summary["eval_items"] == 3079
    assert summary["template_words"] == [16, 0]  # the intent template is stripped from the training prompts
    assert summary["contaminated"] < 200  # 127 measured; 546 when 13-grams spanned the template
    hits = catalog.query(
        "SELECT c.overlap, c.prompt, c.eval_prompt FROM contamination c WHERE c.check_name = 'contamination'"
    )
    exact = {
        _norm(h["eval_prompt"])
        for h in hits
        if h["overlap"] == 1.0 and _norm(h["prompt"].split("Customer message: ", 1)[1]) == _norm(h["eval_prompt"])
    }
    assert exact == leaked
