"""B2: exact + near-duplicate detection over N short records: wall time and peak RSS, vs a datasketch pipeline.

    .venv/bin/python benchmarks/bench_b2_dedup.py [--n 100000] [--dup-fraction 0.1] [--threshold 0.7]
    .venv/bin/python benchmarks/bench_b2_dedup.py --n 1000000 --skip-baseline     # the B2 target size

A seeded generator writes realistic support-desk records (a question and an answer, 25-50 words) of which a
known fraction are near-duplicates (a copy of an earlier record with one or two small edits) and 2% exact
duplicates after normalisation. Each pipeline runs in its own process (so peak RSS is its own) on the same
records: Refinery = normalised-text exact clusters + near_dup as the scan runs it (sketch, the clusters join
of curation/similarity/near_dup_join.py, exact similarities to the kept members); datasketch = the same exact step +
``MinHash.bulk`` with Python word 5-grams, ``MinHashLSH`` insert and query per record, union-find over the
query results (no verification). Heavy families of near-duplicates: ``bench_b2_families.py``. "planted recall" is the
share of planted pairs whose exact Jaccard reaches the threshold that end up in one cluster. Writes
bench-results/b2_dedup.json; the last line is the final figure.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from typing import Any

from dedup_common import machine, peak_rss_mb, python_shingles, table, union_lsh_matches, write_result

GREETINGS = ["Hi,", "Hello,", "Hey there,", "Good morning,", "", "", "Quick question:", "Please help,"]
SUBJECTS = [
    *["my card", "my transfer", "the refund", "my account", "the app", "my payment", "the top up", "my loan"],
    *["the exchange rate", "my PIN", "the direct debit", "my salary deposit", "the cash withdrawal"],
]
PROBLEMS = [
    *["has not arrived yet", "was declined at the shop", "shows the wrong amount", "is still pending"],
    *["was charged twice", "stopped working after the update", "is blocked", "disappeared from the list"],
    *["took a fee I did not expect", "is missing from my statement", "failed without any message"],
]
CONTEXT = [
    *["since {d} days", "after I moved to {c}", "when I paid {a} euros", "on my phone", "in {c}"],
    *["and support did not answer", "even though I verified my identity", "for the {n} time this month"],
]
ASKS = [
    *["What should I do?", "Can you check it?", "How long will it take?", "Is there a fee for this?"],
    *["Who can I contact?", "Can I get my money back?", "Why does this happen?"],
]
ANSWERS = [
    "Please open the app, go to {s} and tap on help.",
    "This usually takes up to {d} working days.",
    "We are sorry about the trouble with {m}.",
    "A fee of {a} euros applies to payments in {c}.",
    "You can reset it in the security settings.",
    "Payments to {m} for {i} can take {d} days to show.",
    "We refund any duplicate charge from {m} automatically.",
    "If it is still {p} after that, write to us in the chat.",
    "Your {i} order with {m} is covered by our purchase protection.",
    "Order a new card for free if the problem continues.",
    "Check that {c} is allowed in your card settings.",
    "We opened case {r} for you; an agent will answer within {d} hours.",
]
CITIES = ["Berlin", "Madrid", "Lisbon", "Warsaw", "Dublin", "Vienna", "Rome", "Oslo", "Prague", "Athens"]
ORDINALS = ["second", "third", "fourth", "fifth"]
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "za", "be", "do", "fu", "gi", "ho", "ju", "pe"]


def _pseudo_words(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(count)]


MERCHANTS = [w.capitalize() for w in _pseudo_words(1, 5000)]
ITEMS = _pseudo_words(2, 3000)


def make_record(rng: random.Random) -> str:
    fill = {
        "d": rng.randint(2, 30),
        "c": rng.choice(CITIES),
        "a": rng.randint(5, 900),
        "n": rng.choice(ORDINALS),
        "s": rng.choice(SUBJECTS),
        "p": rng.choice(PROBLEMS),
        "m": MERCHANTS[
            min(int(rng.paretovariate(1.0)) - 1, len(MERCHANTS) - 1)
            if rng.random() < 0.3
            else rng.randrange(len(MERCHANTS))
        ],
        "i": rng.choice(ITEMS),
        "r": rng.randint(10000, 99999),
    }
    parts = [
        rng.choice(GREETINGS),
        rng.choice(SUBJECTS).capitalize(),
        rng.choice(PROBLEMS),
        rng.choice(CONTEXT).format(**fill) + ".",
        "I bought {i} from {m}.".format(**fill) if rng.random() < 0.7 else "",
        rng.choice(ASKS),
    ]
    answer = " ".join(a.format(**fill) for a in rng.sample(ANSWERS, rng.randint(2, 3)))
    return " ".join(p for p in parts if p) + "\n" + answer


def edit(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(words))
        kind = rng.randrange(4)
        if kind == 0:
            words.insert(i, rng.choice(["please", "really", "again", "today"]))
        elif kind == 1 and len(words) > 10:
            del words[i]
        elif kind == 2 and len(words[i]) > 3:
            words[i] = words[i][:-1] + "x"
        else:
            words[i] = words[i].upper()
    return " ".join(words)


def generate(n: int, dup_fraction: float, seed: int = 0) -> tuple[list[str], list[tuple[int, int]], int]:
    """Texts, the planted near-duplicate pairs (copy, source), and the number of planted exact duplicates."""
    rng = random.Random(seed)
    texts: list[str] = []
    near: list[tuple[int, int]] = []
    exact = 0
    for i in range(n):
        roll = rng.random()
        if texts and roll < dup_fraction:
            source = rng.randrange(len(texts))
            texts.append(edit(rng, texts[source]))
            near.append((i, source))
        elif texts and roll < dup_fraction + 0.02:
            texts.append(rng.choice(texts).lower().replace(".", " .").replace("?", "!"))
            exact += 1
        else:
            texts.append(make_record(rng))
    return texts, near, exact


def planted_recall(
    texts: list[str], planted: list[tuple[int, int]], label: list[int], threshold: float
) -> dict[str, float]:
    """Of the planted pairs whose exact Jaccard reaches the threshold, the share put in one cluster."""
    from curation.similarity.shingles import exact_jaccard, shingle_batch

    eligible = found = 0
    for lo in range(0, len(planted), 20000):
        chunk = planted[lo : lo + 20000]
        sets = shingle_batch([texts[i] for pair in chunk for i in pair]).sets()
        for k, (a, b) in enumerate(chunk):
            if exact_jaccard(sets[2 * k], sets[2 * k + 1]) >= threshold:
                eligible += 1
                found += label[a] == label[b] and label[a] >= 0
    return {"planted_pairs": len(planted), "above_threshold": eligible, "recall": found / max(eligible, 1)}


def _exact_step(texts: list[str]) -> tuple[list[str], dict[str, Any], int]:
    from curation.similarity.exact import KeepRank, cluster_exact, dedup_key

    ids = [f"rec_{i:08d}" for i in range(len(texts))]
    ranks = {rid: KeepRank(1, 0.0, ("2026-01-01", i, 0), rid) for i, rid in enumerate(ids)}
    exact = cluster_exact(((rid, dedup_key(t)) for rid, t in zip(ids, texts, strict=True)), ranks, "xd_")
    return ids, ranks, sum(len(c.removed) for c in exact)


def worker_refinery(texts: list[str], threshold: float) -> dict[str, Any]:
    from curation.similarity.near_dup import NearDupConfig, find_near_duplicates

    started = time.perf_counter()
    ids, ranks, exact_removed = _exact_step(texts)
    exact_seconds = time.perf_counter() - started
    result = find_near_duplicates(ids, texts, ranks, NearDupConfig(threshold=threshold), mode="clusters")
    seconds = time.perf_counter() - started
    label = [-1] * len(texts)
    for c, cluster in enumerate(result.clusters):
        for rid in cluster.members:
            label[int(rid[4:])] = c
    return {
        "seconds": seconds,
        "label": label,
        "exact_seconds": exact_seconds,
        "exact_removed": exact_removed,
        "near_clusters": len(result.clusters),
        "near_removed": sum(len(c.removed) for c in result.clusters),
        "stats": result.stats,
    }


def worker_datasketch(texts: list[str], threshold: float) -> dict[str, Any]:
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    _, _, exact_removed = _exact_step(texts)
    exact_seconds = time.perf_counter() - started
    sketches = MinHash.bulk(([s.encode() for s in python_shingles(t)] for t in texts), num_perm=128)
    sketch_seconds = time.perf_counter() - started - exact_seconds
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m, check_duplication=False)
    find, pairs = union_lsh_matches(sketches, lsh)
    sizes: dict[int, int] = {}
    for i in range(len(texts)):
        root = find(i)
        sizes[root] = sizes.get(root, 0) + 1
    clusters = [size for size in sizes.values() if size > 1]
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "label": [find(i) for i in range(len(texts))],
        "exact_seconds": exact_seconds,
        "sketch_seconds": sketch_seconds,
        "exact_removed": exact_removed,
        "near_clusters": len(clusters),
        "near_removed": sum(clusters) - len(clusters),
        "candidate_pairs_directed": pairs,
    }


def run_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name, "--n", str(args.n)]
    cmd += ["--dup-fraction", str(args.dup_fraction), "--threshold", str(args.threshold)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dup-fraction", type=float, default=0.1)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--skip-baseline", action="store_true", help="only Refinery (for --n 1000000)")
    parser.add_argument("--worker", choices=["refinery", "datasketch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        texts, planted, _ = generate(args.n, args.dup_fraction)
        fn = worker_refinery if args.worker == "refinery" else worker_datasketch
        result = fn(texts, args.threshold)
        result["peak_rss_mb"] = peak_rss_mb()
        result["planted"] = planted_recall(texts, planted, result.pop("label"), args.threshold)
        print(json.dumps(result))
        return
    texts, planted, exact = generate(args.n, args.dup_fraction)
    near = len(planted)
    words = sum(len(t.split()) for t in texts) / len(texts)
    del texts
    results = {"refinery": run_worker("refinery", args)}
    if not args.skip_baseline:
        results["datasketch"] = run_worker("datasketch", args)
    rows = [
        {
            "pipeline": k,
            "seconds": round(v["seconds"], 2),
            "peak RSS MB": round(v["peak_rss_mb"]),
            "exact removed": v["exact_removed"],
            "near clusters": v["near_clusters"],
            "near removed": v["near_removed"],
            "planted recall": round(v["planted"]["recall"], 4),
        }
        for k, v in results.items()
    ]
    ours = results["refinery"]
    per_million = ours["seconds"] * 1_000_000 / args.n
    print(
        f"B2 dedup: {args.n} records ({words:.0f} words each; planted {near} near and {exact} exact duplicates), "
        f"threshold {args.threshold}, load average {machine()['load_average']}"
    )
    print(table(rows))
    stats = ours["stats"]
    print(
        f"refinery stages (s): exact {ours['exact_seconds']:.2f}, {stats['stage_seconds']}; candidate pairs "
        f"{stats['candidate_pairs']}, exact Jaccard computed {stats.get('jaccard_computed')}, verified "
        f"{stats['verified_pairs']}, bands x rows {stats['bands']}x{stats['rows']}"
    )
    payload: dict[str, Any] = {
        "n": args.n,
        "planted_near": near,
        "planted_exact": exact,
        "results": results,
        "projected_seconds_per_million": per_million,
    }
    speedup = ""
    if "datasketch" in results:
        ratio = results["datasketch"]["seconds"] / ours["seconds"]
        payload["speedup_vs_datasketch"] = ratio
        speedup = f", {ratio:.1f}x faster than datasketch"
    path = write_result(f"b2_dedup_n{args.n}", payload)
    print(f"wrote {path}")
    print(
        f"B2: refinery {args.n} records in {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB{speedup}; "
        f"linear projection to 1M: {per_million:.0f} s"
    )


if __name__ == "__main__":
    main()
