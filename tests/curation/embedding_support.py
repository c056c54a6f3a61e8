"""Labelled prompts two embedding-check test files share: two intents of ten paraphrases each, and records of them."""

from __future__ import annotations

from pathlib import Path

from curation.checks.spec import ScanRecord
from curation.similarity.exact import KeepRank
from schemas.catalog import Catalog
from tests.curation.ingest_support import run, write_lines

CARD = [
    "When will my new card arrive?",
    "My card still has not arrived, how long does delivery take?",
    "How long until I receive my card in the mail?",
    "I ordered a card last week and it is not here yet.",
    "Is there a way to track the delivery of my card?",
    "What is the expected delivery time for a new card?",
    "My card hasn't come in the post yet.",
    "Can you tell me when my card will be delivered?",
    "It's been ten days and my card has not arrived.",
    "Where is my card? I am still waiting for it.",
]
RATE = [
    "What exchange rate do you use for euros?",
    "How is the currency conversion rate calculated?",
    "Why did I get a bad exchange rate on my purchase?",
    "Which exchange rate applies when I pay in dollars?",
    "Is your exchange rate the same as the market rate?",
    "How often is the exchange rate updated?",
    "I think the exchange rate you charged me is wrong.",
    "Where can I see today's exchange rates?",
    "Do you add a margin on top of the exchange rate?",
    "What rate do you apply when converting pounds to yen?",
]


def rec(i: int, prompt: str, response: str, label: str | None = None) -> ScanRecord:
    rid = f"rec_{i:04d}"
    return ScanRecord(rid, prompt, response, label, KeepRank(1, 0.0, ("2026-01-01T00:00:00.000000", i, 0), rid))


#: An exchange-rate question filed under card_arrival: the planted label error.
MISFILED = "What exchange rate will I get when I pay in Swiss francs?"


def banking_like(catalog: Catalog, tmp_path: Path) -> dict[str, str]:
    """Ingest the two intents as banking77 rows (text, category) with the misfiled query and one query under two
    intents; returns the query -> its record id."""
    rows = [{"text": p, "category": "card_arrival"} for p in CARD]
    rows += [{"text": p, "category": "exchange_rate"} for p in RATE]
    rows += [{"text": MISFILED, "category": "card_arrival"}]
    rows += [{"text": "Has my top up gone through?", "category": "pending_top_up"}]
    rows += [{"text": "Has my top-up gone through?", "category": "top_up_reverted"}]
    run(catalog, [write_lines(tmp_path / "b.jsonl", rows)], mapping={"text": "user", "category": "assistant"},
        template="intent")  # fmt: skip
    found = catalog.query("SELECT record_id, prompt FROM records")
    return {r["prompt"].rsplit(": ", 1)[-1]: r["record_id"] for r in found}  # the query -> its record
