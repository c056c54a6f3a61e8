"""Ingest streams: Python memory stays far below the size of the file it reads."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from curation.ingest import IngestOptions, ingest, pipeline
from schemas.catalog import Catalog

# Few long rows rather than many short ones: tracemalloc slows every allocation, and rows cost per row.
ROWS = 12_000
FILLER = "lorem ipsum dolor sit amet " * 33  # ~900 bytes a row: a file of ~11 MB


@pytest.mark.slow
def test_jsonl_ingest_memory_is_bounded(catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(ROWS):
            handle.write(f'{{"instruction": "question {i} {FILLER}", "output": "answer {i % 100}"}}\n')
    size = path.stat().st_size
    # Smaller write chunks keep the bound tight; what is measured is that nothing grows with the file.
    monkeypatch.setattr(pipeline, "CHUNK_UNITS", 1000)
    warm_up = tmp_path / "warm.jsonl"  # first use imports modules lazily: not the ingest's own memory
    warm_up.write_text('{"instruction": "warm", "output": "up"}\n', encoding="utf-8")
    ingest(catalog, [warm_up], IngestOptions())
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        result = ingest(catalog, [path], IngestOptions())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak -= baseline
    assert result.ingested == ROWS and result.new_records == ROWS
    assert size > 10_000_000
    # Holding the rows (as bytes, let alone as records) would need more than the file's size.
    assert peak < size / 2, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
