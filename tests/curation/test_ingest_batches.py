"""Batch identity, repeats, killed runs, the bad-row ratio, and configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.ingest import IngestConfigError, IngestOptions, ingest, parse_mapping, pipeline
from curation.ingest.store import BatchStore
from schemas.catalog import Catalog
from tests.curation.ingest_support import quarantine, records_of, run, write_lines


def pairs_file(tmp_path: Path, n: int = 12, bad_every: int = 4) -> Path:
    rows: list[object] = []
    for i in range(n):
        rows.append({"instruction": f"Q{i}", "output": "" if i % bad_every == bad_every - 1 else f"A{i}"})
    return write_lines(tmp_path / "pairs.jsonl", rows)


def snapshot(catalog: Catalog) -> dict[str, object]:
    return {
        "records": catalog.query("SELECT * EXCLUDE (created_at) FROM records ORDER BY record_id"),
        "sources": catalog.query("SELECT * FROM source_rows ORDER BY file, row, sub_index"),
        "quarantine": catalog.query("SELECT * FROM quarantined_rows ORDER BY file, row, sub_index"),
        "batches": catalog.query("SELECT * EXCLUDE (started_at, finished_at) FROM ingest_batches ORDER BY batch_id"),
    }


def test_reingest_is_the_same_batch_and_adds_nothing(catalog: Catalog, tmp_path: Path) -> None:
    path = pairs_file(tmp_path)
    first = run(catalog, [path])
    assert (first.rows_read, first.ingested, first.quarantined, first.new_records) == (12, 9, 3, 9)
    before = snapshot(catalog)
    again = run(catalog, [path], name="another name")
    assert again.already_ingested and not first.already_ingested
    assert again.batch_id == first.batch_id
    assert (again.rows_read, again.ingested, again.new_records) == (12, 9, 9)
    assert snapshot(catalog) == before


def test_other_options_or_content_make_another_batch(catalog: Catalog, tmp_path: Path) -> None:
    path = pairs_file(tmp_path)
    first = run(catalog, [path])
    as_eval = run(catalog, [path], eval_set="holdout")
    assert as_eval.batch_id != first.batch_id
    assert as_eval.new_records == 0 and as_eval.purpose.value == "eval"
    assert catalog.scalar("SELECT count(DISTINCT record_id) FROM eval_items WHERE eval_set = 'holdout'") == 9
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes() + b'{"instruction": "new", "output": "one"}\n')
    grown = run(catalog, [copy])
    assert grown.batch_id != first.batch_id and grown.new_records == 1
    sources = catalog.scalar(
        "SELECT count(*) FROM source_rows WHERE record_id = ?", [records_of(catalog, first.batch_id)[0]["record_id"]]
    )
    assert sources == 3  # one record, a source row per batch


def test_killed_batch_is_cleaned_and_redone(catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pairs_file(tmp_path, n=40)
    reference_catalog = Catalog(tmp_path / "reference.duckdb")
    reference = run(reference_catalog, [path])

    calls = {"n": 0}
    real_write = BatchStore.write_chunk

    def dying_write(self: BatchStore, chunk: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_write(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "CHUNK_UNITS", 7)
    monkeypatch.setattr(BatchStore, "write_chunk", dying_write)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        ingest(catalog, [path], IngestOptions())
    assert catalog.scalar("SELECT status FROM ingest_batches") == "running"
    assert catalog.scalar("SELECT count(*) FROM source_rows") == 11  # two chunks of 7 units, 3 bad

    monkeypatch.setattr(BatchStore, "write_chunk", real_write)
    redone = run(catalog, [path])
    assert not redone.already_ingested and redone.batch_id == reference.batch_id
    assert (redone.rows_read, redone.ingested, redone.quarantined, redone.new_records) == (
        reference.rows_read,
        reference.ingested,
        reference.quarantined,
        reference.new_records,
    )
    assert snapshot(catalog) == snapshot(reference_catalog)


def test_rerun_keeps_records_another_batch_points_at(catalog: Catalog, tmp_path: Path) -> None:
    path = pairs_file(tmp_path)
    first = run(catalog, [path])
    other = write_lines(tmp_path / "other.jsonl", [{"instruction": "Q0", "output": "A0"}])
    second = run(catalog, [other])
    assert second.new_records == 0
    shared = records_of(catalog, second.batch_id)[0]["record_id"]
    with catalog.write() as con:  # pretend the first batch was killed after writing everything
        con.execute("UPDATE ingest_batches SET status = 'running' WHERE batch_id = ?", [first.batch_id])
        con.execute("DELETE FROM source_rows WHERE batch_id = ? AND row > 6", [first.batch_id])
    redone = run(catalog, [path])
    assert redone.new_records == 9 and redone.ingested == 9
    assert catalog.scalar("SELECT first_batch_id FROM records WHERE record_id = ?", [shared]) == first.batch_id
    assert catalog.scalar("SELECT count(*) FROM records") == 9


def test_too_many_bad_rows_are_stored_then_reported(catalog: Catalog, tmp_path: Path) -> None:
    path = pairs_file(tmp_path, n=8, bad_every=2)
    result = run(catalog, [path], max_bad_ratio=0.25)
    assert result.too_many_bad and result.quarantined == 4 and result.ingested == 4
    relaxed = run(catalog, [path], max_bad_ratio=0.5)
    assert relaxed.already_ingested and not relaxed.too_many_bad
    assert quarantine(catalog, result.batch_id)[0] == (2, 0, "empty assistant message at message 2")


def test_result_to_json(catalog: Catalog, tmp_path: Path) -> None:
    result = run(catalog, [pairs_file(tmp_path)])
    data = result.to_json()
    assert data["purpose"] == "train" and data["name"] == "pairs"
    assert data["files"][0]["path"] == str((tmp_path / "pairs.jsonl").resolve())
    assert set(data) >= {"batch_id", "rows_read", "ingested", "quarantined", "new_records", "source_rows"}


def test_template_field_missing_from_a_row(catalog: Catalog, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "rows.jsonl",
        [{"q": "Hi", "a": "Hello", "src": "web"}, {"q": "Yo", "a": "Hey"}],
    )
    result = run(catalog, [path], mapping={"q": "user", "a": "assistant"}, template="{text} (via {src})")
    assert quarantine(catalog, result.batch_id) == [(2, 0, "template field 'src' missing from the row")]
    assert records_of(catalog, result.batch_id)[0]["prompt"] == "Hi (via web)"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "xml"}, "unknown format 'xml'"),
        ({"mapping": {"text": "speaker"}}, "unknown role 'speaker' for column 'text'"),
        ({"format": "csv", "mapping": {"category": "assistant"}}, "needs at least one user column"),
        ({"format": "csv"}, "format csv needs --map"),
        ({"mapping": {"text": "user"}}, "training data needs an assistant or label column"),
        ({"template": "fancy"}, "unknown template 'fancy'"),
        ({"template": "{text.upper}"}, "must be a plain field name"),
        ({"template": "no fields"}, "unknown template"),
        ({"max_bad_ratio": 1.5}, "max_bad_ratio must be between 0 and 1"),
        ({"format": "alpaca", "mapping": {"a": "user", "b": "assistant"}}, "--map does not apply"),
    ],
)
def test_invalid_options_raise_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(IngestConfigError) as excinfo:
        IngestOptions(**options)  # type: ignore[arg-type]
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_input_errors_raise_before_anything_is_written(catalog: Catalog, tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("text,category\nhi,greet\n", encoding="utf-8")
    (tmp_path / "no_data").mkdir()
    (tmp_path / "no_data" / "README.txt").write_text("a folder without data files", encoding="utf-8")
    cases = [
        ([tmp_path / "missing.jsonl"], IngestOptions(), "no such file or folder"),
        ([csv_path], IngestOptions(), "csv input needs --map"),
        ([csv_path], IngestOptions(mapping={"body": "user", "category": "assistant"}), "'body' is not a column"),
        (
            [csv_path],
            IngestOptions(mapping={"text": "user", "category": "assistant"}, template="{x} {text}"),
            "template field {x} is not a column",
        ),
        ([csv_path, csv_path], IngestOptions(mapping={"text": "user", "category": "assistant"}), "more than once"),
        ([write_lines(tmp_path / "odd.jsonl", [{"foo": 1}])], IngestOptions(), "cannot tell the format"),
        ([tmp_path / "no_data"], IngestOptions(), "is a folder with no data files .* not a saved Hugging Face"),
        ([], IngestOptions(), "no input files"),
    ]
    for paths, options, message in cases:
        with pytest.raises(IngestConfigError, match=message):
            ingest(catalog, paths, options)
    assert catalog.scalar("SELECT count(*) FROM ingest_batches") == 0


def test_parse_mapping() -> None:
    assert parse_mapping(["text=user", "category = Assistant"]) == {"text": "user", "category": "assistant"}
    with pytest.raises(IngestConfigError, match="COLUMN=ROLE"):
        parse_mapping(["text"])
