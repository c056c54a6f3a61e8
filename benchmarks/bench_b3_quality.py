"""B3: near-duplicate quality: pair precision/recall against exact Jaccard, and the GPTeacher Toolformer ladder.

    .venv/bin/python benchmarks/bench_b3_quality.py [--max-records 20000] [--thresholds 0.9,0.8,0.7,0.6]

Part 1: up to 20k records from ../shared/data (banking77 train: query + intent; GPTeacher Toolformer:
instruction + input + output), compared as whole pairs. The truth is every pair whose exact Jaccard on the
word 5-gram shingle sets reaches the threshold, computed exactly with a sparse matrix product (scipy). Refinery's
pairs are the verified pairs of its all-pairs join (``mode="pairs"``); datasketch's are the pairs ``MinHashLSH``
(same threshold, 128 permutations, fed the same shingles) returns, as a plain LSH pipeline reports them. The
clusters join the scan uses (``mode="clusters"``) verifies only pairs not yet in one cluster, so its pairs are
fewer by design: it is checked for the same clusters and kept members as the all-pairs join, and for the share
of truth pairs whose records it puts in one cluster.

Part 2: the Toolformer set that its authors deduplicated at similarity 0.9/0.8/0.7/0.6 (their method is not
published with the files): how many records Refinery removes at each threshold, in the pair and the prompt
scope (clusters join, and the all-pairs join beside it), against the authors' counts, and how far the kept
sets agree. Writes bench-results/b3_quality.json; the
last line is the final figure.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from dedup_common import alpaca_text, banking77, machine, table, toolformer, write_result

LADDER = {0.9: 5959, 0.8: 4709, 0.7: 3487, 0.6: 2396}  # records left by the authors; dedupe-only has 7673


def load_texts(max_records: int) -> list[str]:
    texts = [f"{text}\n{label}" for text, label in banking77()]
    texts += [alpaca_text(r) for r in toolformer()]
    return texts[:max_records]


def exact_pairs(texts: list[str], thresholds: list[float], ngram: int = 5) -> dict[float, set[tuple[int, int]]]:
    """All pairs at or above each threshold, by sparse X @ X.T over binary shingle incidence (row blocks)."""
    import scipy.sparse as sp

    from curation.similarity.shingles import shingle_batch

    batch = shingle_batch(texts, ngram)
    doc = np.repeat(np.arange(len(texts)), batch.counts)
    columns = np.unique(batch.hashes, return_inverse=True)[1].reshape(-1)
    matrix = sp.csr_matrix((np.ones(len(doc), dtype=np.int32), (doc, columns)))
    matrix.data[:] = 1  # duplicates within a text were summed: a set has each shingle once
    matrix.sum_duplicates()
    matrix.data[:] = 1
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    transposed = matrix.T.tocsr()
    truth: dict[float, set[tuple[int, int]]] = {t: set() for t in thresholds}
    for lo in range(0, len(texts), 2000):
        block = (matrix[lo : lo + 2000] @ transposed).tocoo()
        i, j, inter = block.row + lo, block.col, block.data.astype(np.float64)
        upper = i < j
        i, j, inter = i[upper], j[upper], inter[upper]
        jaccard = inter / (sizes[i] + sizes[j] - inter)
        for t in thresholds:
            keep = jaccard >= t
            truth[t].update(zip(i[keep].tolist(), j[keep].tolist(), strict=True))
    return truth


def refinery_runs(texts: list[str], threshold: float) -> dict[str, Any]:
    """Both joins: the all-pairs one (its pairs are scored) and the clusters one the scan uses."""
    from curation.similarity.exact import KeepRank
    from curation.similarity.near_dup import NearDupConfig, find_near_duplicates

    ids = [f"rec_{i:06d}" for i in range(len(texts))]
    ranks = {rid: KeepRank(1, 0.0, ("t", i, 0), rid) for i, rid in enumerate(ids)}
    out: dict[str, Any] = {}
    for mode in ("pairs", "clusters"):
        started = time.perf_counter()
        result = find_near_duplicates(ids, texts, ranks, NearDupConfig(threshold=threshold), mode=mode)
        label = np.full(len(texts), -1, dtype=np.int64)
        for c, cluster in enumerate(result.clusters):
            label[[int(m[4:]) for m in cluster.members]] = c
        out[mode] = {
            "pairs": {(int(a[4:]), int(b[4:])) for a, b, _ in result.pairs},
            "clusters": [(c.kept, c.members) for c in result.clusters],
            "label": label,
            "stats": result.stats,
            "seconds": time.perf_counter() - started,
        }
    return out


def co_clustered(label: np.ndarray, truth: set[tuple[int, int]]) -> float:
    """Share of the truth pairs whose records are in one cluster."""
    if not truth:
        return 1.0
    a, b = np.array(sorted(truth)).T
    return float(((label[a] == label[b]) & (label[a] >= 0)).mean())


def datasketch_pairs(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    from curation.similarity.shingles import shingle_batch

    batch = shingle_batch(texts)
    sketches = MinHash.bulk(
        ([h.to_bytes(8, "little") for h in set(batch.of(i).tolist())] for i in range(len(texts))), num_perm=128
    )
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            if batch.counts[i]:
                session.insert(i, m, check_duplication=False)
    pairs: set[tuple[int, int]] = set()
    for i, m in enumerate(sketches):
        if batch.counts[i]:
            pairs.update((min(i, j), max(i, j)) for j in lsh.query(m) if j != i)
    return pairs


def prf(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    hits = len(found & truth)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pairs": len(found), "precision": precision, "recall": recall, "f1": f1}


def ladder() -> list[dict[str, Any]]:
    from curation.similarity.exact import KeepRank
    from curation.similarity.near_dup import NearDupConfig, find_near_duplicates

    rows = toolformer()
    ids = [f"rec_{i:06d}" for i in range(len(rows))]
    ranks = {rid: KeepRank(1, 0.0, ("t", i, 0), rid) for i, rid in enumerate(ids)}  # file order = ingest order
    key = [(r["instruction"], r["input"], r["output"]) for r in rows]
    scopes = {
        "pair": [alpaca_text(r) for r in rows],
        "prompt": [r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in rows],
    }
    out = []
    for threshold, left in LADDER.items():
        authors_kept = {
            (r["instruction"], r["input"], r["output"]) for r in toolformer(f"toolformer-similarity-{threshold}.json")
        }
        row: dict[str, Any] = {"threshold": threshold, "authors removed": len(rows) - left}
        for scope, texts in scopes.items():
            config = NearDupConfig(threshold=threshold, scope=scope)
            result = find_near_duplicates(ids, texts, ranks, config, mode="clusters")
            before = find_near_duplicates(ids, texts, ranks, config, mode="pairs")
            removed = {int(m[4:]) for c in result.clusters for m in c.removed}
            both = sum(1 for i in removed if key[i] not in authors_kept)
            row[f"{scope} removed"] = len(removed)
            row[f"{scope} all-pairs join"] = sum(len(c.removed) for c in before.clusters)
            row[f"{scope} agree"] = round(both / max(len(removed), 1), 3)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-records", type=int, default=20000)
    parser.add_argument("--thresholds", default="0.9,0.8,0.7,0.6")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    texts = load_texts(min(args.max_records, 20000))
    started = time.perf_counter()
    truth = exact_pairs(texts, thresholds)
    truth_seconds = time.perf_counter() - started
    rows, details = [], {}
    identity = []
    for t in thresholds:
        runs = refinery_runs(texts, t)
        ours, stats = runs["pairs"]["pairs"], runs["pairs"]["stats"]
        theirs = datasketch_pairs(texts, t)
        q_ours, q_theirs = prf(ours, truth[t]), prf(theirs, truth[t])
        same = runs["clusters"]["clusters"] == runs["pairs"]["clusters"]
        recall_clusters = co_clustered(runs["clusters"]["label"], truth[t])
        details[str(t)] = {
            "truth_pairs": len(truth[t]),
            "refinery": q_ours,
            "datasketch": q_theirs,
            "stats": stats,
            "clusters_join": {
                "identical_clusters_and_kept": same,
                "truth_pairs_co_clustered": recall_clusters,
                "verified_pairs_precision": prf(runs["clusters"]["pairs"], truth[t])["precision"],
                "seconds": runs["clusters"]["seconds"],
                "pairs_join_seconds": runs["pairs"]["seconds"],
                "stats": runs["clusters"]["stats"],
            },
        }
        identity.append(
            {
                "threshold": t,
                "clusters": len(runs["clusters"]["clusters"]),
                "identical to all-pairs join": same,
                "truth pairs co-clustered": round(recall_clusters, 4),
                "clusters join s": round(runs["clusters"]["seconds"], 2),
                "all-pairs join s": round(runs["pairs"]["seconds"], 2),
            }
        )
        for name, q in (("refinery", q_ours), ("datasketch", q_theirs)):
            rows.append(
                {
                    "threshold": t,
                    "engine": name,
                    "truth pairs": len(truth[t]),
                    "pairs": q["pairs"],
                    "precision": round(q["precision"], 4),
                    "recall": round(q["recall"], 4),
                    "F1": round(q["f1"], 4),
                }
            )
    print(
        f"B3 quality: {len(texts)} records (banking77 + Toolformer), exact truth in {truth_seconds:.1f} s, "
        f"load average {machine()['load_average']}"
    )
    print(table(rows))
    print("clusters join (the scan's) against the all-pairs join above: clusters and kept members")
    print(table(identity))
    ladder_rows = ladder()
    print("GPTeacher Toolformer ladder (7673 records; 'agree' = share of our removals the authors removed too):")
    print(table(ladder_rows))
    path = write_result(
        "b3_quality", {"records": len(texts), "pairs": details, "ladder": ladder_rows, "clusters_join": identity}
    )
    print(f"wrote {path}")
    at = details.get("0.7", details[str(thresholds[0])])
    t_label = "0.7" if "0.7" in details else str(thresholds[0])
    same = all(row["identical to all-pairs join"] for row in identity)
    print(
        f"B3 at {t_label}: refinery P {at['refinery']['precision']:.4f} R {at['refinery']['recall']:.4f} "
        f"F1 {at['refinery']['f1']:.4f}; datasketch P {at['datasketch']['precision']:.4f} "
        f"R {at['datasketch']['recall']:.4f} F1 {at['datasketch']['f1']:.4f}; clusters join identical to the "
        f"all-pairs join at every threshold: {same}"
    )


if __name__ == "__main__":
    main()
