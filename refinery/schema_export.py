"""JSON Schema files for the public models and the configuration files, so other tools can validate what
Refinery writes and editors can check (and complete) what a user writes: every option with its default and help.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from schemas.atomic import write_text_atomic
from schemas.manifest import Manifest
from schemas.records import IngestBatch, Message, QuarantinedRow, Record, SourceRow

SCHEMA_ID = "https://refinery.local/schemas/{name}.schema.json"

#: What Refinery writes: records, source rows, batches, manifests.
EXPORTED: dict[str, type[BaseModel]] = {
    "record": Record,
    "message": Message,
    "source_row": SourceRow,
    "quarantined_row": QuarantinedRow,
    "ingest_batch": IngestBatch,
    "manifest": Manifest,
}


def scan_config_model() -> type[BaseModel]:
    """The model of a `refinery scan --config` file: check name -> that check's options (only checks that take
    options; an unknown name is an error, as in the scan itself)."""
    from curation.checks.registry import check_configs
    from curation.executors import ExecutorConfig

    fields: dict[str, tuple[object, object]] = {
        name: (model | None, Field(default=None, description=" ".join((model.__doc__ or name).split())))
        for name, model in sorted(check_configs().items())
    }
    fields["executor"] = (ExecutorConfig | None, Field(default=None, description=ExecutorConfig.__doc__))
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        "ScanConfig",
        __config__=ConfigDict(extra="forbid"),
        __doc__="`refinery scan --config FILE`: options per check (docs/CHECKS.md), and the executor (docs/SCALE.md).",
        **fields,
    )
    return model


def config_models() -> dict[str, type[BaseModel]]:
    """What users write: the files of `train --config`, `eval --config`, `scan --config` and `snapshot create
    --policy`. Imported here, when asked for, so the record schemas need none of these packages."""
    from curation.snapshot import SnapshotPolicy
    from eval.runner import EvalConfig
    from training.config import TrainConfig

    return {
        "train_config": TrainConfig,
        "eval_config": EvalConfig,
        "scan_config": scan_config_model(),
        "snapshot_policy": SnapshotPolicy,
    }


def config_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a config model with every option's default, also those pydantic leaves out (defaults
    built by a factory: lists, nested option groups): a config file may be empty, so ``model()`` is valid."""
    schema = model.model_json_schema()
    defaults = model().model_dump(mode="json")
    for field, prop in schema.get("properties", {}).items():
        prop.setdefault("default", defaults[field])
    return schema


def export_schemas(folder: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every model of :data:`EXPORTED` and :func:`config_models`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    configs = config_models()
    for name, model in {**EXPORTED, **configs}.items():
        schema = config_schema(model) if name in configs else model.model_json_schema()
        schema["$id"] = SCHEMA_ID.format(name=name)
        path = folder / f"{name}.schema.json"
        write_text_atomic(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
