"""B1: raw text to MinHash signatures (128 permutations, word 5-grams), docs/s on one core.

    .venv/bin/python benchmarks/bench_b1_sketch.py [--n 20000] [--repeats 3]

Texts: the GPTeacher Toolformer set from ../shared/data (about 60 shingles per record), tiled to --n. Side by
side in one process, pinned to one core: Refinery's sketcher (normalisation + shingling + signatures, all
included), datasketch 2.0 ``MinHash.bulk`` fed by Python word 5-gram shingling, and rensa 0.5 ``RMinHash`` fed
by the same Python shingling (skipped, and said so, when rensa is not installed). Each engine's estimates are
checked against the exact Jaccard of its own shingle sets on near-duplicate pairs. Writes
bench-results/b1_sketch.json; the last line is the final figure.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dedup_common import alpaca_text, machine, python_shingles, table, toolformer, write_result


def mutate(rng: random.Random, text: str) -> str:
    words = text.split()
    for _ in range(rng.randint(0, max(1, len(words) // 6))):
        words[rng.randrange(len(words))] = f"edit{rng.randrange(1000)}"
    return " ".join(words)


def run_ours(texts: list[str]) -> object:
    from curation.similarity.minhash import MinHasher

    return MinHasher().sketch(texts)


def run_datasketch(texts: list[str]) -> object:
    from datasketch import MinHash

    return MinHash.bulk(([s.encode("utf-8") for s in python_shingles(t)] for t in texts), num_perm=128)


def run_rensa(texts: list[str]) -> object:
    from rensa import RMinHash

    out = []
    for text in texts:
        m = RMinHash(num_perm=128, seed=42)
        m.update(python_shingles(text))
        out.append(m.digest())
    return out


def accuracy(pairs: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    from datasketch import MinHash

    from curation.similarity.minhash import MinHasher, estimate_jaccard
    from curation.similarity.shingles import exact_jaccard, shingle_batch

    errors: dict[str, list[float]] = {"refinery": [], "datasketch": [], "rensa": []}
    hasher = MinHasher()
    for a, b in pairs:
        batch = shingle_batch([a, b])
        sa, sb = batch.sets()
        sigs = hasher.signatures(batch)
        errors["refinery"].append(estimate_jaccard(sigs[0], sigs[1]) - exact_jaccard(sa, sb))
        pa_, pb_ = set(python_shingles(a)), set(python_shingles(b))
        exact = len(pa_ & pb_) / len(pa_ | pb_)
        ma, mb = MinHash.bulk([[s.encode() for s in pa_], [s.encode() for s in pb_]], num_perm=128)
        errors["datasketch"].append(ma.jaccard(mb) - exact)
        try:
            from rensa import RMinHash
        except ImportError:
            continue
        ra, rb = RMinHash(num_perm=128, seed=42), RMinHash(num_perm=128, seed=42)
        ra.update(list(pa_))
        rb.update(list(pb_))
        errors["rensa"].append(ra.jaccard(rb) - exact)
    return {
        k: {"mean_error": statistics.fmean(v), "mean_abs_error": statistics.fmean(abs(e) for e in v), "pairs": len(v)}
        for k, v in errors.items()
        if v
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="documents per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rows = [alpaca_text(r) for r in toolformer()]
    texts = [rows[i % len(rows)] for i in range(args.n)]
    shingles_per_doc = statistics.fmean(len(python_shingles(t)) for t in texts[:2000])
    engines = {"refinery": run_ours, "datasketch bulk": run_datasketch, "rensa RMinHash": run_rensa}
    try:
        import rensa  # noqa: F401
    except ImportError:
        print("rensa is not installed (pip install 'rensa==0.5.*'): its row is skipped")
        del engines["rensa RMinHash"]
    run_ours([*texts[:500], "café 我爱北京"])  # warm-up: Unicode tables, power tables
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, fn in engines.items():
            started = time.perf_counter()
            fn(texts)
            times[name].append(time.perf_counter() - started)
    rates = {name: args.n / min(t) for name, t in times.items()}
    rng = random.Random(0)
    pairs = [(t, mutate(rng, t)) for t in rng.sample(rows, 300)]
    quality = accuracy(pairs)
    result_rows = [
        {
            "engine": name,
            "docs/s (best)": round(rates[name]),
            "docs/s (median)": round(args.n / statistics.median(times[name])),
            "refinery x": round(rates["refinery"] / rates[name], 2),
            "mean err": round(quality.get(name.split()[0], {}).get("mean_error", float("nan")), 4),
            "mean |err|": round(quality.get(name.split()[0], {}).get("mean_abs_error", float("nan")), 4),
        }
        for name in engines
    ]
    print(
        f"B1 sketch: {args.n} docs ({shingles_per_doc:.0f} shingles/doc), 128 permutations, one core, "
        f"load average {machine()['load_average']}"
    )
    print(table(result_rows))
    path = write_result(
        "b1_sketch",
        {
            "n": args.n,
            "shingles_per_doc": shingles_per_doc,
            "seconds": times,
            "docs_per_s": rates,
            "accuracy": quality,
            "rows": result_rows,
        },
    )
    print(f"wrote {path}")
    vs_rensa = f", {rates['refinery'] / rates['rensa RMinHash']:.2f}x rensa" if "rensa RMinHash" in rates else ""
    print(
        f"B1: refinery {rates['refinery']:.0f} docs/s = {rates['refinery'] / rates['datasketch bulk']:.1f}x "
        f"datasketch bulk{vs_rensa}"
    )


if __name__ == "__main__":
    main()
