"""Tables read through --map: CSV, TSV, Parquet and Hugging Face datasets; labels, metadata and templates."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.ingest import IngestConfigError, IngestOptions, ingest
from schemas.catalog import Catalog
from tests.curation.ingest_support import quarantine, records_of, run, write_lines
from tests.support.require import require_module

INTENT = {"text": "user", "category": "assistant"}
DATA_EXTRA = "pip install -e '.[data]'"


def test_csv_planted_defects(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "intents.csv"
    path.write_bytes(
        b"text,category\n"  # 1
        b"Where is my card?,card_arrival\n"  # 2
        b'"line one\nline two, with comma",card_arrival\n'  # 3-4
        b"caf\xe9 card,card_arrival\n"  # 5
        b"a,b,c\n"  # 6
        b"hello,\n"  # 7
        b'"abc"x,card_arrival\n'  # 8
        b"\n"  # 9: blank
        b"  Where is my card?  ,card_arrival\r\n"  # 10: the same pair as line 2 once normalised
        b"Explain,This answer is long enough to not be a label at all because it keeps going past the "
        b"hundred character mark\n"  # 11
    )
    result = run(catalog, [path], format="csv", mapping=INTENT)
    assert (result.rows_read, result.ingested, result.quarantined, result.new_records) == (8, 4, 4, 3)
    assert quarantine(catalog, result.batch_id) == [
        (5, 0, "invalid UTF-8 at byte 3"),
        (6, 0, "wrong number of fields: 3 (header has 2)"),
        (7, 0, "empty assistant message at message 2"),
        (8, 0, "malformed CSV: ',' expected after '\"'"),
    ]
    records = records_of(catalog, result.batch_id)
    assert [r["row"] for r in records] == [2, 3, 10, 11]
    assert records[0]["record_id"] == records[2]["record_id"]
    assert records[0]["label"] == "card_arrival" and records[0]["response"] == "card_arrival"
    assert records[1]["prompt"] == "line one\nline two, with comma"
    assert records[3]["label"] is None
    raw = catalog.scalar("SELECT raw FROM quarantined_rows WHERE row = 5 AND batch_id = ?", [result.batch_id])
    assert bytes(raw) == b"caf\xe9 card,card_arrival"


def test_csv_reasons_are_exact(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b'text,category\n"abc"x,a\n"never closed,b\n')
    result = run(catalog, [path], format="csv", mapping=INTENT)
    assert quarantine(catalog, result.batch_id) == [
        (2, 0, "malformed CSV: ',' expected after '\"'"),
        (3, 0, "malformed CSV: unexpected end of data"),
    ]


def test_tsv_and_label_metadata_roles(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text(
        'question\tintent\tsource\tnotes\n"Quoted" card?\tcard_arrival\tapp\tx\nRefund?\trefund\tweb\ty\n',
        encoding="utf-8",
    )
    mapping = {"question": "user", "intent": "label", "source": "metadata", "notes": "ignore"}
    result = run(catalog, [path], mapping=mapping, template="intent")
    assert (result.ingested, result.quarantined) == (2, 0)
    first, second = records_of(catalog, result.batch_id)
    assert first["label"] == "card_arrival" and first["response"] == "card_arrival"
    assert first["prompt"].endswith('Customer message: "Quoted" card?')
    assert "intent label only" in first["prompt"] and "card_arrival" not in first["prompt"]
    assert first["metadata"] == {"source": "app"}
    assert second["metadata"] == {"source": "web"}
    config = catalog.scalar("SELECT config_json FROM ingest_batches WHERE batch_id = ?", [result.batch_id])
    assert '"name":"intent"' in config


def test_label_column_beside_assistant_and_unmapped_columns(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("q,a,topic,extra\nWhat is 2+2?,It is 4.,math,keep me\n", encoding="utf-8")
    mapping = {"q": "user", "a": "assistant", "topic": "label"}
    result = run(catalog, [path], mapping=mapping, template="Q: {text} [{extra}]")
    [record] = records_of(catalog, result.batch_id)
    assert record["label"] == "math" and record["response"] == "It is 4."
    assert record["prompt"] == "Q: What is 2+2? [keep me]"
    assert record["metadata"] == {"extra": "keep me"}


def test_parquet_nulls_and_integer_labels(catalog: Catalog, tmp_path: Path) -> None:
    table = pa.table(
        {"text": ["good", None, "also good", "x" * 30], "label": [1, 2, None, 3], "score": [0.5, 1.0, 2.0, 3.0]}
    )
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=2)
    result = run(catalog, [path], mapping={"text": "user", "label": "label"}, max_field_chars=20)
    assert (result.rows_read, result.ingested, result.quarantined) == (4, 1, 3)
    assert quarantine(catalog, result.batch_id) == [
        (2, 0, "field 'text' is null"),
        (3, 0, "field 'label' is null"),
        (4, 0, "field 'text' has 30 characters (limit 20)"),
    ]
    [record] = records_of(catalog, result.batch_id)
    assert (record["label"], record["response"], record["metadata"]) == ("1", "1", {"score": 0.5})


def test_parquet_with_chat_columns_is_detected(catalog: Catalog, tmp_path: Path) -> None:
    messages = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": messages}), path)
    result = run(catalog, [path])
    assert result.ingested == 1 and result.files[0].format == "openai"


def test_hf_saved_dataset_and_dataset_dict(catalog: Catalog, tmp_path: Path) -> None:
    datasets = require_module("datasets", DATA_EXTRA)
    rows = {"text": ["Where is my card?", "Refund please", None], "label": ["card", "refund", "x"]}
    single = tmp_path / "single"
    datasets.Dataset.from_dict(rows).save_to_disk(str(single))
    result = run(catalog, [single], mapping={"text": "user", "label": "assistant"})
    assert (result.rows_read, result.ingested, result.quarantined) == (3, 2, 1)
    assert quarantine(catalog, result.batch_id) == [(3, 0, "field 'text' is null")]
    assert result.files[0].format == "hf"

    splits = tmp_path / "splits"
    part = datasets.Dataset.from_dict({"instruction": ["Say hi"], "input": [""], "output": ["Hi"]})
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(splits))
    both = run(catalog, [splits])
    assert both.ingested == 2 and both.new_records == 1
    assert sorted(f.path for f in both.files) == [str(splits / "test"), str(splits / "train")]


def test_hf_data_files_through_load_dataset(catalog: Catalog, tmp_path: Path) -> None:
    require_module("datasets", DATA_EXTRA)
    path = write_lines(tmp_path / "rows.jsonl", [{"instruction": "Say hi", "output": "Hi"}])
    result = run(catalog, [path], format="hf")
    assert result.ingested == 1 and result.files[0].format == "alpaca"


def test_missing_datasets_names_the_install_command(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    path = write_lines(tmp_path / "rows.jsonl", [{"instruction": "Say hi", "output": "Hi"}])
    with pytest.raises(IngestConfigError, match=r"pip install 'refinery\[data\]'"):
        ingest(catalog, [path], IngestOptions(format="hf"))
