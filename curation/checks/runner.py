"""`refinery scan`: run quality checks over the training records and store findings in the catalog.

Every check returns one finding per record (score in [0, 1], higher = worse; a flag; a reason) and, for
duplicate checks, the clusters with their kept member; the runner holds each output to that contract before
storing it (:func:`enforce_contract`). A failing check, or one that breaks the contract, is recorded in the
scan summary instead of aborting the scan. A scan's id derives from the record set and its config (and the
eval sets and embedding models its checks depend on), so rerunning an unchanged scan is free, and a scan
killed half-way is redone cleanly.
"""

from __future__ import annotations

import functools
import json
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

from pydantic import BaseModel
from rich.markup import escape

from curation.checks.records import RecordTable, read_training_records
from curation.checks.registry import CHECKS, default_checks, resolve_checks
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, ContractError, ScanError, ScanRecord
from curation.checks.store import delete_scan_rows, store_check
from curation.embeddings.model import model_id
from curation.executors import (
    Executor,
    ExecutorConfig,
    ExecutorError,
    ExecutorUnavailable,
    PrivateMemoryWatch,
    open_executor,
    release_freed_memory,
    shards_of,
)
from curation.similarity.eval_match import eval_items_hash
from schemas.catalog import Catalog, add_lineage_edge, utcnow
from schemas.ids import artifact_id, canonical_json
from schemas.locks import step_lock
from schemas.progress import log, progress


@dataclass
class ScanResult:
    scan_id: str
    records: int
    seconds: float
    checks: dict[str, dict[str, Any]]
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scan_id": self.scan_id, "records": self.records, "seconds": self.seconds}
        out.update(self.checks)
        out["reused"] = self.reused
        return out


#: How often the scan samples its own memory while a check runs (``peak_private_mb`` in the check's summary).
MEMORY_SAMPLE_SECONDS = 0.05


def load_training_records(catalog: Catalog) -> RecordTable:
    """Records with at least one training source row, each with the rank used to pick kept members, in record-id
    order, read through an Arrow file: in memory up to 2M records, from the mapped file past that
    (:mod:`curation.checks.records`)."""
    return read_training_records(catalog)


def scan_config(catalog: Catalog, resolved: dict[str, BaseModel | None]) -> dict[str, Any]:
    """What a scan's id hashes besides the record set: the checks, their options, and what they depend on."""
    config: dict[str, Any] = {"checks": sorted(resolved)}
    params = {name: model.model_dump(mode="json") for name, model in resolved.items() if model is not None}
    if params:  # absent for checks without config, so earlier scan ids stay valid
        config["params"] = params
    if any(CHECKS[name].needs.eval_sets for name in resolved):  # the result depends on the eval sets too
        config["eval_items"] = eval_items_hash(catalog)
    embedding = {
        name: model_id(getattr(resolved[name], "model", None))
        for name in resolved
        if CHECKS[name].needs.embedding_model
    }
    if embedding:  # and on the vectors: another model, model file or quantised recipe is another scan
        config["embedding_models"] = embedding
    return config


def enforce_contract(name: str, records: Sequence[ScanRecord], output: CheckOutput) -> None:
    """Raise :class:`ContractError` unless ``output`` holds exactly one finding per record, every score (and
    pair score) is a number in [0, 1], and no flagged finding scores 0 (higher means worse)."""
    expected = [r.record_id for r in records]
    found = [f.record_id for f in output.findings]
    if len(found) != len(expected) or set(found) != set(expected):
        missing = sorted(set(expected) - set(found))
        repeated = len(found) - len(set(found))
        raise ContractError(
            f"check {name} returned {len(found)} findings for {len(expected)} records "
            f"({len(missing)} records without one, {repeated} repeated)"
        )
    for f in output.findings:
        if not (isinstance(f.score, int | float) and math.isfinite(f.score) and 0.0 <= f.score <= 1.0):
            raise ContractError(f"check {name} scored record {f.record_id} {f.score!r}, outside [0, 1]")
        if f.flagged and f.score == 0.0:
            raise ContractError(f"check {name} flagged record {f.record_id} with score 0 (higher must mean worse)")
    for p in output.pairs:
        if not (math.isfinite(p.score) and 0.0 <= p.score <= 1.0):
            raise ContractError(f"check {name} scored the pair {p.record_a}, {p.record_b} {p.score!r}")


def _run_shard(spec: CheckSpec, config: BaseModel | None, shard: Sequence[ScanRecord]) -> CheckOutput:
    """One shard of a per-record check (on a worker: no catalog)."""
    return spec.run(shard, CheckContext(None, config))


