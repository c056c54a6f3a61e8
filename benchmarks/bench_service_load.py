"""S1: a bounded load test of `refinery serve` on loopback: concurrent readers while a scan job writes.

    .venv/bin/python benchmarks/bench_service_load.py [--seconds 60] [--readers 32] [--records 3000]

A fresh workspace holds the demo corpus (``refinery.demo_corpus``, --records training rows plus its eval set),
ingested, scanned and snapshotted with the real CLI. The real server (``refinery serve``, one uvicorn process,
started and stopped as the service tests do: tests/support/service.py) then serves --readers concurrent readers
(asyncio tasks over one httpx connection pool, one viewer token) for --seconds. Each reader loops over the three
kinds of request, in turn:

- ``POST /sql``: one of a few analyst queries (flag counts of the latest scan, labels, one record by id);
- ``GET /lineage/{id}``: the lineage of the snapshot, the scan, a batch or one of 50 records;
- ``GET /scans/{id}/report``: the first scan's HTML quality report.

One request of each kind goes first, untimed (the first report computes its embedding map's vectors, then cached).

Meanwhile a writer submits a scan job (``POST /jobs``, an engineer token) and, when it ends, the next one: each
with another near-dup threshold, so each is a new scan that really writes its findings (an unchanged scan would
be reused and write nothing). An error is any answer but 200, or no answer within --request-timeout seconds.

Prints requests, requests/s, p50/p95/p99 and max latency per endpoint and overall, the error count (target: 0)
with the first errors' texts, and the scan jobs that ran; writes bench-results/service_load.json. The last line
is the final figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dedup_common import ROOT, table, write_result

sys.path.insert(0, str(ROOT))

ENDPOINTS = ("sql", "lineage", "report")
SCAN_CHECKS = ["exact", "near_dup", "empty_response", "length", "pii"]


@dataclass
class Tally:
    """Latencies (seconds) per endpoint, errors with a few of their texts, and the writer's jobs."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: Counter[str] = field(default_factory=Counter)
    error_texts: list[str] = field(default_factory=list)
    jobs: Counter[str] = field(default_factory=Counter)
    job_errors: list[str] = field(default_factory=list)

    def error(self, endpoint: str, text: str) -> None:
        self.errors[endpoint] += 1
        if len(self.error_texts) < 10:
            self.error_texts.append(f"{endpoint}: {' '.join(text.split())[:300]}")


