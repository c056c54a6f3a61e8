"""A folder of shards (the layout of Spark, Ray Data and datatrove outputs): every data file in name order, each
recorded as a file of its own; hidden and marker files skipped; a folder without data files is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.ingest.options import IngestConfigError, IngestOptions
from curation.ingest.pipeline import ingest
from schemas.catalog import Catalog
from tests.curation.ingest_support import run


def _shard(folder: Path, name: str, rows: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chats = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
             for i in rows]  # fmt: skip
    pq.write_table(pa.table({"messages": chats}), folder / name)


def test_a_folder_of_parquet_and_jsonl_shards_is_read_shard_by_shard(catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    _shard(out, "part-00001.parquet", range(100, 250))
    _shard(out, "part-00000.parquet", range(0, 100))
    (out / "extra").mkdir()
    (out / "extra" / "part-00002.jsonl").write_text(
        "".join(json.dumps({"instruction": f"task {i}", "output": f"done {i}"}) + "\n" for i in range(30)),
        encoding="utf-8",
    )
    (out / "_SUCCESS").write_text("")  # what Spark leaves behind
    (out / ".part-00000.parquet.crc").write_text("x")
    (out / "_temporary").mkdir()
    _shard(out / "_temporary", "part-99999.parquet", range(5))  # an unfinished write: not part of the output
    result = run(catalog, [out])
    assert (result.rows_read, result.ingested, result.quarantined) == (280, 280, 0)
    assert [Path(f.path).relative_to(out).as_posix() for f in result.files] == [
        "extra/part-00002.jsonl", "part-00000.parquet", "part-00001.parquet"
    ]  # fmt: skip
    assert [(f.format, f.rows_read) for f in result.files] == [("alpaca", 30), ("openai", 100), ("openai", 150)]
    per_file = catalog.query("SELECT file, count(*) AS n FROM source_rows GROUP BY file ORDER BY file")
    assert [(Path(r["file"]).name, r["n"]) for r in per_file] == [
        ("part-00002.jsonl", 30), ("part-00000.parquet", 100), ("part-00001.parquet", 150)
    ]  # fmt: skip
    again = run(catalog, [out])  # the same shards: the same batch, nothing new
    assert again.batch_id == result.batch_id and again.already_ingested


def test_format_picks_one_kind_of_shard_and_an_empty_folder_is_an_error(catalog: Catalog, tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    _shard(out, "a.parquet", range(3))
    (out / "b.jsonl").write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n", encoding="utf-8")
    only = run(catalog, [out], format="parquet")
    assert only.rows_read == 3 and [Path(f.path).name for f in only.files] == ["a.parquet"]
    empty = tmp_path / "empty"
    (empty / "_logs").mkdir(parents=True)
    (empty / "notes.txt").write_text("not data")
    with pytest.raises(IngestConfigError, match="is a folder with no data files"):
        ingest(catalog, [empty], IngestOptions())
