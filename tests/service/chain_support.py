"""A small workspace with every kind of artifact, made with the real CLI (no row inserted by hand): two ingested
batches (training rows and an eval set), an `exact` scan, a snapshot, a 3-step LoRA adapter of the tiny model, an
eval run that fails the gate (the eval set repeats training prompts in capitals: contamination) and a forced
promotion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.cli import invoke_cli, run_cli
from tests.support.tiny_model import build_tiny_model, randomize_weights

LABELS = ["alpha", "beta", "gamma"]


def chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def build_chain(root: Path, reason: str = "service test") -> dict[str, Any]:
    """The chain in ``root``; ``reason`` is recorded with the forced promotion."""
    base = randomize_weights(build_tiny_model(root / "tiny"), scale=0.2)
    prompts = [f"{LABELS[i % 3]} case {i}" for i in range(40)]
    rows = [chat(p, LABELS[i % 3]) for i, p in enumerate(prompts)]
    duplicate = chat(prompts[0].capitalize() + "!", LABELS[0])  # the same text once normalised: `exact` flags it
    (root / "train.jsonl").write_text("\n".join([*rows, duplicate]) + "\n")
    ws = root / "ws"
    batch = run_cli(ws, "ingest", str(root / "train.jsonl"))
    scan = run_cli(ws, "scan", "--checks", "exact")
    snap = run_cli(ws, "snapshot", "create")
    (root / "train.yaml").write_text("batch_size: 8\nlearning_rate: 0.02\n")
    args = ["--snapshot", snap["snapshot_id"], "--base-model", str(base), "--config", str(root / "train.yaml")]
    adapter = run_cli(ws, "train", *args, "--max-steps", "3")
    leaky = "".join(chat(p.upper(), LABELS[i % 3]) + "\n" for i, p in enumerate(prompts[:12]))
    (root / "leaky.jsonl").write_text(leaky)
    run_cli(ws, "ingest", str(root / "leaky.jsonl"), "--eval-set", "leaky")
    evaluated = invoke_cli(ws, "eval", "--adapter", adapter["adapter_id"], "--eval-set", "leaky", "--json")
    assert evaluated.exit_code == 1, evaluated.output  # the gate's 'fail'
    promotion = run_cli(ws, "promote", adapter["adapter_id"], "--force", "--reason", reason)
    return {
        "ws": ws,
        "batch_id": batch["batch_id"],
        "scan_id": scan["scan_id"],
        "snapshot_id": snap["snapshot_id"],
        "adapter_id": adapter["adapter_id"],
        "eval_id": json.loads(evaluated.stdout)["eval_id"],
        "event_id": promotion["event_id"],
        "train_file": str(root / "train.jsonl"),
    }
