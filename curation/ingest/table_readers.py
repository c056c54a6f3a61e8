"""Streaming readers for columnar containers: Parquet files and Hugging Face ``datasets``.

Rows come out as column -> value dicts, ``row`` being the 1-based row index. A file that cannot be opened,
or breaks mid-way, becomes one quarantined unit for the rest of it (never an exception).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.ingest.options import IngestConfigError
from curation.ingest.text_readers import ReadPosition
from curation.ingest.units import MAX_REST_BYTES, RawRow, one_line, raw_json

_BATCH_ROWS = 2048
#: Builders `datasets.load_dataset` uses for local data files, by extension.
HF_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_REST_BYTES)
    except OSError:
        return b""


def parquet_columns(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception:  # unreadable: reading it quarantines the file with the reason
        return None


def read_parquet(path: Path, position: ReadPosition) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    size = path.stat().st_size
    row = 0
    try:
        parquet = pq.ParquetFile(path)
        total = max(parquet.metadata.num_rows, 1)
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
            for item in batch.to_pylist():
                row += 1
                yield RawRow(row, raw_json(item), value=item)
            position.offset = size * row // total
    except Exception as exc:
        raw = _head(path) if row == 0 else b""
        yield RawRow(row + 1, raw, error=f"unreadable Parquet: {one_line(str(exc), 200)} (rest of the file)")
    position.offset = size


def import_datasets() -> Any:
    """The optional ``datasets`` package, imported only when a Hugging Face source is read."""
    try:
        import datasets
    except ImportError as exc:
        raise IngestConfigError(
            "reading Hugging Face datasets needs the 'datasets' package: pip install 'refinery[data]'"
        ) from exc
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``save_to_disk`` (a Dataset, or a DatasetDict of split folders)."""
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


@dataclass(frozen=True)
class HfPart:
    """One iterable part of a Hugging Face source: a saved Dataset, one split of a DatasetDict, or files."""

    label: str  # the `file` recorded for its rows
    split: str | None
    columns: list[str] | None


def hf_parts(path: Path) -> list[HfPart]:
    """The parts of a Hugging Face source, with their column names where known without reading rows."""
    datasets = import_datasets()
    if not path.is_dir():
        if path.suffix.lower() not in HF_BUILDERS:
            known = ", ".join(sorted(HF_BUILDERS))
            raise IngestConfigError(f"no Hugging Face builder for {path.name} (data file extensions: {known})")
        return [HfPart(str(path), None, None)]
    if not is_saved_dataset(path):
        raise IngestConfigError(f"{path} is not a folder written by datasets' save_to_disk")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise IngestConfigError(f"cannot load the dataset folder {path}: {one_line(str(exc), 200)}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        return [HfPart(str(path / split), split, list(loaded[split].column_names)) for split in loaded]
    return [HfPart(str(path), None, list(loaded.column_names))]


def _open_hf(path: Path, split: str | None) -> tuple[Any, int | None]:
    datasets = import_datasets()
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        part = loaded[split] if split is not None else loaded
        return part, part.num_rows
    builder = HF_BUILDERS[path.suffix.lower()]
    kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    stream = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
    return stream, None


def read_hf(path: Path, split: str | None, position: ReadPosition) -> Iterator[RawRow]:
    """Rows of a saved dataset (memory-mapped, iterated in batches) or of data files (streamed)."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    row = 0
    try:
        dataset, total = _open_hf(path, split)
        if total is not None:
            for batch in dataset.iter(batch_size=_BATCH_ROWS):
                columns = list(batch)
                for values in zip(*(batch[c] for c in columns), strict=True):
                    row += 1
                    item = dict(zip(columns, values, strict=True))
                    yield RawRow(row, raw_json(item), value=item)
                position.offset = size * row // max(total, 1)
        else:
            for item in dataset:
                row += 1
                yield RawRow(row, raw_json(item), value=item)
    except IngestConfigError:
        raise
    except Exception as exc:
        yield RawRow(row + 1, b"", error=f"unreadable dataset: {one_line(str(exc), 200)} (rest of the source)")
    position.offset = size


def first_hf_row(path: Path, split: str | None) -> dict[str, Any] | None:
    for raw in read_hf(path, split, ReadPosition()):
        return raw.value if isinstance(raw.value, dict) else None
    return None
