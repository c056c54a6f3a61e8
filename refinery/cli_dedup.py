"""`refinery dedup`: near-duplicate clusters of a corpus in Parquet shards, outside any workspace.

For corpora too big to ingest into a workspace on one machine: the records stay in their Parquet files (columns
``record_id``, ``prompt``, ``response``), the heavy stages run on the executor (this process or Ray), and the clusters
are written as ``OUT/clusters.parquet`` (docs/SCALE.md). Exit codes: 0 done, 2 a usage problem (no such path, a file
that is not Parquet or lacks a column, a bad option), 1 the executor lost a task more often than allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from refinery.cli_context import ExecutorOpt, RayAddressOpt, cli_errors, executor_config, load_config
from refinery.errors import UsageError
from refinery.output import JsonOpt, emit_json, print_facts


def dedup(
    path: Annotated[Path, typer.Argument(help="A Parquet file, or a folder of Parquet shards (read in name order).")],
    out: Annotated[Path, typer.Option(help="Folder for clusters.parquet (created).")],
    threshold: Annotated[float | None, typer.Option(help="Minimum exact Jaccard of a pair (0.7).")] = None,
    scope: Annotated[
        str | None, typer.Option(help="Compare the whole pair, the prompt or the response (pair).")
    ] = None,
    ngram: Annotated[int | None, typer.Option(help="Tokens per shingle (5).")] = None,
    num_perm: Annotated[int | None, typer.Option(help="MinHash permutations (128).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON: near_dup's options, and 'executor': where to run.")
    ] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    keep_signatures: Annotated[
        bool, typer.Option(help="Keep OUT/signatures (the MinHash signatures, 512 bytes a record).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Near-duplicate clusters of Parquet shards (record_id, prompt, response), without a workspace."""
    with cli_errors():
        import time

        from pydantic import ValidationError

        from curation.executors import open_executor
        from curation.ingest.sources import shard_files
        from curation.similarity.near_dup import NearDupConfig
        from curation.similarity.near_dup_files import near_dup_files

        options: dict[str, Any] = load_config(config) if config else {}
        where = executor_config(dict(options.pop("executor", {}) or {}), executor, ray_address)
        given = {"threshold": threshold, "scope": scope, "ngram": ngram, "num_perm": num_perm}
        options.update({k: v for k, v in given.items() if v is not None})
        try:
            near_dup = NearDupConfig(**options)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        paths = shard_files(path, "parquet") if path.is_dir() else [path]
        if not paths:
            raise UsageError(f"{path}: no Parquet file in this folder")
        started = time.monotonic()
        with open_executor(where) as running:
            result = near_dup_files(paths, near_dup, running, out, keep_signatures=keep_signatures)
            stages = {name: stats.to_json() for name, stats in running.stats.items()}
        payload = {
            "records": result.records,
            "files": len(paths),
            "clusters": result.clusters,
            "clustered": result.clustered,
            "removed": result.clustered - result.clusters,
            "empty": result.empty,
            "shared_rows": result.shared_rows,
            "seconds": round(time.monotonic() - started, 3),
            "clusters_path": str(result.path),
            "executor": {"kind": where.kind, "stages": stages},
            **result.stats,
        }
        if as_json:
            emit_json(payload)
            return
        print_facts({k: v for k, v in payload.items() if not isinstance(v, dict)}, title="dedup")


def register(app: typer.Typer) -> None:
    """Add ``dedup`` to ``app``; calling it again changes nothing."""
    if not any(command.name == "dedup" for command in app.registered_commands):
        app.command(name="dedup")(dedup)
