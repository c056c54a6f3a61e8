"""The gate through the real CLI and catalog: evidence rows, the champion baseline, promote / rollback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from refinery.cli import app

LABELS = ["alpha", "beta", "gamma"]


def _write_corpus(folder: Path) -> tuple[Path, Path]:
    train: list[str] = []
    test: list[str] = []
    for i in range(60):
        label = LABELS[i % 3]
        row = {"messages": [{"role": "user", "content": f"{label} case {i}"}, {"role": "assistant", "content": label}]}
        (test if i % 10 == 0 else train).append(json.dumps(row))
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    (folder / "test.jsonl").write_text("\n".join(test) + "\n")
    return folder / "train.jsonl", folder / "test.jsonl"


def _cli(runner: CliRunner, ws: Path, *args: str, code: int | None = 0) -> dict[str, Any]:
    result = runner.invoke(app, ["--workspace", str(ws), "--quiet", *args, "--json"])
    if code is not None:
        assert result.exit_code == code, result.output + (result.stderr or "")
    return json.loads(result.stdout) if result.stdout.strip() else {"exit_code": result.exit_code}


@pytest.mark.slow
def test_champion_promote_and_rollback_through_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    runner = CliRunner()
    ws = tmp_path / "ws"
    train, test = _write_corpus(tmp_path)
    _cli(runner, ws, "ingest", str(train))
    _cli(runner, ws, "ingest", str(test), "--eval-set", "heldout")
    _cli(runner, ws, "scan")
    snap = _cli(runner, ws, "snapshot", "create")
    adapters = []
    for lr in ("0.005", "0.01"):
        config = tmp_path / f"train-{lr}.yaml"
        config.write_text(f"batch_size: 8\neval_every: 5\nlearning_rate: {lr}\n")
        args = ["train", "--snapshot", snap["snapshot_id"], "--base-model", str(tiny_model_dir), "--config"]
        adapters.append(_cli(runner, ws, *args, str(config), "--max-steps", "3")["adapter_id"])
    first, second = adapters
    assert first != second

    general = tmp_path / "general.jsonl"
    answers = {"Hello!": "Hello, how can I help?", "Where is my card?": "It is on its way."}
    general.write_text("".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in answers.items()))
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(
        f"systems: [adapter, base_zero_shot, champion]\nmax_new_tokens: 4\ngeneral:\n  path: {general}\n"
    )
    eval_args = ["eval", "--eval-set", "heldout", "--config", str(eval_config)]

    # promote refuses an adapter that has no verdict (exit 1), then a forced promotion is recorded
    refused = runner.invoke(app, ["--workspace", str(ws), "--quiet", "promote", first])
    assert refused.exit_code == 1 and "never been evaluated" in (refused.stderr or refused.output)
    forced = _cli(runner, ws, "promote", first, "--force", "--reason", "bootstrap the registry")
    assert forced["action"] == "force_promote" and forced["reason"] == "bootstrap the registry"

    # the champion is skipped when it is the adapter under test ...
    own = _cli(runner, ws, *eval_args, "--adapter", first, code=1)
    assert "champion" not in own["baselines"] and own["champion_adapter_id"] is None
    assert own["verdict"] == "fail" and "is not above the minimum gain" in own["reason"]
    # ... and is a baseline, with its adapter id, for any other adapter
    verdict = _cli(runner, ws, *eval_args, "--adapter", second, code=1)
    assert {"verdict", "metric", "adapter", "baselines", "ci_low", "ci_high", "regression", "contamination"} <= set(
        verdict
    )
    assert set(verdict["baselines"]) == {"base_zero_shot", "champion"}
    assert verdict["champion_adapter_id"] == first
    assert verdict["comparisons"]["champion"]["adapter_id"] == first
    assert verdict["contamination"] == "clean" and verdict["contaminated_items"] == 0
    assert verdict["regression"]["n_prompts"] == 2 and verdict["regression"]["general_set"] == str(general)
    # three steps on a random tiny model teach nothing: the challenger ties the champion and the base, and fails
    assert verdict["adapter"] == 0.0 and verdict["baselines"] == {"base_zero_shot": 0.0, "champion": 0.0}
    assert verdict["verdict"] == "fail" and verdict["diff"] == 0.0
    assert "the difference +0.00 is not above the minimum gain 0.00" in verdict["reason"]
    assert verdict["regression"]["status"] == "pass"  # tiny changes to a random model: within +10%

    def sql(query: str) -> list[dict[str, Any]]:
        return _cli(runner, ws, "sql", query)  # type: ignore[return-value]

    comparisons = sql(f"SELECT * FROM eval_comparisons WHERE eval_id = '{verdict['eval_id']}' ORDER BY baseline")
    assert [c["baseline"] for c in comparisons] == ["base_zero_shot", "champion"]
    assert comparisons[1]["baseline_adapter_id"] == first
    assert sum(c["is_strongest"] for c in comparisons) == 1
    gate = sql(f"SELECT * FROM eval_gate WHERE eval_id = '{verdict['eval_id']}'")[0]
    assert gate["contamination_status"] == "clean" and gate["regression_status"] == verdict["regression"]["status"]
    assert gate["champion_adapter_id"] == first and gate["task_kind"] == "exact_match"
    scores = sql(
        f"SELECT count(*) AS n, count(score) AS scored FROM eval_results WHERE eval_id = '{verdict['eval_id']}'"
    )
    assert scores[0]["n"] == scores[0]["scored"] == 3 * 6

    # rollback restores the adapter promoted before the latest promotion
    _cli(runner, ws, "promote", second, "--force", "--reason", "try the challenger")
    assert _cli(runner, ws, "registry")["current"] == second
    back = _cli(runner, ws, "rollback")
    assert back["action"] == "rollback" and back["adapter_id"] == first
    assert _cli(runner, ws, "registry")["current"] == first


@pytest.mark.slow
def test_contaminated_examples_fail_the_gate_or_are_excluded(tmp_path: Path, tiny_model_dir: Path) -> None:
    runner = CliRunner()
    ws = tmp_path / "ws"
    train, test = _write_corpus(tmp_path)
    # two eval items leak into training with their last word changed: near copies, not exact ones
    story = "my card never arrived and I have been waiting for more than two weeks now so please tell me what happened"

    def row(label: str, text: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]})

    leaked = [("alpha", f"alpha {story} today"), ("beta", f"beta {story} yesterday")]
    train.write_text(train.read_text() + "".join(row(label, text) + "\n" for label, text in leaked))
    originals = [row(label, text.rsplit(" ", 1)[0] + " please") for label, text in leaked]
    test.write_text("".join(line + "\n" for line in originals) + test.read_text())
    _cli(runner, ws, "ingest", str(train))
    _cli(runner, ws, "ingest", str(test), "--eval-set", "heldout")
    _cli(runner, ws, "scan")
    policy = tmp_path / "policy.yaml"
    policy.write_text("blocking_checks: []\n")  # nothing held back: the leaked records stay in the snapshot
    snap = _cli(runner, ws, "snapshot", "create", "--policy", str(policy))
    config = tmp_path / "train.yaml"
    config.write_text("batch_size: 8\neval_every: 5\nlearning_rate: 0.005\n")
    args = ["train", "--snapshot", snap["snapshot_id"], "--base-model", str(tiny_model_dir), "--config", str(config)]
    adapter = _cli(runner, ws, *args, "--max-steps", "2")["adapter_id"]

    base = "systems: [adapter, base_zero_shot]\nmax_new_tokens: 4\ngeneral:\n  enabled: false\n"
    for mode in ("fail", "exclude"):
        (tmp_path / f"{mode}.yaml").write_text(base + f"contamination: {mode}\n")
    eval_args = ["eval", "--adapter", adapter, "--eval-set", "heldout", "--config"]
    failed = _cli(runner, ws, *eval_args, str(tmp_path / "fail.yaml"), code=1)
    assert failed["verdict"] == "fail" and failed["contamination"] == "contaminated"
    assert failed["contaminated_items"] >= 2 and failed["n_examples"] == 8
    excluded = _cli(runner, ws, *eval_args, str(tmp_path / "exclude.yaml"), code=1)
    assert excluded["contamination"] == "clean" and excluded["contaminated_items"] == 0
    # clean now, and judged on the scores alone: two steps taught the tiny model nothing
    assert excluded["verdict"] == "fail" and "contaminated" not in excluded["reason"].split(" (")[0]
    assert "is not above the minimum gain" in excluded["reason"]
    assert excluded["excluded_contaminated_items"] == failed["contaminated_items"]
    assert excluded["n_examples"] == 8 - failed["contaminated_items"]
    assert (
        "excluded before scoring" in excluded["reason"]
        and "excluded before scoring" in (excluded["contamination_method"])
    )
    assert excluded["eval_id"] != failed["eval_id"]
