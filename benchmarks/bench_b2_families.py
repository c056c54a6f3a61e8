"""B2f: near-duplicates among heavy families: wall time, peak RSS and recall, vs datasketch bulk + LSH.

    .venv/bin/python benchmarks/bench_b2_families.py [--n 50000] [--threshold 0.7] [--pairs-join]
    .venv/bin/python benchmarks/bench_b2_families.py --n 1000000 --cli     # the target: through the CLI

The planted-pair corpus of B2 has families of two. This one (``family_corpus.py``) has Toolformer records
copied into families of 2 to 1,000 members (Zipf-like, about 10% of the output words replaced and a unique
suffix per member), so LSH buckets hold hundreds to thousands of texts. Each engine runs in its own process
(peak RSS is its own), on the same records:

* ``refinery``: ``find_near_duplicates(mode="clusters")`` (sketch, band runs, the linear join, exact
  similarities to the kept members), in process;
* ``refinery-pairs`` (``--pairs-join``): the all-pairs join it replaces, for small ``--n`` (quadratic);
* ``datasketch``: ``MinHash.bulk`` on Python word 5-grams, ``MinHashLSH`` insert and query, union-find over
  the query results (no verification, so its clusters are not comparable pair for pair);
* ``cli`` (``--cli``): the records written as JSONL, ``refinery ingest`` and ``refinery scan --checks near_dup``
  into a fresh catalog, each timed as its own process.

Recall: ``--sample-families`` families are drawn at random (seeded), and a quarter as many as the families of
random records ("big families": drawn in proportion to their size); for each, the exact Jaccard of every pair
of its members is computed; pair recall is the share of pairs at or above the threshold whose records the
engine put in one cluster, member recall the share of members with such a partner that share a cluster with
at least one of them. Writes bench-results/b2_families_n{N}.json (``--cli-only``: b2_families_cli_n{N}.json);
the last line is the final figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from dedup_common import (
    alpaca_text,
    machine,
    peak_rss_mb,
    python_shingles,
    table,
    timed,
    union_lsh_matches,
    write_result,
)
from family_corpus import FamilyCorpus, generate_families

ENGINES = ("refinery", "refinery-pairs", "datasketch")


def sampled_recall(
    corpus: FamilyCorpus, label: np.ndarray, threshold: float, samples: int, by_record: bool = False
) -> dict[str, Any]:
    """Pair and member recall of the clustering ``label`` (-1: no cluster) on randomly drawn families.

    ``by_record`` draws the families of random records (so a family of 1,000 is drawn 500 times as often as one
    of two): what a record's family looks like, where the uniform draw is mostly small families.
    """
    from curation.similarity.jaccard import ShingleSets

    members: dict[int, list[int]] = {}
    for i, f in enumerate(corpus.family):
        members.setdefault(f, []).append(i)
    rng = random.Random(1)
    if by_record:
        chosen = list(dict.fromkeys(corpus.family[i] for i in rng.sample(range(len(corpus.family)), samples)))
    else:
        chosen = rng.sample(sorted(members), min(samples, len(members)))
    texts = [alpaca_text(r) for r in corpus.rows]
    pairs = found = with_partner = joined = 0
    for f in chosen:
        rows = np.array(members[f], dtype=np.int64)
        sets = ShingleSets(texts, rows, 5)
        left, right = np.triu_indices(len(rows), k=1)
        similar = sets.jaccard(rows[left], rows[right]) >= threshold
        a, b = rows[left[similar]], rows[right[similar]]
        together = (label[a] == label[b]) & (label[a] >= 0)
        pairs += len(a)
        found += int(together.sum())
        partnered = np.unique(np.concatenate([a, b]))
        ok = np.unique(np.concatenate([a[together], b[together]]))
        with_partner += len(partnered)
        joined += len(ok)
    return {
        "families": len(chosen),
        "records": int(sum(len(members[f]) for f in chosen)),
        "pairs_above_threshold": pairs,
        "pair_recall": found / max(pairs, 1),
        "member_recall": joined / max(with_partner, 1),
    }


def worker_refinery(texts: list[str], threshold: float, mode: str) -> tuple[dict[str, Any], np.ndarray]:
    from curation.similarity.exact import KeepRank
    from curation.similarity.near_dup import NearDupConfig, find_near_duplicates

    ids = [f"rec_{i:08d}" for i in range(len(texts))]
    ranks = {rid: KeepRank(1, 0.0, ("2026-01-01", i, 0), rid) for i, rid in enumerate(ids)}
    started = time.perf_counter()
    result = find_near_duplicates(ids, texts, ranks, NearDupConfig(threshold=threshold), mode=mode)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    label = np.full(len(texts), -1, dtype=np.int64)
    for c, cluster in enumerate(result.clusters):
        label[[int(m[4:]) for m in cluster.members]] = c
    stats = result.stats
    return {
        "seconds": seconds,
        "clusters": len(result.clusters),
        "removed": sum(len(c.removed) for c in result.clusters),
        "candidate_pairs": stats["candidate_pairs"],
        "jaccard_computed": stats.get("jaccard_computed", stats["candidate_pairs"] - stats["prefiltered_pairs"]),
        "verified_pairs": stats["verified_pairs"],
        "stats": stats,
    }, label


def worker_datasketch(texts: list[str], threshold: float) -> tuple[dict[str, Any], np.ndarray]:
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    sketches = MinHash.bulk(([s.encode() for s in python_shingles(t)] for t in texts), num_perm=128)
    sketch_seconds = time.perf_counter() - started
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m, check_duplication=False)
    find, pairs = union_lsh_matches(sketches, lsh)
    seconds = time.perf_counter() - started
    roots = np.array([find(i) for i in range(len(texts))], dtype=np.int64)
    size = np.bincount(roots, minlength=len(texts))
    label = np.where(size[roots] >= 2, roots, -1)
    return {
        "seconds": seconds,
        "sketch_seconds": sketch_seconds,
        "clusters": int((size >= 2).sum()),
        "removed": int((size[size >= 2] - 1).sum()),
        "candidate_pairs": pairs // 2,
    }, label


def run_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--n", str(args.n), "--threshold", str(args.threshold)]
    cmd += ["--sample-families", str(args.sample_families)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Ingest, then scan (near_dup, or --cli-checks), through the CLI into a fresh catalog; each step its own
    process."""
    corpus = generate_families(args.n)
    refinery = str(Path(sys.executable).with_name("refinery"))
    env = {**os.environ, "REFINERY_PROGRESS": "0"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="b2f-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        data = folder / "families.jsonl"
        with data.open("w", encoding="utf-8") as handle:
            for row in corpus.rows:
                handle.write(json.dumps(row) + "\n")
        del corpus
        workspace = folder / "ws"
        base = [refinery, "-q", "-w", str(workspace)]
        out["ingest"] = timed([*base, "ingest", str(data), "--format", "alpaca"], env, folder)
        checks = [] if args.cli_checks == "default" else ["--checks", args.cli_checks]
        scan = [*base, "scan", *checks, "--json"]
        if args.cli_executor != "local":
            scan += ["--executor", args.cli_executor]
        if args.threshold != 0.7:
            scan += ["--threshold", str(args.threshold)]
        out["scan"] = timed(scan, env, folder)
        summary = json.loads(out["scan"].pop("stdout"))
        out["scan"]["summary"] = summary
        out["ingest"].pop("stdout")
        query = "SELECT count(*) AS n FROM duplicate_members WHERE check_name = 'near_dup' AND NOT is_kept"
        rows = subprocess.run([*base, "sql", query, "--json"], capture_output=True, text=True, env=env, check=True)
        out["catalog_removed"] = rows.stdout.strip()
    return out


def worker(args: argparse.Namespace) -> None:
    corpus = generate_families(args.n)
    texts = [alpaca_text(r) for r in corpus.rows]
    if args.worker == "datasketch":
        result, label = worker_datasketch(texts, args.threshold)
    else:
        mode = "pairs" if args.worker == "refinery-pairs" else "clusters"
        result, label = worker_refinery(texts, args.threshold, mode)
    result["peak_rss_mb"] = peak_rss_mb()
    del texts
    result["recall"] = sampled_recall(corpus, label, args.threshold, args.sample_families)
    result["recall_by_record"] = sampled_recall(corpus, label, args.threshold, args.sample_families // 4, True)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--sample-families", type=int, default=200, help="families drawn for recall")
    parser.add_argument("--pairs-join", action="store_true", help="also the all-pairs join (quadratic)")
    parser.add_argument("--skip-baseline", action="store_true", help="no datasketch run")
    parser.add_argument("--cli", action="store_true", help="also ingest + scan through the CLI")
    parser.add_argument("--cli-only", action="store_true", help="only the CLI run")
    parser.add_argument("--tmp", default=None, help="folder for the CLI run's files (default: the system's)")
    parser.add_argument(
        "--cli-checks", default="near_dup", help="the CLI run's `scan --checks` (comma-separated), or 'default'"
    )
    parser.add_argument("--cli-executor", default="local", choices=("local", "ray"), help="the CLI scan's executor")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results: dict[str, Any] = {}
    if not args.cli_only:
        results["refinery"] = run_worker("refinery", args)
        if args.pairs_join:
            results["refinery-pairs"] = run_worker("refinery-pairs", args)
        if not args.skip_baseline:
            results["datasketch"] = run_worker("datasketch", args)
    cli = run_cli(args) if args.cli or args.cli_only else None
    print(
        f"B2f heavy families: {args.n} records (families of 2-1000, Zipf-like), threshold {args.threshold}, "
        f"load average {machine()['load_average']}"
    )
    rows = [
        {
            "engine": name,
            "seconds": round(r["seconds"], 2),
            "peak RSS MB": round(r["peak_rss_mb"]),
            "candidate pairs": r["candidate_pairs"],
            "jaccard computed": r.get("jaccard_computed", "-"),
            "verified pairs": r.get("verified_pairs", "-"),
            "clusters": r["clusters"],
            "removed": r["removed"],
            "pair recall": round(r["recall"]["pair_recall"], 5),
            "member recall": round(r["recall"]["member_recall"], 5),
            "pair recall, big families": round(r["recall_by_record"]["pair_recall"], 5),
            "member recall, big families": round(r["recall_by_record"]["member_recall"], 5),
        }
        for name, r in results.items()
    ]
    if rows:
        print(table(rows))
    if "refinery" in results:
        print(f"refinery stages (s): {results['refinery']['stats']['stage_seconds']}")
    payload: dict[str, Any] = {"n": args.n, "threshold": args.threshold, "results": results, "cli": cli}
    final = []
    if "refinery" in results:
        ours = results["refinery"]
        final.append(f"refinery {ours['seconds']:.1f} s, {ours['peak_rss_mb']:.0f} MB")
        if "datasketch" in results:
            ratio = results["datasketch"]["seconds"] / ours["seconds"]
            payload["speedup_vs_datasketch"] = ratio
            final.append(f"datasketch {results['datasketch']['seconds']:.1f} s ({ratio:.2f}x)")
        if "refinery-pairs" in results:
            ratio = results["refinery-pairs"]["seconds"] / ours["seconds"]
            payload["speedup_vs_pairs_join"] = ratio
            final.append(f"all-pairs join {results['refinery-pairs']['seconds']:.1f} s ({ratio:.2f}x)")
    if cli is not None:
        scan, ingest = cli["scan"], cli["ingest"]
        print(
            f"CLI: ingest {ingest['seconds']:.1f} s ({ingest['peak_rss_mb']:.0f} MB peak), scan --checks "
            f"{args.cli_checks} ({args.cli_executor}) {scan['seconds']:.1f} s ({scan['peak_rss_mb']:.0f} MB peak); "
            f"catalog: {cli['catalog_removed']}"
        )
        per_check = {
            name: summary["wall_seconds"]
            for name, summary in scan["summary"].items()
            if isinstance(summary, dict) and "wall_seconds" in summary
        }
        print(f"CLI scan, seconds per check (run and store): {per_check}")
        peaks = {
            name: summary["peak_private_mb"]
            for name, summary in scan["summary"].items()
            if isinstance(summary, dict) and "peak_private_mb" in summary
        }
        print(f"CLI scan, the scan's own memory (MB, RssAnon) at its highest during each check: {peaks}")
        final.append(f"CLI scan {scan['seconds']:.1f} s, {scan['peak_rss_mb']:.0f} MB")
    tag = "" if args.cli_checks == "near_dup" and args.cli_executor == "local" else f"{args.cli_executor}_"
    path = write_result(f"b2_families_{'cli_' + tag if args.cli_only else ''}n{args.n}", payload)
    print(f"wrote {path}")
    print(f"B2f at {args.n}: " + "; ".join(final))


if __name__ == "__main__":
    main()
