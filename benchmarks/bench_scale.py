"""Scale: the scan's heavy checks on the local executor and on Ray: time per stage, peak RSS, recall, same findings.

    .venv/bin/python benchmarks/bench_scale.py [--n 100000] [--executor local|ray|both] [--num-cpus N]
    .venv/bin/python benchmarks/bench_scale.py --n 20000 --executor ray --kill-worker near_dup:sketch:1

The records are the heavy-family corpus of B2f (``family_corpus.py``: Toolformer records copied into families of 2
to 1,000 near-duplicates, with known families), built in memory as the scan's ``ScanRecord``s: the prompt is the
family text, the response a short answer (one per family: a different answer to each member would push most of
the family's pairs under the threshold), and about 0.5% of the answers each are planted defects (empty, truncated,
repetitive, a refusal, an e-mail address) so the per-record checks have something to find. Each executor runs
in its own process (its peak RSS is its own) and passes every check through ``curation.checks.runner.run_check``,
as ``refinery scan`` does, with a fresh temporary DuckDB catalog: the signatures are stored there as in a scan
(without a catalog, ``signatures_for`` sketches in the driver whatever the executor); the findings are not
stored. With ``ray`` the MinHash sketch
(``near_dup:sketch``) and the per-record checks run in shards of ``--shard-records`` on Ray tasks of a private
instance of ``--num-cpus`` CPUs, and so do near_dup's band join (a shuffle) and its join tasks (docs/SCALE.md).

Reported per executor: the wall time of each check, near_dup's own stage times (sketch, match and the match's
candidates / verify / cluster), the executor's per-stage tasks, workers and largest worker peak RSS, the driver's
peak RSS, and for Ray the start-up (``ray.init``) and shut-down, both counted in its total. Then ray/local for each
stage and the total (the Ray overhead), and whether both runs gave identical findings (record id, score, flag,
reason, details) and clusters (members, kept id): "identical", or the number of differences. Recall: pair and
member recall of the near_dup clusters on sampled families (as in B2f, the truth computed on the compared texts).
``--kill-worker STAGE:SHARD`` kills the Ray worker running that shard once (``REFINERY_FAULT_KILL_WORKER``), to
show the scan surviving it. Writes bench-results/scale-<n>.json (scale-<n>-kill.json with ``--kill-worker``); the
last line is the final figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from bench_b2_families import sampled_recall
from dedup_common import alpaca_text, machine, peak_rss_mb, table, write_result
from family_corpus import FamilyCorpus, generate_families

from curation.checks.spec import CheckOutput, ScanRecord

CHECKS = ("near_dup", "pii", "truncated", "repetitive", "refusal", "empty_response")
EXECUTORS = ("local", "ray")
DEFECT_RATE = 0.005  # share of the records given each planted defect
#: The planted responses, and the check each one is for.
DEFECTS: dict[str, tuple[str, str]] = {
    "empty": ("empty_response", ""),
    "truncated": ("truncated", "Here is the call to make:\n```python\nresult = calculator("),
    "repetitive": ("repetitive", "\n".join(["The call returned the same row again."] * 8)),
    "refusal": ("refusal", "I'm sorry, but I can't help with that request."),
    "pii": ("pii", "The maintainer, jane.doe@fastmail.com, has the full log of this call."),
}


def build_records(n: int) -> tuple[FamilyCorpus, list[ScanRecord], dict[str, int]]:
    """The family corpus as scan records (ids ``rec_00000000``..., in id order like the scan's), the corpus whose
    ``alpaca_text`` of each row is exactly the text near_dup compares (for recall), and the planted defects per check.
    """
    from curation.similarity.exact import KeepRank

    corpus = generate_families(n)
    rng = random.Random(2)
    words = ["list", "sum", "table", "date", "city", "price", "answer", "result", "word", "name", "total"]
    kinds = list(DEFECTS)
    planted = dict.fromkeys((check for check, _ in DEFECTS.values()), 0)
    answers = [f"Done: the call returned the {rng.choice(words)} {rng.randrange(1000)}." for _ in corpus.base]
    rows: list[dict[str, str]] = []
    records: list[ScanRecord] = []
    for i, row in enumerate(corpus.rows):
        draw = rng.random()
        if draw < DEFECT_RATE * len(kinds):
            check, response = DEFECTS[kinds[int(draw / DEFECT_RATE)]]
            planted[check] += 1
        else:
            response = answers[corpus.family[i]]
        prompt = alpaca_text(row)
        rid = f"rec_{i:08d}"
        rows.append({"instruction": prompt, "input": "", "output": response})  # alpaca_text: prompt \n response
        records.append(ScanRecord(rid, prompt, response, None, KeepRank(1, 0.0, ("2026-01-01T00:00:00", i, 0), rid)))
    return FamilyCorpus(rows, corpus.family, corpus.base), records, planted


def _digest(value: Any) -> int:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def digests(output: CheckOutput) -> tuple[np.ndarray, np.ndarray]:
    """One 64-bit hash per finding (record id, score, flag, reason, details), in finding order, and the sorted hashes
    of the clusters (members, kept id): what two runs are compared on."""
    findings = [_digest([f.record_id, f.score, f.flagged, f.reason, f.details]) for f in output.findings]
    clusters = sorted(_digest([list(c.members), c.kept]) for c in output.clusters)
    return np.array(findings, dtype=np.uint64), np.array(clusters, dtype=np.uint64)


def run_checks(
    names: list[str], records: list[ScanRecord], catalog: Any, executor: Any, out: Path
) -> tuple[dict[str, Any], list[CheckOutput]]:
    """Every check through ``run_check``, timed; its summary, flags and the executor's stage stats of it."""
    from curation.checks.registry import resolve_checks
    from curation.checks.runner import enforce_contract, run_check

    resolved = resolve_checks(names)
    results: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    near_dup: list[CheckOutput] = []
    for name, config in resolved.items():
        before = {stage: stats.tasks for stage, stats in executor.stats.items()}
        started = time.perf_counter()
        output = run_check(name, records, catalog, config, executor)
        enforce_contract(name, records, output)
        seconds = time.perf_counter() - started
        stages = {
            stage: stats.to_json() for stage, stats in executor.stats.items() if stats.tasks > before.get(stage, 0)
        }
        results[name] = {
            "seconds": round(seconds, 3),
            "flagged": sum(f.flagged for f in output.findings),
            "stages": stages,
            "summary": output.summary,
        }
        print(f"{executor.kind}: {name} {seconds:.1f} s", file=sys.stderr, flush=True)
        arrays[f"findings__{name}"], arrays[f"clusters__{name}"] = digests(output)
        if name == "near_dup":
            near_dup.append(output)
    np.savez(out / "digests.npz", **arrays)  # type: ignore[arg-type]
    return results, near_dup


def worker(args: argparse.Namespace) -> None:
    """One executor's run, in its own process; writes result.json and digests.npz to ``--out``."""
    from curation.executors import ExecutorConfig, open_executor
    from schemas.catalog import Catalog

    out = Path(args.out)
    started = time.perf_counter()
    corpus, records, planted = build_records(args.n)
    result: dict[str, Any] = {"corpus_seconds": round(time.perf_counter() - started, 3)}
    result["rss_after_corpus_mb"] = round(peak_rss_mb())
    result["planted"] = planted
    config = ExecutorConfig(kind=args.worker, num_cpus=args.num_cpus, shard_records=args.shard_records)
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.tmp) as tmp:
        catalog = Catalog(Path(tmp) / "catalog.duckdb")
        catalog.migrate()
        with ExitStack() as stack:
            clock = time.perf_counter()
            executor = stack.enter_context(open_executor(config))
            result["startup_seconds"] = round(time.perf_counter() - clock, 3)
            result["cpus"] = executor.cpus() if hasattr(executor, "cpus") else 1
            result["checks"], near_dup = run_checks(args.checks.split(","), records, catalog, executor, out)
            clock = time.perf_counter()
            stack.close()  # stops the private Ray instance
            result["shutdown_seconds"] = round(time.perf_counter() - clock, 3)
    result["checks_seconds"] = round(sum(c["seconds"] for c in result["checks"].values()), 3)
    result["total_seconds"] = round(
        result["startup_seconds"] + result["checks_seconds"] + result["shutdown_seconds"], 3
    )
    result["peak_rss_mb"] = round(peak_rss_mb())  # the driver's: before recall, which shingles every text again
    del records
    if near_dup:
        label = np.full(len(corpus.rows), -1, dtype=np.int64)
        for c, cluster in enumerate(near_dup[0].clusters):
            label[[int(m[4:]) for m in cluster.members]] = c
        threshold = result["checks"]["near_dup"]["summary"]["threshold"]
        result["recall"] = sampled_recall(corpus, label, threshold, args.sample_families)
        result["recall_by_record"] = sampled_recall(corpus, label, threshold, args.sample_families // 4, True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def run_worker(kind: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out = folder / kind
    out.mkdir()
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(args.n), "--out", str(out)]
    cmd += ["--shard-records", str(args.shard_records), "--checks", args.checks]
    cmd += ["--sample-families", str(args.sample_families)]
    if args.num_cpus is not None:
        cmd += ["--num-cpus", str(args.num_cpus)]
    if args.tmp is not None:
        cmd += ["--tmp", args.tmp]
    # A private Ray instance, always: ray.init() without an address joins a cluster that `ray start` left running on
    # this machine (/tmp/ray/ray_current_cluster), which would measure neither start-up nor --num-cpus.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    faults = folder / "faults"
    if kind == "ray" and args.kill_worker:
        faults.mkdir()
        env.update(REFINERY_FAULT_KILL_WORKER=args.kill_worker, REFINERY_FAULT_DIR=str(faults))
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} run failed (exit {done.returncode}); its output is above")
    result: dict[str, Any] = json.loads((out / "result.json").read_text(encoding="utf-8"))
    if kind == "ray" and args.kill_worker:
        result["killed"] = {p.name: p.read_text().strip() for p in sorted(faults.iterdir())}
    return result


