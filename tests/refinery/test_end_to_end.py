"""The thin path through the real CLI: ingest -> scan -> snapshot -> train -> eval -> lineage (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refinery.cli import app

LABELS = ["alpha", "beta", "gamma"]


def _corpus(folder: Path) -> tuple[Path, Path]:
    train, test = [], []
    for i in range(90):
        label = LABELS[i % 3]
        row = {"messages": [{"role": "user", "content": f"{label} case {i}"}, {"role": "assistant", "content": label}]}
        (test if i % 10 == 0 else train).append(json.dumps(row))
    train += [train[0], train[1], "{broken json", json.dumps({"messages": []})]
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    (folder / "test.jsonl").write_text("\n".join(test) + "\n")
    return folder / "train.jsonl", folder / "test.jsonl"


def _run(runner: CliRunner, ws: Path, *args: str, code: int = 0) -> dict:
    result = runner.invoke(app, ["--workspace", str(ws), "--quiet", *args, "--json"])
    assert result.exit_code == code, result.output + (result.stderr or "")
    return json.loads(result.stdout)


@pytest.mark.slow
def test_thin_path_from_files_to_verdict_and_lineage(tmp_path: Path, tiny_model_dir: Path) -> None:
    runner = CliRunner()
    ws = tmp_path / "ws"
    train, test = _corpus(tmp_path)
    batch = _run(runner, ws, "ingest", str(train))
    assert batch["rows_read"] == 85 and batch["quarantined"] == 2 and batch["ingested"] == 83
    assert batch["new_records"] == 81
    evalset = _run(runner, ws, "ingest", str(test), "--eval-set", "heldout")
    assert evalset["ingested"] == 9
    scan = _run(runner, ws, "scan")
    assert scan["records"] == 81 and scan["exact"]["duplicates"] == 0
    # the eval items ("alpha case 0") are one token away from training prompts ("alpha case 10"): the default
    # contamination check flags those training records and the default policy holds them back until reviewed
    leaked = scan["contamination"]["flagged"]
    assert leaked > 0
    blocking = "('empty_response', 'pii', 'near_dup_eval', 'contamination', 'inconsistency')"  # BLOCKING_CHECKS
    sql = f"SELECT count(DISTINCT record_id) AS n FROM flagged_records WHERE check_name IN {blocking}"
    blocked = _run(runner, ws, "sql", sql)[0]["n"]
    assert blocked == leaked  # nothing else in this corpus is flagged by a blocking check (informative ones may)
    snap = _run(runner, ws, "snapshot", "create")
    assert snap["train"] + snap["validation"] + snap["test"] == 81 - leaked
    config = tmp_path / "train.yaml"
    config.write_text("batch_size: 8\neval_every: 5\nlearning_rate: 0.005\n")
    train_args = ["train", "--snapshot", snap["snapshot_id"], "--base-model", str(tiny_model_dir)]
    train_args += ["--config", str(config), "--max-steps", "10"]
    adapter = _run(runner, ws, *train_args)
    assert adapter["adapter_id"].startswith("adp_") and adapter["val_loss"] is not None
    again = _run(runner, ws, *train_args)
    assert again["adapter_id"] == adapter["adapter_id"]  # same inputs, same artifact: reused
    result = runner.invoke(
        app,
        [
            "--workspace",
            str(ws),
            "--quiet",
            "eval",
            "--adapter",
            adapter["adapter_id"],
            "--eval-set",
            "heldout",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output  # a failed verdict exits 1
    verdict = json.loads(result.stdout)
    assert {"eval_id", "verdict", "metric", "adapter", "baselines", "ci_low", "ci_high"} <= set(verdict)
    # ten steps on the random tiny model teach it nothing the prompted base lacks: the gate refuses it
    assert verdict["verdict"] == "fail" and verdict["diff"] <= 0
    assert "is not above the minimum gain" in verdict["reason"] and verdict["contamination"] == "clean"
    assert set(verdict["baselines"]) >= {"base_zero_shot", "base_few_shot"}
    rows = json.loads(
        runner.invoke(
            app,
            ["--workspace", str(ws), "sql", "--json", "SELECT system, count(*) AS n FROM eval_results GROUP BY system"],
        ).stdout
    )
    assert {r["n"] for r in rows} == {9}
    tree = _run(runner, ws, "lineage", verdict["eval_id"])
    adapter_node = tree["parents"][0]
    snapshot_node = adapter_node["parents"][0]
    assert adapter_node["id"] == adapter["adapter_id"] and snapshot_node["id"] == snap["snapshot_id"]
    batch_nodes = [n for n in snapshot_node["parents"] if n["kind"] == "batch"]
    assert [n["id"] for n in batch_nodes] == [batch["batch_id"]]
    files = batch_nodes[0]["parents"]
    member_rows = _run(
        runner,
        ws,
        "sql",
        "SELECT count(*) AS n FROM source_rows s JOIN snapshot_members m USING (record_id) "
        f"WHERE m.snapshot_id = '{snap['snapshot_id']}'",
    )[0]["n"]
    assert 83 - 2 * leaked <= member_rows < 83  # the held-back records' rows are not in the snapshot
    assert files[0]["id"] == str(train.resolve()) and files[0]["rows"] == member_rows
    assert files[0]["records"] == 81 - leaked
