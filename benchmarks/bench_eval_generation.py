"""Benchmark B6: batched vs one-by-one greedy generation (eval/generation.py), and shared-prefix KV reuse.

    .venv/bin/python benchmarks/bench_eval_generation.py [--n 48] [--batch-size 16] [--model FOLDER | --smollm2]

Prints one JSON object: examples/s for one-by-one, batched without and with the shared few-shot prefix
reused, the speed-up ratios (B6 target: batched >= 4x one-by-one) and whether the answers are identical.
Without --model or --smollm2 it builds the tiny in-process model (with larger random weights so answers vary
in length, as in tests/eval/conftest.py). --smollm2 uses the default base model (SmolLM2-135M-Instruct,
converted once into --models-dir by training/base_model.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("REFINERY_PROGRESS", "0")


def _tiny_model(folder: Path) -> Path:
    from tests.support.tiny_model import build_tiny_model, randomize_weights

    return randomize_weights(build_tiny_model(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="conversations per prompt style")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: tiny model)")
    parser.add_argument("--smollm2", action="store_true", help="use the default base model (SmolLM2-135M)")
    parser.add_argument("--models-dir", type=Path, default=Path("refinery-workspace/models"))
    args = parser.parse_args()
    if args.smollm2:
        from training.base_model import resolve_base_model  # benchmarks sit outside the packages

        args.model = resolve_base_model(None, args.models_dir).path

    import torch

    from eval.baselines import few_shot_messages, zero_shot_messages
    from eval.examples import EvalExample, EvalTask
    from eval.generation import generate_greedy, generate_one_by_one, load_model

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or _tiny_model(Path(tmp) / "tiny")
        model, tokenizer = load_model(folder)
        labels = ["card_lost", "password_reset", "refund_request", "delivery_status", "cancel_subscription"]
        task = EvalTask(kind="classification", labels=labels)
        examples = [
            EvalExample(
                example_index=i,
                messages=({"role": "user", "content": "Where is my card? " * (i % 7 + 1) + f"case {i}"},),
                reference=labels[i % len(labels)],
            )
            for i in range(args.n + len(labels))
        ]
        shots, examples = examples[: len(labels)], examples[len(labels) :]
        styles = {
            "zero_shot": [zero_shot_messages(e, task) for e in examples],
            "few_shot": [few_shot_messages(e, shots, task) for e in examples],
        }
        results: dict[str, dict[str, float | bool]] = {}
        for style, convs in styles.items():
            runs = {
                "one_by_one": lambda c=convs: generate_one_by_one(model, tokenizer, c, args.max_new_tokens),
                "batched_no_prefix": lambda c=convs: generate_greedy(
                    model, tokenizer, c, args.max_new_tokens, args.batch_size, min_shared_prefix=0
                ),
                "batched": lambda c=convs: generate_greedy(model, tokenizer, c, args.max_new_tokens, args.batch_size),
            }
            generate_greedy(model, tokenizer, convs[:4], args.max_new_tokens, 4)  # warm-up
            answers = {}
            row: dict[str, float | bool] = {}
            for name, run in runs.items():
                started = time.perf_counter()
                answers[name] = run()
                row[f"{name}_examples_per_s"] = round(len(convs) / (time.perf_counter() - started), 1)
            row["identical"] = answers["one_by_one"] == answers["batched"] == answers["batched_no_prefix"]
            base = float(row["one_by_one_examples_per_s"])
            row["batched_vs_one_by_one"] = round(float(row["batched_examples_per_s"]) / base, 2)
            row["batched_no_prefix_vs_one_by_one"] = round(float(row["batched_no_prefix_examples_per_s"]) / base, 2)
            row["prefix_reuse_gain"] = round(
                float(row["batched_examples_per_s"]) / float(row["batched_no_prefix_examples_per_s"]), 2
            )
            row["b6_pass"] = bool(row["identical"]) and row["batched_vs_one_by_one"] >= 4.0
            prompt_tokens = [
                len(tokenizer(text, add_special_tokens=False)["input_ids"])
                for text in (tokenizer.apply_chat_template(c, tokenize=False) for c in convs)
            ]
            row["prompt_tokens_mean"] = round(sum(prompt_tokens) / len(convs), 1)
            row["answer_chars_mean"] = round(sum(len(a) for a in answers["batched"]) / len(convs), 1)
            results[style] = row
        print(
            json.dumps(
                {
                    "model": str(args.model or "tiny"),
                    "n": args.n,
                    "batch_size": args.batch_size,
                    "max_new_tokens": args.max_new_tokens,
                    "threads": torch.get_num_threads(),
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
