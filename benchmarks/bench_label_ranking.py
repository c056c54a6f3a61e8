"""Benchmark B6 (ranking): full label-trie scoring vs the pruned search, and calibration, on banking77.

    .venv/bin/python benchmarks/bench_label_ranking.py [--n 308] [--full-n 128] [--block 64] [--stride 10]
        [--threads 1] [--search-rows 32] [--label-order sorted] [--models-dir DIR]

The queries are every ``--stride``-th row of ../shared/data/banking77/test.csv (the file is grouped by intent,
so this covers all 77), the first ``--n`` of them; the prompt is the eval's zero-shot prompt with the 77
labels sorted, as ``refinery eval`` infers the label set (``--label-order file`` keeps categories.json's
order); the model is SmolLM2-135M-Instruct (converted once into --models-dir). Prints one JSON object:

- ``accuracy``: on the ``--n`` queries, uncalibrated, contextual calibration as shipped (mean of the
  label-normalised content-free probabilities) and the alternative (mean content-free log-probability);
- ``speed``: on the first ``--full-n`` queries, taking turns on blocks of ``--block`` queries in this
  process: full scoring (every trie node per query, :func:`label_loglikelihoods`, the method before the
  search; calibration only subtracts a vector from its result) and the pruned search with and without
  calibration, as examples/s;
  the content-free prompts (scored once per eval, the same for both methods, ``content_free_seconds``) are
  left out of the rates and added once to the full-test-set estimates (3,080 queries);
- ``identical_argmax``: whether the search picked the full scoring's argmax on every one of those queries;
- ``search``: nodes fed per query as a share of the trie, and forward steps.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("REFINERY_PROGRESS", "0")

_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"


def _queries(n: int, stride: int, order: str) -> tuple[list[str], list[str], list[str]]:
    """(labels, query texts, reference labels)."""
    if not (_DATA / "test.csv").is_file():
        sys.exit(f"banking77 not found at {_DATA} (this benchmark needs ../shared/data)")
    labels = json.loads((_DATA / "categories.json").read_text())
    labels = sorted(labels) if order == "sorted" else labels
    with (_DATA / "test.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[::stride][:n]
    return labels, [r["text"] for r in rows], [r["category"] for r in rows]


def _accuracy(predicted: list[int], labels: list[str], references: list[str]) -> float:
    return round(sum(labels[p] == r for p, r in zip(predicted, references, strict=True)) / len(references), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=308, help="queries for the accuracy figures")
    parser.add_argument("--full-n", type=int, default=128, help="queries also scored in full (speed, argmax check)")
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--block", type=int, default=64, help="queries per turn of the side-by-side timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search-rows", type=int, default=32)
    parser.add_argument("--label-order", choices=["sorted", "file"], default="sorted")
    parser.add_argument("--models-dir", type=Path, default=Path("refinery-workspace/models"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from eval.baselines import zero_shot_messages
    from eval.examples import EvalExample, EvalTask
    from eval.generation import label_loglikelihoods, load_model
    from eval.label_ranking import (
        CONTENT_FREE_INPUTS,
        RankingStats,
        content_free_conversations,
        content_free_offsets,
        rank_labels,
    )
    from training.base_model import resolve_base_model  # benchmarks sit outside the packages

    torch.set_num_threads(args.threads)
    labels, texts, references = _queries(args.n, args.stride, args.label_order)
    model, tokenizer = load_model(resolve_base_model(None, args.models_dir).path)
    task = EvalTask(kind="classification", labels=labels)
    convs = [
        zero_shot_messages(
            EvalExample(example_index=i, messages=({"role": "user", "content": t},), reference="-"), task
        )
        for i, t in enumerate(texts)
    ]

    started = time.perf_counter()
    prompts, frame_of = content_free_conversations(convs)
    per_input = label_loglikelihoods(model, tokenizer, prompts, labels).reshape(
        -1, len(CONTENT_FREE_INPUTS), len(labels)
    )
    content_free_s = time.perf_counter() - started
    offsets: dict[str, Any] = {
        "none": np.zeros((len(convs), len(labels))),
        "contextual": content_free_offsets(per_input)[frame_of],
        "contextual_mean_logprob": content_free_offsets(per_input, "log_probability")[frame_of],
    }

    predicted: dict[str, list[int]] = {}
    stats: dict[str, RankingStats] = {}
    seconds: dict[str, float] = {}
    for name, off in offsets.items():
        stats[name] = RankingStats()
        started = time.perf_counter()
        predicted[name] = rank_labels(model, tokenizer, convs, labels, off, args.search_rows, stats[name])
        seconds[name] = time.perf_counter() - started

    # Full scoring and the search take turns on blocks of the same queries, so that a shared machine's
    # changing load falls on both alike; each call pays for its shared prefix, as an eval does once.
    m = min(args.full_n, len(convs))
    full_blocks = []
    full_s = 0.0
    searched_s = {"none": 0.0, "contextual": 0.0}
    for start in range(0, m, args.block):
        block = slice(start, min(m, start + args.block))
        started = time.perf_counter()
        full_blocks.append(label_loglikelihoods(model, tokenizer, convs[block], labels))
        full_s += time.perf_counter() - started
        for name in searched_s:
            started = time.perf_counter()
            again = rank_labels(model, tokenizer, convs[block], labels, offsets[name][block], args.search_rows)
            searched_s[name] += time.perf_counter() - started
            assert again == predicted[name][block], "the search is deterministic"
    full = np.concatenate(full_blocks)

    identical = {
        name: predicted[name][:m] == [int(row.argmax()) for row in full - off[:m]] for name, off in offsets.items()
    }
    # The content-free prompts are scored once per eval, the same for both methods: left out of the rates.
    before = m / full_s
    speed: dict[str, Any] = {"full_examples_per_s": round(before, 3)}
    for name in ("none", "contextual"):
        after = m / searched_s[name]
        once = content_free_s if name == "contextual" else 0.0
        speed[name] = {
            "search_examples_per_s": round(after, 3),
            "speedup": round(after / before, 2),
            "full_test_set_minutes_full": round((3080 / before + once) / 60, 1),
            "full_test_set_minutes_search": round((3080 / after + once) / 60, 1),
        }
    print(
        json.dumps(
            {
                "model": "SmolLM2-135M-Instruct",
                "label_order": args.label_order,
                "threads": torch.get_num_threads(),
                "n": len(convs),
                "full_n": m,
                "search_rows": args.search_rows,
                "content_free_seconds": round(content_free_s, 1),
                "accuracy": {name: _accuracy(p, labels, references) for name, p in predicted.items()},
                "distinct_answers": {name: len(set(p)) for name, p in predicted.items()},
                "speed": speed,
                "identical_argmax": identical,
                "search": {
                    name: {
                        "fed_share": round(s.fed_share, 3),
                        "nodes_fed_per_query": round(s.nodes_fed / max(1, s.queries), 1),
                        "slots_per_query": round(s.slots / max(1, s.queries), 1),
                        "trie_nodes": s.trie_nodes,
                        "steps": s.steps,
                        "examples_per_s": round(len(convs) / seconds[name], 3),
                    }
                    for name, s in stats.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
