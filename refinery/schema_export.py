"""JSON Schema files for the public models, so other tools can validate what Refinery writes."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.atomic import write_text_atomic
from schemas.manifest import Manifest
from schemas.records import IngestBatch, Message, QuarantinedRow, Record, SourceRow

EXPORTED: dict[str, type[BaseModel]] = {
    "record": Record,
    "message": Message,
    "source_row": SourceRow,
    "quarantined_row": QuarantinedRow,
    "ingest_batch": IngestBatch,
    "manifest": Manifest,
}


def export_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EXPORTED.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://refinery.local/schemas/{name}.schema.json"
        path = folder / f"{name}.schema.json"
        write_text_atomic(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
