"""`refinery snapshot export`: a verified snapshot as JSONL in the common chat formats or a Hugging Face dataset.

Every format carries the messages exactly as stored, so ``refinery ingest`` of the export yields the same record
ids (ids hash the messages; metadata never enters them):

- ``jsonl``: ``{"record_id", "messages", "label", "metadata"}`` per line (ingested as the openai shape);
- ``openai``: ``{"messages": [{"role", "content"}]}``;
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt"|"tool", "value"}]}``;
- ``alpaca``: ``{"instruction", "input": "", "output"[, "system"]}``; single-turn records only (an optional
  system turn, one user turn, one assistant turn), anything else is refused naming the record;
- ``hf``: ``datasets`` ``save_to_disk``: a Dataset for one split, a DatasetDict of the three splits otherwise;
  columns record_id, messages, label, metadata_json.

With ``--split`` the output is one file (one dataset folder for hf); without, a folder with one
``<split>.jsonl`` per split. The output appears atomically and is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.snapshot.load import Snapshot
from curation.snapshot.policy import SPLITS
from schemas.atomic import atomic_directory, write_text_atomic
from schemas.errors import InputError

FORMATS = ("jsonl", "hf", "openai", "sharegpt", "alpaca")
_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}


class ExportError(InputError):
    """The format, split or output path is unusable, or a record cannot be expressed in the format."""


@dataclass(frozen=True)
class ExportResult:
    snapshot_id: str
    format: str
    path: Path
    rows: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "format": self.format, "path": str(self.path), "rows": self.rows}


def _jsonl(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "record_id": row["record_id"],
        "messages": row["messages"],
        "label": row["label"],
        "metadata": json.loads(row["metadata_json"] or "{}"),
    }


def _openai(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}


def _sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    return {"conversations": [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in row["messages"]]}


def _alpaca(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if len(system) > 1 or [m["role"] for m in rest] != ["user", "assistant"] or messages[0]["role"] == "assistant":
        roles = "/".join(m["role"] for m in messages)
        raise ExportError(f"record {row['record_id']} ({roles}) is not single-turn: alpaca cannot hold it")
    out = {"instruction": rest[0]["content"], "input": "", "output": rest[1]["content"]}
    return {**out, "system": system[0]} if system else out


_ROW_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "jsonl": _jsonl,
    "openai": _openai,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
}


def export_snapshot(snapshot: Snapshot, fmt: str, out: Path, split: str | None = None) -> ExportResult:
    """Write ``snapshot`` (already verified by ``load_snapshot``) to ``out`` in ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; formats are {', '.join(FORMATS)}")
    if split is not None and split not in SPLITS:
        raise ExportError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if out.exists():
        raise ExportError(f"{out} already exists: exports are never overwritten")
    splits = [split] if split else list(SPLITS)
    data = {s: snapshot.read_split(s) for s in splits}
    rows = {s: len(v) for s, v in data.items()}
    if fmt == "hf":
        _save_hf(data, out, single=split is not None)
    else:
        convert = _ROW_FORMATS[fmt]
        texts = {s: "".join(json.dumps(convert(r), ensure_ascii=False) + "\n" for r in v) for s, v in data.items()}
        if split is not None:
            write_text_atomic(out, texts[split])
        else:
            with atomic_directory(out) as staging:
                for s, text in texts.items():
                    (staging / f"{s}.jsonl").write_text(text, encoding="utf-8")
    return ExportResult(snapshot.snapshot_id, fmt, out, rows)


def _save_hf(data: dict[str, list[dict[str, Any]]], out: Path, single: bool) -> None:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency here
        raise ExportError("the hf format needs the `datasets` package") from exc
    features = datasets.Features(
        {
            "record_id": datasets.Value("string"),
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "label": datasets.Value("string"),
            "metadata_json": datasets.Value("string"),
        }
    )

    def build(rows: list[dict[str, Any]]) -> Any:
        columns = {name: [r[name] for r in rows] for name in features}
        return datasets.Dataset.from_dict(columns, features=features)

    with atomic_directory(out) as staging:
        target = staging / "dataset"
        if single:
            build(next(iter(data.values()))).save_to_disk(str(target))
        else:
            datasets.DatasetDict({s: build(rows) for s, rows in data.items()}).save_to_disk(str(target))
        for item in target.iterdir():
            item.rename(staging / item.name)
        target.rmdir()