def compare(local: Path, ray: Path) -> dict[str, Any]:
    """Differences between the two runs' findings and clusters, per check (0 everywhere: identical)."""
    a, b = np.load(local), np.load(ray)
    out: dict[str, Any] = {}
    for key in sorted(set(a.files) | set(b.files)):
        kind, name = key.split("__")
        if key not in a.files or key not in b.files:
            out.setdefault(name, {})[kind] = "ran in one run only"
            continue
        x, y = a[key], b[key]
        if kind == "findings" and len(x) == len(y):
            differ = np.flatnonzero(x != y)
            diff, examples = len(differ), [f"rec_{i:08d}" for i in differ[:5].tolist()]
        else:
            diff, examples = len(np.setxor1d(x, y)) + abs(len(x) - len(y)), []
        out.setdefault(name, {})[kind] = diff
        if examples:
            out[name]["examples"] = examples
    return out


def stage_rows(result: dict[str, Any]) -> list[tuple[str, float, dict[str, Any] | None, int | None]]:
    """(stage, seconds, executor stats, flagged) of a run, in the order they ran; near_dup's stages indented."""
    rows: list[tuple[str, float, dict[str, Any] | None, int | None]] = []
    if result["startup_seconds"] >= 0.01:
        rows.append(("ray start-up", result["startup_seconds"], None, None))
    for name, check in result["checks"].items():
        own = check["stages"].get(name)
        rows.append((name, check["seconds"], own, check["flagged"]))
        summary = check["summary"]
        if name == "near_dup":
            rows.append(("  sketch", summary["sketch_seconds"], check["stages"].get("near_dup:sketch"), None))
            rows.append(("  match", summary["match_seconds"], None, None))
            for stage in ("candidates", "verify", "cluster"):
                rows.append((f"    {stage}", summary["stage_seconds"][stage], None, None))
    if result["shutdown_seconds"] >= 0.01:
        rows.append(("ray shut-down", result["shutdown_seconds"], None, None))
    rows.append(("total", result["total_seconds"], None, None))
    return rows


