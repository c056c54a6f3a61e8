"""Calibration of the gate's general-capability check (`max_regression`, docs/EVAL.md).

Train one LoRA adapter on a sample of a public intent task with the shipped recipe plus overrides, then measure
its task accuracy (greedy answers, exact label match) and the general check: the relative rise of the mean token
loss on the shipped human references (eval/data/general_reference.jsonl) over the base model's. Or, with
``--adapter``, measure the general check of an adapter that already exists (the one `make demo` trained, say).

    .venv/bin/python benchmarks/general_calibration.py train NAME --task banking77 [--n-train 1000] [--n-test 200]
        [--general-limit 256] [--constant-answer ok] [--threads 2] [--set learning_rate=0.03 ...]
        [--config examples/intent/train.yaml] [--models-dir DIR] [--out results.jsonl]
    .venv/bin/python benchmarks/general_calibration.py adapter NAME --adapter ADAPTER_DIR [--general-limit 256]

Tasks read ../shared/data: banking77 (77 intents), hwu64 (64 intents), hwu64-scenarios (its 18 scenarios).
Training and test rows are drawn by a seeded shuffle; 100 further training rows are the validation split.
``--set key=value`` overrides a TrainConfig field (dotted keys reach nested ones, values are JSON): the damaging
adapters of the table are ``--set rehearsal.share=0`` (no rehearsal), ``--constant-answer ok --set
rehearsal.share=0`` (every answer the same word) and ``--set learning_rate=0.03`` (15x the recipe's rate).
Prints one JSON line and appends it to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("REFINERY_PROGRESS", "0")

_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
Row = tuple[str, str]


def _rows(path: Path, label: Callable[[str], str] = lambda x: x) -> list[Row]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        return [(text, label(intent)) for text, intent in reader]


def task_rows(task: str) -> tuple[list[Row], list[Row]]:
    """(train, test) rows of a public intent task."""
    if task == "banking77":
        return _rows(_DATA / "banking77/train.csv"), _rows(_DATA / "banking77/test.csv")
    if task in ("hwu64", "hwu64-scenarios"):
        label = (lambda x: x.split("_", 1)[0]) if task == "hwu64-scenarios" else (lambda x: x)
        return _rows(_DATA / "hwu64/train.csv", label), _rows(_DATA / "hwu64/test.csv", label)
    raise SystemExit(f"unknown task {task} (banking77, hwu64, hwu64-scenarios)")


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def _general(model: Any, tokenizer: Any, limit: int | None) -> dict[str, Any]:
    from eval.gate import GateThresholds
    from eval.general import GeneralConfig, load_general_set, regression_check

    check = regression_check(
        model,
        tokenizer,
        lambda: model.disable_adapter(),
        load_general_set(None, limit),
        GeneralConfig(),
        GateThresholds().max_regression,
    )
    return {
        "general_n": check.n_prompts,
        "general_base": check.base_loss,
        "general_adapter": check.adapter_loss,
        "change": check.relative_change,
        "median_change": check.median_example_change,
        "status_at_default": check.status,
    }


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    import random

    import yaml

    from eval.generation import generate_greedy, load_model
    from eval.metrics import normalize_answer
    from training.base_model import resolve_base_model
    from training.config import load_train_config
    from training.recipe import train_lora

    train, test = task_rows(args.task)
    rng = random.Random(args.seed)
    rng.shuffle(train)
    rng.shuffle(test)
    validation, train, test = train[args.n_train : args.n_train + 100], train[: args.n_train], test[: args.n_test]

    def conv(query: str, answer: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": query}, {"role": "assistant", "content": args.constant_answer or answer}]

    overrides: dict[str, Any] = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for item in args.set:
        key, _, value = item.partition("=")
        _set_dotted(overrides, key, json.loads(value))
    overrides.setdefault("cpu_threads", args.threads)
    config = load_train_config(overrides)
    base = resolve_base_model(None, Path(args.models_dir))
    out = Path(tempfile.mkdtemp(prefix=f"calibration-{args.name}-"))
    try:
        started = time.perf_counter()
        result = train_lora(base, [conv(*r) for r in train], [conv(*r) for r in validation], config, out)
        train_s = time.perf_counter() - started
        model, tokenizer = load_model(base.path, out)
        labels = sorted({label for _, label in train})
        answers = generate_greedy(model, tokenizer, [[{"role": "user", "content": q}] for q, _ in test], 24, 16)
        right = sum(normalize_answer(a) == normalize_answer(r) for a, (_, r) in zip(answers, test, strict=True))
        return {
            "task": args.task,
            "labels": len(labels),
            "n_train": len(train),
            "n_test": len(test),
            "overrides": overrides,
            "constant_answer": args.constant_answer,
            "accuracy": right / len(test),
            "steps": result.steps,
            "train_s": round(train_s, 1),
            "rehearsal": result.rehearsal,
            **_general(model, tokenizer, args.general_limit),
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_adapter(args: argparse.Namespace) -> dict[str, Any]:
    from eval.generation import load_model
    from training.base_model import resolve_base_model

    base = resolve_base_model(None, Path(args.models_dir))
    model, tokenizer = load_model(base.path, Path(args.adapter))
    return {"adapter": str(args.adapter), **_general(model, tokenizer, args.general_limit)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("train", "adapter"):
        p = sub.add_parser(mode)
        p.add_argument("name")
        p.add_argument("--general-limit", type=int, default=None, help="first N references (default: all 256)")
        p.add_argument("--models-dir", default="demo-workspace/models", help="where SmolLM2 is converted once")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", default="general_calibration.jsonl")
    train = sub.choices["train"]
    train.add_argument("--task", required=True)
    train.add_argument("--n-train", type=int, default=1000)
    train.add_argument("--n-test", type=int, default=200)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--config", default="examples/intent/train.yaml", help="'' for TrainConfig's defaults")
    train.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    train.add_argument("--constant-answer", default=None)
    sub.choices["adapter"].add_argument("--adapter", required=True, help="folder with adapter_model.safetensors")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    row = {"name": args.name, **(run_train(args) if args.mode == "train" else run_adapter(args))}
    line = json.dumps(row)
    print(line)
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
