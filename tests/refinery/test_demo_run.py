"""`refinery demo`'s chain on a small corpus and the tiny model: every stage runs and leaves its rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from refinery.demo import run_demo
from refinery.workspace import open_workspace


@pytest.mark.slow
def test_demo_chain_runs_end_to_end_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    ws = open_workspace(tmp_path / "ws")
    verdict = run_demo(ws, n_train=400, max_steps=4, eval_limit=12, base_model=str(tiny_model_dir))
    # 4 steps on an untrained tiny model learn nothing: the gate must say so (the real pass is `make demo` on
    # SmolLM2, far too slow for a test; tests/refinery/test_gate_verdicts.py passes a good tiny adapter)
    assert verdict == "fail"
    catalog = ws.catalog
    assert catalog.scalar("SELECT count(*) FROM quarantined_rows") > 0  # the planted broken rows
    checks = {r["check_name"] for r in catalog.query("SELECT DISTINCT check_name FROM findings")}
    assert {"exact", "exact_prompt", "near_dup", "pii", "contamination"} <= checks
    snapshot = catalog.query("SELECT train, validation, test FROM snapshots")[0]
    assert snapshot["train"] > 0 and snapshot["validation"] > 0
    run = catalog.query("SELECT verdict, reason FROM eval_runs")[0]
    assert run["verdict"] == verdict and "is not above the minimum gain" in run["reason"]
    systems = {r["system"] for r in catalog.query("SELECT DISTINCT system FROM eval_results")}
    assert systems == {"adapter", "base_zero_shot", "base_few_shot", "base_label_ranking"}
