"""Scale past memory: near-duplicate clusters of N records in Parquet shards, on the local executor and on Ray.

    .venv/bin/python benchmarks/bench_scale_files.py --n 1000000 --executor both
    .venv/bin/python benchmarks/bench_scale_files.py --n 10000000 --executor ray

The corpus is ``scale_corpus.py``'s (generated, no data needed: 30% of the records in planted families of skewed
sizes, 40 shared prompt templates, Zipf words), written once as Parquet files of ``--file-records`` records under
``--corpus`` (default: the system temp folder) and reused. Each executor runs
``curation.similarity.near_dup_files.near_dup_files`` in its own process (so its peak RSS is its own): on Ray, the
sketch and the band shuffle run as tasks (one file per task); the driver groups the rows that share an LSH bucket,
and the join tasks (per group of records linked by buckets) return the clusters. Reported per executor: each
stage's seconds, tasks, the largest peak of a task's own memory (RssAnon sampled while it ran: a Ray worker's RSS
also counts the object-store pages it maps, and grows with the stage's output) and the largest worker RSS, the
driver's peak RSS (and at the end of each stage), the rows that share a bucket, and the records per second of the
whole run (Ray start-up and shut-down included). Recall against the planted truth: the planted pairs (two members
of one family) in one cluster, over all planted pairs (counted, not sampled: a family of k members in c clusters of
sizes k_i recalls sum C(k_i, 2) of its C(k, 2) pairs), the planted members clustered with another member of their
family, and the clustered pairs that are not planted pairs. With both executors: the clusters compared (identical
or the number of differences) and ray/local per stage (the overhead of Ray). Writes
bench-results/scale-files-<n>.json; the last line is the final figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from dedup_common import peak_rss_mb, table, write_result
from scale_corpus import family_of, generate_file, planted_pairs

EXECUTORS = ("local", "ray")


def make_corpus(n: int, seed: int, file_records: int, folder: Path, processes: int) -> tuple[list[Path], float]:
    """The corpus's files (made once: a ``done.json`` names what was made); the seconds it took (0 when reused)."""
    done = folder / "done.json"
    spec = {"n": n, "seed": seed, "file_records": file_records}
    paths = [folder / f"part-{i:05d}.parquet" for i in range((n + file_records - 1) // file_records)]
    if done.exists() and json.loads(done.read_text()) == spec:
        return paths, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        jobs = [
            pool.submit(generate_file, n, seed, i * file_records, min(file_records, n - i * file_records), path)
            for i, path in enumerate(paths)
        ]
        for job in jobs:
            job.result()
    done.write_text(json.dumps(spec))
    return paths, round(time.perf_counter() - started, 1)


def worker(args: argparse.Namespace) -> None:
    """One executor's run, in its own process; writes result.json to ``--out``."""
    from curation.executors import ExecutorConfig, open_executor
    from curation.similarity.near_dup import NearDupConfig
    from curation.similarity.near_dup_files import near_dup_files

    out = Path(args.out)
    paths = sorted(Path(args.corpus).glob("part-*.parquet"))
    config = ExecutorConfig(kind=args.worker, num_cpus=args.num_cpus)
    started = time.perf_counter()
    with open_executor(config) as executor:
        ready = time.perf_counter()
        found = near_dup_files(paths, NearDupConfig(), executor, out / "work")
        stages = {name: stats.to_json() for name, stats in executor.stats.items()}
        closing = time.perf_counter()
    ended = time.perf_counter()
    result = {
        "records": found.records,
        "files": len(paths),
        "startup_seconds": round(ready - started, 3),
        "shutdown_seconds": round(ended - closing, 3),
        "total_seconds": round(ended - started, 3),
        "records_per_second": round(found.records / (ended - started)),
        "stage_seconds": found.stats["stage_seconds"],
        "executor_stages": stages,
        "driver_peak_rss_mb": round(peak_rss_mb()),
        "driver_rows": found.shared_rows,
        "empty": found.empty,
        "clusters": found.clusters,
        "join": {k: v for k, v in found.stats.items() if k != "stage_seconds"},
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def run_worker(kind: str, args: argparse.Namespace, folder: Path, corpus: Path) -> dict[str, Any]:
    out = folder / kind
    out.mkdir()
    cmd = [sys.executable, __file__, "--worker", kind, "--out", str(out), "--corpus", str(corpus)]
    if args.num_cpus is not None:
        cmd += ["--num-cpus", str(args.num_cpus)]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a private instance: never a cluster left running here
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} run failed (exit {done.returncode}); its output is above")
    result: dict[str, Any] = json.loads((out / "result.json").read_text(encoding="utf-8"))
    result["recall"] = recall(out / "work" / "clusters.parquet", args.n, args.seed)
    return result


def recall(clusters: Path, n: int, seed: int) -> dict[str, Any]:
    """The clusters against the planted families (every pair counted)."""
    found = pq.read_table(clusters, columns=["cluster_id", "record_id"])
    rows = np.array([int(r[1:]) for r in found.column("record_id").to_pylist()], dtype=np.int64)
    _, cluster = np.unique(np.array(found.column("cluster_id").to_pylist()), return_inverse=True)
    family = family_of(n, seed, rows)
    planted = planted_pairs(family_of(n, seed, np.arange(n, dtype=np.int64)))
    sizes = np.bincount(cluster)
    clustered_pairs = int((sizes * (sizes - 1) // 2).sum())
    member = family >= 0
    pair_code = family[member] * (int(cluster.max()) + 1 if len(cluster) else 1) + cluster[member]
    _, together = np.unique(pair_code, return_counts=True)
    recalled = int((together * (together - 1) // 2).sum())
    all_family = family_of(n, seed, np.arange(n, dtype=np.int64))
    family_size = np.bincount(all_family[all_family >= 0])
    members = int(family_size[family_size >= 2].sum())
    with_family = int(together[together >= 2].sum())
    return {
        "planted_pairs": planted,
        "pair_recall": round(recalled / planted, 6) if planted else 1.0,
        "member_recall": round(with_family / members, 6) if members else 1.0,
        "clustered_pairs_not_planted": clustered_pairs - recalled,
        "clustered_records": len(rows),
        "planted_members": members,
    }


def compare(local: Path, ray: Path) -> str:
    a = pq.read_table(local).sort_by("record_id")
    b = pq.read_table(ray).sort_by("record_id")
    if a.equals(b):
        return "identical"
    return f"{abs(a.num_rows - b.num_rows)} rows more on one side" if a.num_rows != b.num_rows else "different values"


def stage_rows(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    blank = {"tasks": "", "worker_private_mb": "", "worker_rss_mb": ""}
    rows = [{"executor": name, "stage": "total", "seconds": result["total_seconds"], **blank}]
    for stage, stats in result["executor_stages"].items():
        rows.append(
            {
                "executor": name,
                "stage": stage,
                "seconds": stats["seconds"],
                "tasks": stats["tasks"],
                "worker_private_mb": stats["worker_peak_private_mb"],
                "worker_rss_mb": stats["worker_peak_rss_mb"],
            }
        )
    rows.append({"executor": name, "stage": "driver: groups", "seconds": result["stage_seconds"]["groups"], **blank})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executor", choices=[*EXECUTORS, "both"], default="both")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private Ray instance (default: all)")
    parser.add_argument("--file-records", type=int, default=50_000, help="records per Parquet file of the corpus")
    parser.add_argument("--corpus", default=None, help="where the corpus files are made and kept")
    parser.add_argument("--worker", choices=EXECUTORS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    corpus = Path(args.corpus or Path(tempfile.gettempdir()) / f"refinery-scale-corpus-{args.n}-{args.seed}")
    paths, made = make_corpus(args.n, args.seed, args.file_records, corpus, os.cpu_count() or 1)
    size_gb = sum(p.stat().st_size for p in paths) / 1e9
    print(f"corpus: {args.n:,} records in {len(paths)} files ({size_gb:.2f} GB) at {corpus}; made in {made} s")
    kinds = EXECUTORS if args.executor == "both" else (args.executor,)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-files-") as tmp:
        for kind in kinds:
            results[kind] = run_worker(kind, args, Path(tmp), corpus)
            print(table(stage_rows(kind, results[kind])))
            print(f"{kind}: recall {json.dumps(results[kind]['recall'])}")
            held = results[kind]["driver_rows"]
            print(f"{kind}: driver peak RSS {results[kind]['driver_peak_rss_mb']} MB, held {held:,} rows")
        payload: dict[str, Any] = {"n": args.n, "corpus_seconds": made, "corpus_gb": round(size_gb, 2), **results}
        if len(kinds) == 2:
            payload["clusters_compared"] = compare(
                Path(tmp) / "local" / "work" / "clusters.parquet", Path(tmp) / "ray" / "work" / "clusters.parquet"
            )
            payload["ray_over_local"] = round(results["ray"]["total_seconds"] / results["local"]["total_seconds"], 2)
            print(f"clusters: {payload['clusters_compared']}; ray/local total {payload['ray_over_local']}")
    path = write_result(f"scale-files-{args.n}", payload)
    last = results[kinds[-1]]
    largest = max(s["worker_peak_private_mb"] or 0 for s in last["executor_stages"].values())
    print(
        f"{path.name}: {args.n:,} records on {kinds[-1]} in {last['total_seconds']} s, pair recall "
        f"{last['recall']['pair_recall']}, largest task {largest} MB of its own memory, driver "
        f"{last['driver_peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main()
