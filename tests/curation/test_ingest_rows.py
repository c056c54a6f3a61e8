"""Ingest's fast path stores exactly what the ``Record`` models and row-wise writes it replaced stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.ingest import pipeline, store
from curation.ingest.normalize import build_row
from curation.ingest.units import Draft, RecordRow
from schemas.catalog import Catalog
from schemas.ids import canonical_json, record_id, record_id_and_messages_json
from schemas.records import BatchPurpose, Message, Record, Role, normalize_content, prompt_of, prompt_text
from tests.curation.ingest_support import run, write_lines

# Any text JSON must escape (quotes, backslashes, control characters), non-ASCII and astral characters.
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
roles = st.sampled_from([r.value for r in Role])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(roles, texts), max_size=6))
def test_record_id_and_messages_json_equal_the_canonical_ones(messages: list[tuple[str, str]]) -> None:
    dicts = [{"role": role, "content": content} for role, content in messages]
    rid, messages_json = record_id_and_messages_json([r for r, _ in messages], [c for _, c in messages])
    assert rid == record_id(dicts)
    assert messages_json == canonical_json(dicts)
    assert prompt_of([r for r, _ in messages], [c for _, c in messages]) == prompt_text(dicts)


@settings(max_examples=200, deadline=None)
@given(
    system=st.one_of(st.none(), texts),
    turns=st.lists(texts, min_size=2, max_size=6),
    label=st.one_of(st.none(), texts),
    metadata=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), texts, st.none()), max_size=3),
)
def test_build_row_matches_the_record_model(
    system: str | None, turns: list[str], label: str | None, metadata: dict[str, object]
) -> None:
    pairs = [("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(turns)]
    if system is not None:
        pairs.insert(0, ("system", system))
    if not all(normalize_content(text) for _, text in pairs) or pairs[-1][0] != "assistant":
        return
    row = build_row(Draft(0, pairs, label=label, metadata=metadata), BatchPurpose.TRAIN, None)
    messages = [Message(role=Role(role), content=text) for role, text in pairs]
    expected_label = (normalize_content(label) or None) if label else None
    model = Record.from_messages(messages, label=expected_label, metadata=metadata)
    assert row.record_id == model.record_id
    assert row.messages_json == canonical_json(model.messages_as_dicts())
    assert (row.prompt, row.response, row.label) == (model.prompt_text, model.response_text, model.label)
    assert row.metadata_json == canonical_json(model.metadata)
    assert row.record() == model
    assert RecordRow.of_record(model) == row


def _tables(catalog: Catalog) -> dict[str, object]:
    return {
        "records": catalog.query("SELECT * EXCLUDE (created_at) FROM records ORDER BY record_id"),
        "sources": catalog.query("SELECT * FROM source_rows ORDER BY batch_id, file, row, sub_index"),
        "quarantine": catalog.query("SELECT * FROM quarantined_rows ORDER BY batch_id, file, row, sub_index"),
    }


def test_repeats_across_write_chunks_and_batches_keep_the_first_source(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record seen again in a later write chunk, or a later batch, keeps its first row and metadata; small
    chunks (and small Arrow batches inside them) store exactly what one chunk stores."""
    rows: list[object] = [{"instruction": f"q{i % 4}", "output": "a", "n": i} for i in range(10)]
    rows.insert(5, {"instruction": "bad"})
    first, second = write_lines(tmp_path / "a.jsonl", rows), write_lines(tmp_path / "b.jsonl", rows[:2] + rows[-3:])
    extra = write_lines(tmp_path / "c.jsonl", [{"instruction": f"q{i}", "output": "a", "n": -i} for i in range(6)])
    reference = Catalog(tmp_path / "reference.duckdb")
    for paths in ([first, second], [extra]):
        run(reference, paths)
    monkeypatch.setattr(pipeline, "CHUNK_UNITS", 3)
    monkeypatch.setattr(store, "_BATCH_ROWS", 2)
    a = run(catalog, [first, second])
    assert (a.rows_read, a.ingested, a.quarantined, a.new_records, a.source_rows) == (16, 15, 1, 4, 15)
    c = run(catalog, [extra])
    assert (c.ingested, c.new_records) == (6, 2)
    records = catalog.query("SELECT metadata_json, first_batch_id FROM records")
    assert sorted((json.loads(r["metadata_json"])["n"], r["first_batch_id"]) for r in records) == [
        *((n, c.batch_id) for n in (-5, -4)),
        *((n, a.batch_id) for n in range(4)),
    ]
    assert _tables(catalog) == _tables(reference)
