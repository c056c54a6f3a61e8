"""Helpers for the snapshot, audit and lineage tests: a small real workspace with scan, decisions and versions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from curation.checks import run_scan
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from schemas.catalog import Catalog, utcnow
from schemas.ids import canonical_json, record_id


def chat(user: str, assistant: str) -> dict[str, list[dict[str, str]]]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_corpus(catalog: Catalog, folder: Path, n: int = 40) -> dict[str, str]:
    """Ingest n labelled rows plus planted cases into ``catalog`` and scan; returns name -> record id."""
    rows = [chat(f"question number {i} about topic {i % 5} and more words here", f"label_{i % 2}") for i in range(n)]
    planted = {
        "dup_kept": chat("Where is my card? I ordered it two weeks ago and it has not arrived", "card"),
        "dup_removed": chat("where is my  CARD? i ordered it two weeks ago and it has not arrived", "card"),
        "near_a": chat("please tell me how to reset my online banking password quickly today now", "reset"),
        "near_b": chat("please tell me how to reset my online banking password quickly today thanks", "reset"),
        "pii": chat("my phone number is 555 0100, call me about my account", "callback"),
    }
    write_jsonl(folder / "train.jsonl", rows + list(planted.values()))
    leak = chat("please tell me how to reset my online banking password quickly today now ok", "reset")
    write_jsonl(folder / "eval.jsonl", [chat("question number 3 about topic 3 and more words here", "label_1"), leak])
    ingest(catalog, [folder / "train.jsonl"], IngestOptions(name="train"))
    ingest(catalog, [folder / "eval.jsonl"], IngestOptions(eval_set="heldout"))
    ids = {name: record_id(row["messages"]) for name, row in planted.items()}
    ids.update({f"q{i}": record_id(r["messages"]) for i, r in enumerate(rows)})
    scan = run_scan(catalog, ["exact", "exact_prompt", "near_dup"], {"near_dup": {"threshold": 0.6}})
    # a blocking check another module would run: flag the planted PII record (same scan, real catalog rows)
    with catalog.write() as con:
        con.execute(
            "INSERT INTO findings SELECT scan_id, record_id, 'pii', "
            "CASE WHEN record_id = ? THEN 1.0 ELSE 0.0 END, record_id = ?, "
            "CASE WHEN record_id = ? THEN 'phone number' END, NULL FROM findings "
            "WHERE scan_id = ? AND check_name = 'exact'",
            [ids["pii"], ids["pii"], ids["pii"], scan.scan_id],
        )
    return ids


_clock = [datetime(2026, 1, 1)]


def decide(
    catalog: Catalog,
    rid: str,
    decision: str,
    actor: str = "alice",
    round_name: str | None = "round-1",
    source: str = "argilla",
    edited: str | None = None,
) -> str:
    _clock[0] += timedelta(seconds=1)
    did = f"dec_{rid[-8:]}_{_clock[0].timestamp():.0f}"
    with catalog.write() as con:
        con.execute(
            "INSERT INTO review_decisions VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?)",
            [did, rid, decision, edited, actor, round_name, source, _clock[0], utcnow()],
        )
    return did


def add_edit(catalog: Catalog, original: str, user: str, assistant: str, actor: str = "bob") -> str:
    """A new version of ``original`` (row of records + record_versions) and the 'edit' decision naming it."""
    messages = chat(user, assistant)["messages"]
    new_id = record_id(messages)
    with catalog.write() as con:
        found = con.execute("SELECT first_batch_id FROM records WHERE record_id = ?", [original]).fetchone()
        assert found is not None, f"no record {original}"
        batch = found[0]
        con.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, '{}', 2, ?, ?, ?)",
            [new_id, canonical_json(messages), user, assistant, assistant, batch, original, utcnow()],
        )
        con.execute(
            "INSERT INTO record_versions VALUES (?, ?, 'edit', ?, 'typo', 'round-1', ?)",
            [new_id, original, actor, utcnow()],
        )
    decide(catalog, original, "edit", actor=actor, edited=new_id)
    return new_id