def join_summaries(how: dict[str, str], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' summaries of a per-record check joined as its spec's ``shard_summary`` says."""
    joined: dict[str, Any] = {}
    for key in sorted({k for s in summaries for k in s}):
        values = [s[key] for s in summaries if key in s]
        rule = how.get(key)
        if rule == "max":
            joined[key] = max(values)
        elif rule == "same":
            if any(v != values[0] for v in values):
                raise ContractError(f"summary key {key!r} differs between shards: {values[:3]}")
            joined[key] = values[0]
        elif rule == "sum" and all(isinstance(v, dict) for v in values):
            counts: dict[str, Any] = {}
            for value in values:
                for k, v in value.items():
                    counts[k] = counts.get(k, 0) + v
            joined[key] = dict(sorted(counts.items()))
        elif rule == "sum":
            joined[key] = sum(values)
        else:
            raise ContractError(f"summary key {key!r} has no shard rule (CheckSpec.shard_summary)")
    return joined


def _stage_stats(executor: Executor, before: dict[str, int]) -> dict[str, Any]:
    """What the executor measured of the stages that ran tasks since ``before`` (stage -> tasks then): the check
    itself when sharded, its sketch, its embedding."""
    stages = {stage: stats.to_json() for stage, stats in executor.stats.items() if stats.tasks > before.get(stage, 0)}
    return {"kind": executor.kind, "stages": stages}


def run_check(
    name: str, records: Sequence[ScanRecord], catalog: Catalog | None, config: BaseModel | None, executor: Executor
) -> CheckOutput:
    """``name`` over ``records``: on shards on the executor when the check is per-record (in this process too, so
    its memory is that of one shard); else at once, with the executor in its context for the stages it distributes
    itself."""
    spec = CHECKS[name]
    if spec.shard_summary is None:
        return spec.run(records, CheckContext(catalog, config, executor))
    task = functools.partial(_run_shard, spec, config)
    outputs = list(executor.map(task, _record_shards(executor, records), stage=name))
    return CheckOutput(
        findings=[f for out in outputs for f in out.findings],
        pairs=[p for out in outputs for p in out.pairs],
        summary=join_summaries(dict(spec.shard_summary), [out.summary for out in outputs]),
    )


_SHARDS: dict[int, tuple[Executor, Sequence[ScanRecord], list[list[ScanRecord]]]] = {}


class _LazyShards(Sequence[list[ScanRecord]]):
    """The records in shards of ``size``, each read when a task asks for it (in this process: one shard's records
    at a time, not every record as objects)."""

    def __init__(self, records: Sequence[ScanRecord], size: int) -> None:
        self.records, self.size = records, size

    def __len__(self) -> int:
        return -(-len(self.records) // self.size)

    @overload
    def __getitem__(self, index: int) -> list[ScanRecord]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[ScanRecord]]: ...
    def __getitem__(self, index: int | slice) -> list[ScanRecord] | list[list[ScanRecord]]:
        if isinstance(index, slice):
            return [self[j] for j in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(f"shard {index} of {len(self)}")
        return list(self.records[index * self.size : (index + 1) * self.size])


def _record_shards(executor: Executor, records: Sequence[ScanRecord]) -> Sequence[list[ScanRecord]]:
    """The records cut into the executor's shards. In this process, each read when its task runs; on a cluster,
    once per executor and record list, pinned where the workers read them: the per-record checks of a scan share
    them instead of sending every record once per check."""
    if executor.kind == "local":
        return _LazyShards(records, executor.shard_records)
    cached = _SHARDS.get(id(executor))
    if cached is not None and cached[0] is executor and cached[1] is records:
        return cached[2]
    shards = executor.pin([list(s) for s in shards_of(records, executor.shard_records)])
    _SHARDS.clear()  # one scan at a time: the previous executor's shards go
    _SHARDS[id(executor)] = (executor, records, shards)
    return shards


def run_scan(
    catalog: Catalog,
    checks: Sequence[str] | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    executor: ExecutorConfig | None = None,
) -> ScanResult:
    """Run ``checks`` (with per-check ``config``, e.g. ``{"near_dup": {"threshold": 0.8}}``) over the records.

    ``checks=None`` is the default set (:func:`~curation.checks.registry.default_checks`): the default checks plus
    those ``config`` configures. A default check whose optional extra is missing (the embedding checks without
    ``refinery[embed]``) is left out of it with one logged line and a ``skipped`` entry in the scan summary; a check
    named in ``checks`` fails the scan instead (:func:`~curation.checks.registry.resolve_checks`).

    ``executor`` says where the heavy stages run (:mod:`curation.executors`: this process, or a Ray cluster); it is
    not part of the scan's id, because it does not change the result (tests/curation/test_scan_on_ray.py). A stage
    that cannot finish on it (:class:`~curation.executors.ExecutorError`) fails the whole scan and leaves nothing of
    it in the catalog.

    One scan at a time per catalog: a second process waits (and says so) until the first is done, then reuses
    its result when it is the same scan.
    """
    with step_lock(catalog.path, "scan"):
        return _run_scan(catalog, checks, config, executor)


def _run_scan(
    catalog: Catalog,
    checks: Sequence[str] | None,
    config: dict[str, dict[str, Any]] | None,
    executor_config: ExecutorConfig | None,
) -> ScanResult:
    left_out: dict[str, str] = {}
    if checks is None:
        checks, left_out = default_checks(config)
        if left_out:
            log(f"[yellow]scan: {', '.join(left_out)} left out[/yellow] ({escape(next(iter(left_out.values())))})")
    resolved = resolve_checks(checks, config)
    started = time.monotonic()
    records = load_training_records(catalog)
    try:
        return _scan_records(catalog, records, resolved, left_out, executor_config, started)
    finally:
        records.close()


def _scan_records(
    catalog: Catalog,
    records: RecordTable,
    resolved: dict[str, BaseModel | None],
    left_out: dict[str, str],
    executor_config: ExecutorConfig | None,
    started: float,
) -> ScanResult:
    names = sorted(resolved)
    if not records:
        raise ScanError("no training records in the catalog: run `refinery ingest` first")
    config_of_scan = scan_config(catalog, resolved)
    records_hash = records.records_hash
    scan_id = artifact_id("scan", {"records": records_hash, "config": config_of_scan})
    with catalog.read() as con:
        row = con.execute("SELECT status, summary_json FROM scans WHERE scan_id = ?", [scan_id]).fetchone()
    if row is not None and row[0] == "complete":
        return ScanResult(scan_id, len(records), time.monotonic() - started, json.loads(row[1]), reused=True)
    with catalog.write() as con:
        delete_scan_rows(con, scan_id)
        con.execute(
            "INSERT INTO scans (scan_id, status, config_json, records, started_at) VALUES (?, 'running', ?, ?, ?)",
            [scan_id, canonical_json(config_of_scan), len(records), utcnow()],
        )
    summary: dict[str, dict[str, Any]] = {name: {"skipped": why} for name, why in left_out.items()}
    try:
        with open_executor(executor_config) as executor, progress("scan", total=len(names)) as bar:
            for name in names:
                bar.set_description(f"scan: {name}")
                tasks_before = {stage: stats.tasks for stage, stats in executor.stats.items()}
                check_started = time.monotonic()
                output: CheckOutput | None = None
                release_freed_memory()  # the previous check's output is gone: its pages go back to the system
                with PrivateMemoryWatch(MEMORY_SAMPLE_SECONDS) as watch:
                    try:
                        output = run_check(name, records, catalog, resolved[name], executor)
                        enforce_contract(name, records, output)
                    except ExecutorError:
                        raise
                    except Exception as exc:  # one broken check must not sink the scan
                        output = None
                        summary[name] = {"error": f"{exc.__class__.__name__}: {exc}", "trace": traceback.format_exc()}
                        log(f"[red]check {name} failed[/red]: {exc}")
                    if output is not None:
                        store_check(catalog, scan_id, name, output)
                if output is None:
                    bar.advance()
                    continue
                flagged = sum(f.flagged for f in output.findings)
                summary[name] = {**output.summary, "flagged": flagged}
                summary[name]["wall_seconds"] = round(time.monotonic() - check_started, 3)  # run and store
                if watch.peak_mb is not None:  # this process's own memory at its highest while the check ran
                    summary[name]["peak_private_mb"] = round(watch.peak_mb)
                if executor.kind != "local":
                    summary[name]["executor"] = _stage_stats(executor, tasks_before)
                bar.advance()
    except (ExecutorError, ExecutorUnavailable):
        with catalog.write() as con:
            delete_scan_rows(con, scan_id)
        raise
    finally:
        _SHARDS.clear()  # the shards of this scan's records (and their pinned copies) go with it
    with catalog.write() as con:
        con.execute(
            "UPDATE scans SET status = 'complete', summary_json = ?, finished_at = ? WHERE scan_id = ?",
            [canonical_json(summary), utcnow(), scan_id],
        )
        batches = con.execute(
            "SELECT DISTINCT batch_id FROM source_rows JOIN ingest_batches USING (batch_id) WHERE purpose = 'train'"
        ).fetchall()
        for (batch_id,) in batches:
            add_lineage_edge(con, scan_id, "scan", batch_id, "batch", "scanned")
    return ScanResult(scan_id, len(records), round(time.monotonic() - started, 3), summary)
