"""The ingest stage: ``ingest(catalog, paths, options) -> IngestResult``.

Every input unit (a row; an OASST root-to-leaf path; a self-instruct instance) either becomes a record with a
source row or a quarantined row with its reason, so ``rows_read == ingested + quarantined`` always. The batch
id derives from the files' content and the options: the same inputs with the same options are one batch,
stored once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from curation.ingest import shapes, tree_shapes
from curation.ingest.normalize import build_row
from curation.ingest.options import IngestOptions
from curation.ingest.shapes import ShapeContext, ShapeFn
from curation.ingest.sources import SourcePlan, plan_sources
from curation.ingest.store import BatchStore, Chunk, stored_files
from curation.ingest.table_readers import read_hf, read_parquet
from curation.ingest.templates import Template, resolve_template
from curation.ingest.text_readers import ReadPosition, read_csv, read_json_array, read_jsonl
from curation.ingest.units import RawRow, RecordRow, Rejected, UnitError
from schemas.catalog import Catalog, utcnow
from schemas.ids import artifact_id
from schemas.progress import progress
from schemas.records import BatchPurpose, IngestBatch, QuarantinedRow, Record

#: Bumped when parsing changes what a file yields, so an old batch id is not mistaken for the new result.
INGEST_VERSION = 1
#: Units per write transaction: large enough to be fast, small enough to let analysts query in between. Each
#: write ends with a checkpoint of the catalog, which rewrites the table's last, partly filled row group (DuckDB's
#: 122,880 rows) whole: writes of 5,000 units wrote each row about 12 times over (two thirds of a 1M-row ingest's
#: time); a row group a write writes each row about once, in a transaction of 1 to 2 s.
CHUNK_UNITS = 122_880
#: ... or this many bytes of texts, whichever comes first: what bounds a chunk's memory when rows are long.
CHUNK_BYTES = 128 << 20
_PROGRESS_EVERY = 1000

SHAPES: dict[str, ShapeFn] = {
    "alpaca": shapes.alpaca,
    "sharegpt": shapes.sharegpt,
    "openai": shapes.openai,
    "turns": shapes.turns,
    "mapped": shapes.mapped,
    "undetected": shapes.undetected,
    "oasst": tree_shapes.oasst,
    "selfinstruct": tree_shapes.selfinstruct,
}


class FileReport(BaseModel):
    path: str = Field(description="The `file` recorded on its rows (a dataset split is folder/split).")
    format: str
    sha256: str
    rows_read: int = 0
    ingested: int = 0
    quarantined: int = 0


class IngestResult(BaseModel):
    batch_id: str
    name: str
    purpose: BatchPurpose
    eval_set: str | None
    rows_read: int = Field(description="Units read: always ingested + quarantined.")
    ingested: int = Field(description="Units that became records (repeats of existing records included).")
    quarantined: int
    new_records: int = Field(description="Records that were not in the catalog before this batch.")
    source_rows: int
    seconds: float
    too_many_bad: bool = Field(description="quarantined / rows_read exceeded max_bad_ratio.")
    files: list[FileReport]
    already_ingested: bool = Field(default=False, description="The same batch was complete: nothing added.")
    warnings: list[str] = Field(
        default_factory=list, description="A file that held no rows, or whose every row was quarantined."
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class Accepted:
    row: int
    sub_index: int
    built: RecordRow

    @property
    def record(self) -> Record:
        return self.built.record()


@dataclass(frozen=True, slots=True)
class Refused:
    row: int
    sub_index: int
    reason: str
    raw: bytes


def read_rows(plan: SourcePlan, position: ReadPosition) -> Iterator[RawRow]:
    if plan.container == "jsonl":
        return read_jsonl(plan.path, position)
    if plan.container == "json":
        return read_json_array(plan.path, position)
    if plan.container in ("csv", "tsv"):
        return read_csv(plan.path, "\t" if plan.container == "tsv" else ",", position)
    if plan.container == "parquet":
        return read_parquet(plan.path, position)
    return read_hf(plan.path, plan.split, position)


def units_of(
    plan: SourcePlan, options: IngestOptions, template: Template | None, position: ReadPosition
) -> Iterator[Accepted | Refused]:
    """Every unit of one source, accepted as a record or refused with its reason."""
    shape = SHAPES[plan.shape]
    ctx = ShapeContext(limit=options.max_field_chars, mapping=plan.mapping)
    purpose = options.purpose
    for raw in read_rows(plan, position):
        if raw.error is not None:
            yield Refused(raw.row, 0, raw.error, raw.raw)
            continue
        for unit in shape(raw.value, ctx):
            if isinstance(unit, Rejected):
                yield Refused(raw.row, unit.sub_index, unit.reason, unit.raw or raw.raw)
                continue
            try:
                yield Accepted(raw.row, unit.sub_index, build_row(unit, purpose, template))
            except UnitError as exc:
                yield Refused(raw.row, unit.sub_index, str(exc), unit.raw or raw.raw)


def default_name(paths: list[Path]) -> str:
    stems = [Path(p).stem or Path(p).name for p in paths]
    name = "+".join(stems[:3]) + (f"+{len(stems) - 3} more" if len(stems) > 3 else "")
    return name[:200]


def ingest(catalog: Catalog, paths: list[Path], options: IngestOptions) -> IngestResult:
    """Read ``paths`` into the catalog as one batch; see the module docstring for the guarantees."""
    started = time.perf_counter()
    template = resolve_template(options.template) if options.template is not None else None
    plans = plan_sources(paths, options)
    identity = options.identity()
    batch_id = artifact_id(
        "batch", {"ingest_version": INGEST_VERSION, "files": [p.sha256 for p in plans], "options": identity}
    )
    name = options.name or default_name(paths)
    catalog.migrate()
    store = BatchStore(catalog, batch_id)
    reports = [FileReport(path=p.label, format=p.format, sha256=p.sha256) for p in plans]
    batch = IngestBatch(
        batch_id=batch_id,
        name=name,
        purpose=options.purpose,
        eval_set=options.eval_set,
        format=",".join(dict.fromkeys(p.format for p in plans)),
        files=[p.label for p in plans],
        config={**identity, "ingest_version": INGEST_VERSION, "max_bad_ratio": options.max_bad_ratio},
        started_at=utcnow(),
    )
    complete = store.begin(batch, [r.model_dump() for r in reports])
    if complete is not None:
        return _result(complete, options, time.perf_counter() - started, already=True)
    rows = 0
    # the bar counts bytes (the files' sizes are known up front); its description counts the rows read so far
    with progress(f"ingest {name}", total=sum(p.size for p in plans), unit="bytes") as bar:
        for plan, report in zip(plans, reports, strict=True):
            position = ReadPosition()
            chunk = Chunk(plan.label, plan.format)
            reported = ingested = quarantined = 0
            for unit in units_of(plan, options, template, position):
                if isinstance(unit, Accepted):
                    chunk.add_row(unit.row, unit.sub_index, unit.built)
                    ingested += 1
                else:
                    chunk.add_quarantined(_quarantined(unit, batch_id, chunk.file))
                    quarantined += 1
                rows += 1
                if chunk.units >= CHUNK_UNITS or chunk.nbytes >= CHUNK_BYTES:
                    store.write_chunk(chunk)
                    chunk = Chunk(plan.label, plan.format)
                if rows % _PROGRESS_EVERY == 0:
                    bar.set_description(f"ingest {name} ({rows:,} rows)")
                    bar.advance(position.offset - reported)
                    reported = position.offset
            store.write_chunk(chunk)
            report.rows_read, report.ingested, report.quarantined = ingested + quarantined, ingested, quarantined
            bar.set_description(f"ingest {name} ({rows:,} rows)")
            bar.advance(plan.size - reported)
    final = store.finish(
        sum(r.rows_read for r in reports),
        sum(r.ingested for r in reports),
        sum(r.quarantined for r in reports),
        [r.model_dump() for r in reports],
    )
    return _result(final, options, time.perf_counter() - started, already=False)


def _quarantined(unit: Refused, batch_id: str, file: str) -> QuarantinedRow:
    return QuarantinedRow(
        batch_id=batch_id, file=file, row=unit.row, sub_index=unit.sub_index, reason=unit.reason, raw=unit.raw
    )


def _result(row: dict[str, Any], options: IngestOptions, seconds: float, already: bool) -> IngestResult:
    """The batch as the catalog holds it (the same answer for a fresh run and a repeated one)."""
    rows_read, quarantined = int(row["rows_read"]), int(row["quarantined"])
    ratio = options.max_bad_ratio
    files = [FileReport(**f) for f in stored_files(row)]
    return IngestResult(
        batch_id=row["batch_id"],
        name=row["name"],
        purpose=BatchPurpose(row["purpose"]),
        eval_set=row["eval_set"],
        rows_read=rows_read,
        ingested=int(row["ingested"]),
        quarantined=quarantined,
        new_records=int(row["new_records"]),
        source_rows=int(row["source_rows"]),
        seconds=round(seconds, 3),
        too_many_bad=ratio is not None and rows_read > 0 and quarantined / rows_read > ratio,
        files=files,
        already_ingested=already,
        warnings=[w for f in files if (w := _file_warning(f))],
    )


def _file_warning(report: FileReport) -> str:
    """What is worth a warning about one file even when the batch as a whole is fine ('' if nothing)."""
    if report.rows_read == 0:
        return f"{report.path}: no rows (read as {report.format})"
    if report.quarantined == report.rows_read:
        return f"{report.path}: all {report.rows_read:,} rows were quarantined"
    return ""