def build_workspace(root: Path, records: int) -> dict[str, Any]:
    """ingest (training rows and the eval set) -> scan -> snapshot with the real CLI; ids for the readers."""
    from refinery.demo_corpus import write_demo_corpus
    from tests.support.cli import run_cli

    corpus = write_demo_corpus(root / "data", n_train=records, n_test=max(records // 10, 50))
    ws = root / "ws"
    run_cli(ws, "ingest", str(corpus.train_path), "--max-bad-ratio", "0.5")
    run_cli(
        ws,
        "ingest",
        str(corpus.test_path),
        "--format",
        "csv",
        "--map",
        "text=user",
        "--map",
        "category=assistant",
        "--eval-set",
        "demo-test",
    )
    scan = run_cli(ws, "scan", "--checks", ",".join(SCAN_CHECKS))
    snapshot = run_cli(ws, "snapshot", "create")
    from refinery.workspace import open_workspace

    catalog = open_workspace(ws).catalog
    record_ids = [r["record_id"] for r in catalog.query("SELECT record_id FROM records ORDER BY record_id LIMIT 50")]
    batch_ids = [r["batch_id"] for r in catalog.query("SELECT batch_id FROM ingest_batches")]
    return {
        "ws": ws,
        "scan_id": scan["scan_id"],
        "snapshot_id": snapshot["snapshot_id"],
        "lineage_ids": [snapshot["snapshot_id"], scan["scan_id"], *batch_ids, *record_ids],
        "record_ids": record_ids,
        "records": catalog.scalar("SELECT count(*) FROM records"),
    }


def sql_queries(record_ids: list[str]) -> list[str]:
    return [
        "SELECT check_name, count(*) FILTER (WHERE flagged) AS flagged, avg(score) AS mean_score FROM findings "
        "WHERE scan_id = (SELECT scan_id FROM latest_scan) GROUP BY 1 ORDER BY 1",
        "SELECT label, count(*) AS n FROM records GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
        *(f"SELECT * FROM records WHERE record_id = '{r}'" for r in record_ids[:5]),
        "SELECT snapshot_id, train, validation, test FROM snapshots ORDER BY created_at",
    ]


async def reader(
    client: Any, index: int, deadline: float, tally: Tally, setup: dict[str, Any], queries: list[str]
) -> None:
    rng = random.Random(index)
    turn = index % len(ENDPOINTS)
    while time.monotonic() < deadline:
        endpoint = ENDPOINTS[turn % len(ENDPOINTS)]
        turn += 1
        if endpoint == "sql":
            request = client.post("/sql", json={"sql": rng.choice(queries), "limit": 100, "format": "json"})
        elif endpoint == "lineage":
            request = client.get(f"/lineage/{rng.choice(setup['lineage_ids'])}")
        else:
            request = client.get(f"/scans/{setup['scan_id']}/report")
        start = time.perf_counter()
        try:
            response = await request
        except Exception as exc:  # a timeout or a dropped connection is an error of the run, not of the script
            tally.error(endpoint, f"{type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            tally.error(endpoint, f"{response.status_code} {response.text}")
            continue
        tally.latencies[endpoint].append(elapsed)


async def writer(client: Any, deadline: float, tally: Tally) -> None:
    """Scan jobs one after another until the deadline, each with a new near-dup threshold (a new scan id)."""
    step = 0
    while time.monotonic() < deadline:
        threshold = round(0.5 + (step % 90) * 0.005, 3)
        step += 1
        answer = await client.post("/jobs", json={"kind": "scan", "params": {"checks": SCAN_CHECKS,
                                                                             "threshold": threshold}})  # fmt: skip
        if answer.status_code not in (200, 201, 202):
            tally.job_errors.append(f"submit {answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(1)
            continue
        job_id = answer.json()["job_id"]
        while True:
            await asyncio.sleep(0.5)
            job = (await client.get(f"/jobs/{job_id}")).json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                tally.jobs[job["state"]] += 1
                if job["state"] != "succeeded":
                    tally.job_errors.append(f"{job_id} {job['state']}: {job.get('error')}")
                break
            if time.monotonic() > deadline + 120:
                tally.job_errors.append(f"{job_id} still {job['state']} two minutes after the end")
                return


async def run_load(base_url: str, viewer: str, engineer: str, setup: dict[str, Any], args: Any) -> tuple[Tally, float]:
    """The readers and the writer until --seconds have passed; the tally and the readers' wall seconds (until
    their last answer)."""
    import httpx

    tally = Tally()
    limits = httpx.Limits(max_connections=args.readers + 4, max_keepalive_connections=args.readers + 4)
    queries = sql_queries(setup["record_ids"])
    async with (
        httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {viewer}"}, limits=limits,
            timeout=args.request_timeout,
        ) as readers,
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {engineer}"}, timeout=60) as jobs,
    ):  # fmt: skip
        warm = time.monotonic()  # the first report computes the embedding map's vectors once (then cached)
        for first in (readers.get(f"/scans/{setup['scan_id']}/report", timeout=600),
                      readers.get(f"/lineage/{setup['snapshot_id']}"),
                      readers.post("/sql", json={"sql": queries[0], "format": "json"})):  # fmt: skip
            (await first).raise_for_status()
        print(f"warm-up (one request per endpoint): {time.monotonic() - warm:.1f} s")
        began = time.monotonic()
        deadline = began + args.seconds
        write = asyncio.create_task(writer(jobs, deadline, tally))
        await asyncio.gather(*(reader(readers, i, deadline, tally, setup, queries) for i in range(args.readers)))
        elapsed = time.monotonic() - began
        await write
    return tally, elapsed


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    import numpy as np

    p50, p95, p99 = np.percentile(values, [50, 95, 99]) * 1000
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": max(values) * 1000}


def summarise(tally: Tally, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name in (*ENDPOINTS, "overall"):
        values = [v for vs in tally.latencies.values() for v in vs] if name == "overall" else tally.latencies[name]
        errors = sum(tally.errors.values()) if name == "overall" else tally.errors[name]
        rows.append(
            {"endpoint": name, "requests": len(values) + errors, "ok": len(values), "errors": errors,
             "req_per_s": (len(values) + errors) / seconds, **percentiles(values)}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="How long the readers run.")
    parser.add_argument("--readers", type=int, default=32, help="Concurrent readers.")
    parser.add_argument("--records", type=int, default=3000, help="Training rows of the demo corpus.")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="Seconds before a request is an error.")
    parser.add_argument("--keep", action="store_true", help="Keep the workspace (its path is printed).")
    args = parser.parse_args()

    from tests.support.service import running_service

    folder = Path(tempfile.mkdtemp(prefix="refinery-load-"))
    try:
        started = time.monotonic()
        setup = build_workspace(folder, args.records)
        print(f"workspace {setup['ws']}: {setup['records']:,} records, built in {time.monotonic() - started:.0f} s")
        with running_service(setup["ws"]) as service:
            viewer, engineer = service.token("viewer", "load-reader"), service.token("engineer", "load-writer")
            tally, elapsed = asyncio.run(run_load(service.base_url, viewer, engineer, setup, args))
        rows = summarise(tally, elapsed)
        print(table(rows))
        print(f"scan jobs: {dict(tally.jobs) or 'none finished'}" + (f"; job errors: {tally.job_errors}"
                                                                     if tally.job_errors else ""))  # fmt: skip
        for text in tally.error_texts:
            print(f"error: {text}")
        overall = rows[-1]
        path = write_result(
            "service_load",
            {"seconds": args.seconds, "elapsed_s": elapsed, "readers": args.readers, "records": setup["records"],
             "endpoints": rows, "scan_jobs": dict(tally.jobs), "job_errors": tally.job_errors,
             "error_examples": tally.error_texts},
        )  # fmt: skip
        print(f"wrote {path} (load average now {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
        print(
            f"{overall['req_per_s']:.1f} requests/s over {args.seconds:g} s with {args.readers} readers: p50 "
            f"{overall['p50_ms'] or 0:.0f} ms, p95 {overall['p95_ms'] or 0:.0f} ms, p99 {overall['p99_ms'] or 0:.0f} "
            f"ms, {overall['errors']} errors; {tally.jobs['succeeded']} scan jobs written meanwhile"
        )
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
