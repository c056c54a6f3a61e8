"""The gate and the audit through the real CLI, on an adapter of the tiny model: a real `refinery eval` that fails
(its eval set is contaminated) makes `refinery promote` refuse the adapter, and `refinery audit` re-hashes that
eval run's files and, with --deep, the base model's weights. Nothing is inserted by hand."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import invoke_cli, run_cli
from tests.support.tiny_model import build_tiny_model, randomize_weights

pytestmark = pytest.mark.slow

LABELS = ["alpha", "beta", "gamma"]


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


@pytest.fixture(scope="module")
def failed_eval(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ingest -> scan -> snapshot -> train (3 steps) -> eval on a set whose prompts are training prompts in capitals
    (the same prompt once normalised: contamination), all through the CLI; the eval must exit 1."""
    root = tmp_path_factory.mktemp("gate-cli")
    base = randomize_weights(build_tiny_model(root / "tiny"), scale=0.2)
    prompts = [f"{LABELS[i % 3]} case {i}" for i in range(40)]
    (root / "train.jsonl").write_text("".join(_chat(p, LABELS[i % 3]) + "\n" for i, p in enumerate(prompts)))
    ws = root / "ws"
    run_cli(ws, "ingest", str(root / "train.jsonl"))
    run_cli(ws, "scan", "--checks", "exact")
    snap = run_cli(ws, "snapshot", "create")
    (root / "train.yaml").write_text("batch_size: 8\nlearning_rate: 0.02\n")
    args = ["--snapshot", snap["snapshot_id"], "--base-model", str(base), "--config", str(root / "train.yaml")]
    adapter = run_cli(ws, "train", *args, "--max-steps", "3")
    # registered after training: 12 of the training prompts, shouted (another record, the same normalised prompt)
    leaky = "".join(_chat(p.upper(), LABELS[i % 3]) + "\n" for i, p in enumerate(prompts[:12]))
    (root / "leaky.jsonl").write_text(leaky)
    run_cli(ws, "ingest", str(root / "leaky.jsonl"), "--eval-set", "leaky")
    evaluated = invoke_cli(ws, "eval", "--adapter", adapter["adapter_id"], "--eval-set", "leaky", "--json")
    assert evaluated.exit_code == 1, evaluated.output + (evaluated.stderr or "")
    return {"ws": ws, "base": base, "adapter_id": adapter["adapter_id"], "eval": json.loads(evaluated.stdout)}


def test_a_failed_eval_is_stored_with_its_reason(failed_eval: dict[str, Any]) -> None:
    from refinery.workspace import open_workspace

    report = failed_eval["eval"]
    assert report["verdict"] == "fail" and "contaminated" in report["reason"]
    catalog = open_workspace(failed_eval["ws"]).catalog
    train = catalog.query(
        "SELECT lower(prompt) AS prompt FROM snapshot_members JOIN records USING (record_id) WHERE split = 'train'"
    )
    shouted = {f"{LABELS[i % 3]} case {i}" for i in range(12)}
    leaked = len(shouted & {r["prompt"] for r in train})  # the shouted prompts whose original is in train
    assert leaked > 0
    (row,) = catalog.query("SELECT eval_id, verdict, reason, contamination_status, contaminated_items FROM eval_gate")
    assert (row["eval_id"], row["verdict"], row["reason"]) == (report["eval_id"], "fail", report["reason"])
    assert (row["contamination_status"], row["contaminated_items"]) == ("contaminated", leaked)


def test_promote_refuses_the_adapter_and_names_the_failed_verdict(failed_eval: dict[str, Any]) -> None:
    ws, adapter_id, report = failed_eval["ws"], failed_eval["adapter_id"], failed_eval["eval"]
    refused = invoke_cli(ws, "promote", adapter_id, "--json")
    assert refused.exit_code == 1
    error = json.loads(refused.stdout)  # under --json an error is one JSON object on stdout too
    assert error["exit_code"] == 1 and f"refused to promote {adapter_id}" in error["error"]
    message = " ".join(refused.stderr.split())
    assert f"refused to promote {adapter_id}" in message and f"{report['eval_id']} failed the gate" in message
    assert " ".join(report["reason"].split()) in message and "--force --reason" in message
    registry = run_cli(ws, "registry")
    assert registry["current"] is None
    (entry,) = [a for a in registry["adapters"] if a["adapter_id"] == adapter_id]
    assert entry["status"] == "failed"


@contextmanager
def _tampered(path: Path) -> Iterator[None]:
    """``path`` with one byte flipped in its middle (same size), restored afterwards."""
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    path.write_bytes(bytes(changed))
    try:
        yield
    finally:
        path.write_bytes(original)


def _audit(ws: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = invoke_cli(ws, "audit", *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_audit_rehashes_eval_runs_and_deep_rehashes_base_model_weights(failed_eval: dict[str, Any]) -> None:
    from refinery.workspace import open_workspace

    ws, eval_id = failed_eval["ws"], failed_eval["eval"]["eval_id"]
    workspace = open_workspace(ws)
    catalog = workspace.catalog
    eval_dir = workspace.artifact_path(catalog.scalar("SELECT path FROM eval_runs WHERE eval_id = ?", [eval_id]))
    base_id, stored = catalog.query("SELECT base_model_id, path FROM base_models")[0].values()
    base_path = workspace.artifact_path(stored)
    weights = base_path / "model.safetensors"
    assert weights.is_file()

    code, clean = _audit(ws)
    assert code == 0 and clean["ok"] and clean["checked"]["evals"] == 1 and clean["checked"]["base_models"] == 1
    assert "base model weights were not re-hashed (use --deep)" in clean["notes"]
    code, deep = _audit(ws, "--deep")
    assert code == 0 and deep["ok"] and not any("--deep" in note for note in deep["notes"])

    files = sorted(p for p in eval_dir.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files, f"no files in {eval_dir}"
    for file in files:  # every file of the eval run is covered
        with _tampered(file):
            code, report = _audit(ws)
        assert code == 1, file
        assert {(p["kind"], p["artifact"], p["path"]) for p in report["problems"]} == {
            ("tampered", f"eval {eval_id}", str(file))
        }
    manifest = eval_dir / "manifest.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    try:
        code, report = _audit(ws)
    finally:
        manifest.write_bytes(saved)
    assert code == 1 and [(p["kind"], p["artifact"]) for p in report["problems"]] == [("missing", f"eval {eval_id}")]

    with _tampered(weights):
        shallow_code, shallow = _audit(ws)
        deep_code, deep = _audit(ws, "--deep")
    assert shallow_code == 0 and shallow["ok"]  # without --deep the weights are not read
    assert deep_code == 1
    assert [(p["kind"], p["artifact"], p["path"]) for p in deep["problems"]] == [
        ("tampered", f"base_model {base_id}", str(base_path))
    ]
    code, restored = _audit(ws, "--deep")
    assert code == 0 and restored["ok"]


def test_a_moved_base_model_folder_is_missing(failed_eval: dict[str, Any], tmp_path: Path) -> None:
    from refinery.workspace import open_workspace

    ws = failed_eval["ws"]
    workspace = open_workspace(ws)
    base_path = workspace.artifact_path(workspace.catalog.scalar("SELECT path FROM base_models"))
    moved = tmp_path / "moved"
    shutil.move(str(base_path), moved)
    try:
        code, report = _audit(ws)
    finally:
        shutil.move(str(moved), base_path)
    assert code == 1
    assert [(p["kind"], p["path"]) for p in report["problems"]] == [("missing", str(base_path))]
