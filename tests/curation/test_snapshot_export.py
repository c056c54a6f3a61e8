"""Export a snapshot in every format, ingest it into a fresh catalog: the same record ids come back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.snapshot import SPLITS, create_snapshot, load_snapshot
from curation.snapshot.export import FORMATS, ExportError, export_snapshot
from schemas.catalog import Catalog
from tests.curation.snapshot_support import build_corpus, chat, write_jsonl


def test_every_format_round_trips_through_ingest(catalog: Catalog, tmp_path: Path) -> None:
    build_corpus(catalog, tmp_path)
    snap = load_snapshot(catalog, create_snapshot(catalog, tmp_path / "snaps").snapshot_id)
    expected = {r["record_id"] for s in SPLITS for r in snap.read_split(s)}
    for fmt in FORMATS:
        out = tmp_path / f"export-{fmt}"
        result = export_snapshot(snap, fmt, out)
        assert sum(result.rows.values()) == len(expected)
        fresh = Catalog(tmp_path / f"fresh-{fmt}.duckdb")
        fresh.migrate()
        paths = [out] if fmt == "hf" else sorted(out.glob("*.jsonl"))
        ingest(fresh, paths, IngestOptions(format="auto" if fmt in ("hf", "jsonl") else fmt))
        got = {r["record_id"] for r in fresh.query("SELECT record_id FROM records")}
        assert got == expected, fmt
    one = export_snapshot(snap, "openai", tmp_path / "one-split.jsonl", split="train")
    assert len((tmp_path / "one-split.jsonl").read_text().splitlines()) == one.rows["train"]
    with pytest.raises(ExportError, match="already exists"):
        export_snapshot(snap, "openai", tmp_path / "one-split.jsonl", split="train")
    with pytest.raises(ExportError, match="unknown format"):
        export_snapshot(snap, "csv", tmp_path / "x")


def test_alpaca_refuses_multi_turn_records(catalog: Catalog, tmp_path: Path) -> None:
    turns = chat("hi there", "hello")["messages"] + chat("and again", "sure")["messages"]
    write_jsonl(tmp_path / "t.jsonl", [{"messages": turns}, *(chat(f"q {i}", "a") for i in range(5))])
    ingest(catalog, [tmp_path / "t.jsonl"], IngestOptions())
    from curation.checks import run_scan

    run_scan(catalog)
    snap = load_snapshot(catalog, create_snapshot(catalog, tmp_path / "s").snapshot_id)
    with pytest.raises(ExportError, match="not single-turn"):
        export_snapshot(snap, "alpaca", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    export_snapshot(snap, "sharegpt", tmp_path / "sg")
    rows = [json.loads(line) for s in SPLITS for line in (tmp_path / "sg" / f"{s}.jsonl").read_text().splitlines()]
    assert any(len(r["conversations"]) == 4 for r in rows)