def run_table(result: dict[str, Any]) -> str:
    return table(
        [
            {
                "stage": stage,
                "seconds": round(seconds, 2),
                "tasks": stats["tasks"] if stats else "-",
                "workers": stats["workers"] if stats else "-",
                "worker peak RSS MB": round(stats["worker_peak_rss_mb"]) if stats else "-",
                "flagged": "-" if flagged is None else flagged,
            }
            for stage, seconds, stats, flagged in stage_rows(result)
        ]
    )


def ratios(local: dict[str, Any], ray: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """ray/local seconds of every stage both ran (the Ray overhead where above 1)."""
    mine = {stage.strip(): seconds for stage, seconds, _, _ in stage_rows(local)}
    out: dict[str, dict[str, Any]] = {}
    for stage, seconds, _, _ in stage_rows(ray):
        base = mine.get(stage.strip(), 0.0)
        ratio = round(seconds / base, 2) if base >= 0.01 else None
        out[stage] = {"local_seconds": base, "ray_seconds": seconds, "ray_over_local": ratio}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--executor", choices=(*EXECUTORS, "both"), default="both")
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray: CPUs of the private instance (default all)")
    parser.add_argument("--shard-records", type=int, default=20_000, help="records per task")
    parser.add_argument("--kill-worker", default=None, metavar="STAGE:SHARD", help="Ray: kill this shard's worker once")
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma list (default: %(default)s)")
    parser.add_argument("--sample-families", type=int, default=200, help="families drawn for recall")
    parser.add_argument("--tmp", default=None, help="folder for the temporary catalogs (default: the system's)")
    parser.add_argument("--worker", choices=EXECUTORS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.kill_worker is not None:
        stage, _, shard = args.kill_worker.rpartition(":")
        if not stage or not shard.isdigit():
            parser.error(f"--kill-worker takes STAGE:SHARD (e.g. near_dup:sketch:1 or pii:0), not {args.kill_worker!r}")
    kinds = list(EXECUTORS) if args.executor == "both" else [args.executor]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        for kind in kinds:
            results[kind] = run_worker(kind, args, folder)
        both = len(results) == 2
        comparison = compare(folder / "local" / "digests.npz", folder / "ray" / "digests.npz") if both else None
    print(
        f"\nscale: {args.n} records (B2f families + planted defects), checks {args.checks}, shards of "
        f"{args.shard_records}, load average {machine()['load_average']}"
    )
    final = []
    for kind, r in results.items():
        cpus = f"{r['cpus']} CPU" + ("s" if r["cpus"] > 1 else "")
        print(f"\n{kind} ({cpus}): driver peak RSS {r['peak_rss_mb']} MB ({r['rss_after_corpus_mb']} MB of "
              f"it the records, built in {r['corpus_seconds']:.1f} s)")  # fmt: skip
        print(run_table(r))
        flags = [f"{c} {r['checks'][c]['flagged']}/{p}" for c, p in r["planted"].items() if c in r["checks"]]
        print("flagged / planted: " + ", ".join(flags))
        if "recall" in r:
            print(
                f"near_dup recall ({r['recall']['families']} families): pair {r['recall']['pair_recall']:.5f}, "
                f"member {r['recall']['member_recall']:.5f}; big families: pair "
                f"{r['recall_by_record']['pair_recall']:.5f}, member {r['recall_by_record']['member_recall']:.5f}"
            )
        if "killed" in r:
            print(f"killed workers (marker: pid): {r['killed'] or 'none (no such stage or shard)'}")
        final.append(f"{kind} {r['total_seconds']:.1f} s")
    payload: dict[str, Any] = {"n": args.n, "options": {k: v for k, v in vars(args).items() if v is not None}}
    payload["runs"] = results
    if both:
        payload["ratios"] = ratios(results["local"], results["ray"])
        print("\nray / local")
        print(table([{"stage": s, "local s": v["local_seconds"], "ray s": v["ray_seconds"],
                      "ray/local": "-" if v["ray_over_local"] is None else v["ray_over_local"]}
                     for s, v in payload["ratios"].items()]))  # fmt: skip
        assert comparison is not None
        payload["comparison"] = comparison
        differences = sum(v for c in comparison.values() for v in c.values() if isinstance(v, int))
        partial = [name for name, c in comparison.items() if any(isinstance(v, str) for v in c.values())]
        if differences == 0 and not partial:
            verdict = "identical"
        else:
            verdict = f"{differences} differences" + (f" ({', '.join(partial)} in one run only)" if partial else "")
        payload["identical"] = verdict == "identical"
        print(f"findings and clusters, local vs ray: {verdict}")
        for name, c in comparison.items():
            if any(v for k, v in c.items() if k != "examples"):
                print(f"  {name}: {c}")
        ray, local = results["ray"], results["local"]
        final[-1] += (
            f" ({ray['total_seconds'] / local['total_seconds']:.2f}x local, start-up {ray['startup_seconds']:.1f} s)"
        )
        final.append(f"findings {verdict}")
    path = write_result(f"scale-{args.n}" + ("-kill" if args.kill_worker else ""), payload)
    print(f"wrote {path}")
    print(f"scale at {args.n}: " + "; ".join(final))


if __name__ == "__main__":
    main()
