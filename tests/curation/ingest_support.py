"""Helpers for the ingest tests: write planted-defect files, run a batch, read back what the catalog holds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from curation.ingest import IngestOptions, IngestResult, ingest
from schemas.catalog import Catalog


def write_lines(path: Path, rows: list[Any]) -> Path:
    """One line per item: bytes are written as they are, anything else as JSON."""
    with path.open("wb") as handle:
        for row in rows:
            handle.write(row if isinstance(row, bytes) else json.dumps(row).encode("utf-8"))
            handle.write(b"\n")
    return path


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")
    return path


def run(catalog: Catalog, paths: list[Path], **options: Any) -> IngestResult:
    result = ingest(catalog, paths, IngestOptions(**options))
    assert_invariant(catalog, result)
    return result


def assert_invariant(catalog: Catalog, result: IngestResult) -> None:
    """rows_read == ingested + quarantined, and the catalog holds exactly that many rows of each kind."""
    assert result.rows_read == result.ingested + result.quarantined
    assert result.source_rows == result.ingested
    batch = [result.batch_id]
    assert catalog.scalar("SELECT count(*) FROM source_rows WHERE batch_id = ?", batch) == result.ingested
    assert catalog.scalar("SELECT count(*) FROM quarantined_rows WHERE batch_id = ?", batch) == result.quarantined
    assert catalog.scalar("SELECT status FROM ingest_batches WHERE batch_id = ?", batch) == "complete"
    assert sum(f.rows_read for f in result.files) == result.rows_read


def quarantine(catalog: Catalog, batch_id: str) -> list[tuple[int, int, str]]:
    rows = catalog.query(
        "SELECT row, sub_index, reason FROM quarantined_rows WHERE batch_id = ? ORDER BY file, row, sub_index",
        [batch_id],
    )
    return [(r["row"], r["sub_index"], r["reason"]) for r in rows]


def records_of(catalog: Catalog, batch_id: str) -> list[dict[str, Any]]:
    """Records with their source position, in source order (repeats appear once per source row)."""
    rows = catalog.query(
        "SELECT s.row, s.sub_index, s.metadata_json AS source_metadata, r.* FROM source_rows s "
        "JOIN records r USING (record_id) WHERE s.batch_id = ? ORDER BY s.file, s.row, s.sub_index",
        [batch_id],
    )
    for row in rows:
        row["messages"] = json.loads(row["messages_json"])
        row["metadata"] = json.loads(row["metadata_json"])
    return rows


def write_synthetic_families(folder: Path, n_bases: int = 300) -> Path:
    """Families of near-duplicate answers (a word changed per copy), PII and truncated answers."""
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(2000)]
    lines = []
    for base in range(n_bases):
        words = rng.choices(vocab, k=40)
        for copy in range(4):
            changed = list(words)
            changed[rng.randrange(len(changed))] = rng.choice(vocab)
            answer = " ".join(changed) + "."
            if base % 50 == 0 and copy == 0:
                answer += " Call me at 415-555-0132 or mail jane.doe@example.com."
            if base % 37 == 0 and copy == 1:
                answer = " ".join(changed[:25]) + " and then the"
            prompt = f"Question {base}-{copy}: explain topic {base}."
            lines.append(json.dumps({"instruction": prompt, "output": answer}))
    path = folder / "synthetic.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
