"""The gate's verdicts on real (tiny) adapters through the real CLI, each asserting the exact verdict and reason.

A tiny model (embeddings scaled so LoRA can learn, then fully fine-tuned for 72 steps on the shipped rehearsal
conversations so that it has some general capability to lose: loss 4.3 on the shipped references, against 7.8 at
random init) cannot map a colour word to its code label when prompted; a LoRA adapter trained with the shipped
recipe (rehearsal included) learns it. From that setting:
- a legitimate pass: the adapter beats every baseline with significance, and the general check passes on the
  shipped human references (rehearsal even lowers their loss);
- a fail for no gain: an adapter that learned nothing (learning rate 1e-9) ties the base model;
- a fail for p >= alpha alone: the good adapter on 5 examples (a clear gain with a CI above 0, but McNemar's p
  cannot go below 0.0625 with 5 pairs);
- a fail for the general check alone: the same recipe without rehearsal solves the task just as well and loses
  general capability (the check's loss rises past +10%; with rehearsal it stays within);
- contamination is covered in tests/refinery/test_cli_gate.py.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from eval.gate import GateThresholds
from tests.support.cli import invoke_cli, run_cli

pytestmark = pytest.mark.slow

CODES = {"red": "card", "green": "password", "blue": "refund"}
_FILLER = [  # nonsense words: the colour is the only signal
    "zorp",
    "quib",
    "mell",
    "dask",
    "fent",
    "grol",
    "hapt",
    "jink",
    "lusk",
    "morv",
    "nist",
    "pell",
    "quon",
    "rask",
    "silt",
    "tump",
    "vorn",
    "wisk",
    "yelp",
    "zant",
    "bram",
    "clud",
    "drim",
    "fosk",
    "gact",
    "hulp",
    "jorb",
    "kelt",
    "lomp",
    "murk",
    "narf",
    "oskt",
    "plim",
    "qued",
    "runk",
    "sarn",
    "tobe",
    "ulst",
    "vexa",
]


def _prompts(rng: random.Random, n: int, taken: set[str]) -> list[tuple[str, str]]:
    rows = []
    while len(rows) < n:
        colour = list(CODES)[len(rows) % 3]
        prompt = f"{colour} {rng.choice(_FILLER)} {rng.choice(_FILLER)}"
        if prompt not in taken:
            taken.add(prompt)
            rows.append((prompt, CODES[colour]))
    return rows


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}) for p, a in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _general_tiny(source: Path, folder: Path) -> Path:
    """``source`` fully fine-tuned on the shipped rehearsal conversations: a tiny model that knows some English."""
    from training.config import TrainConfig
    from training.recipe import train_lora
    from training.rehearsal import load_rehearsal_set

    conversations, _, _ = load_rehearsal_set()
    settings = {"method": "full", "learning_rate": 0.003, "epochs": 3, "eval_every": None, "max_length": 256}
    config = TrainConfig.model_validate({**settings, "rehearsal": {"share": 0.0}, "cpu_threads": 1})
    train_lora(source, conversations, [], config, folder)
    for file in source.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, trainable_tiny_dir: Path) -> dict[str, Any]:
    """A workspace with the colour-code task ingested, scanned and frozen, and a held-out eval set."""
    root = tmp_path_factory.mktemp("gate-verdicts")
    base = _general_tiny(trainable_tiny_dir, root / "base")
    rng = random.Random(5)
    taken: set[str] = set()
    train, test = _prompts(rng, 150, taken), _prompts(rng, 30, taken)
    ws = root / "ws"
    run_cli(ws, "ingest", str(_write(root / "train.jsonl", train)))
    run_cli(ws, "ingest", str(_write(root / "test.jsonl", test)), "--eval-set", "colours")
    # the checks of the scan the verdicts below were measured with: the default set's embedding checks (2026-12)
    # cluster 2 paraphrases of this corpus (semantic_dup), which deals the splits differently, and the forgetful
    # recipe's tiny adapter then lands at 0.6 instead of >= 0.9 on the task (a fragile trajectory, not a data problem)
    cheap = "exact,exact_prompt,near_dup,empty_response,truncated,repetitive,length,refusal,pii,contamination"
    run_cli(ws, "scan", "--checks", cheap)
    snap = run_cli(ws, "snapshot", "create")
    return {"root": root, "ws": ws, "snapshot": snap["snapshot_id"], "base": base}


def _train(setting: dict[str, Any], name: str, config: str) -> str:
    path = setting["root"] / f"{name}.yaml"
    path.write_text(f"batch_size: 8\neval_every: 20\ncpu_threads: 1\n{config}")
    args = ["--snapshot", setting["snapshot"], "--base-model", str(setting["base"]), "--config", str(path)]
    return str(run_cli(setting["ws"], "train", *args)["adapter_id"])


def _eval(setting: dict[str, Any], adapter: str, code: int, limit: int | None = None, extra: str = "") -> Any:
    path = setting["root"] / f"eval-{adapter}-{limit}.yaml"
    labels = ", ".join(CODES.values())
    path.write_text(
        f"cpu_threads: 1\ntask: {{kind: classification, labels: [{labels}]}}\ngeneral:\n  limit: 48\n{extra}"
    )
    args = ["eval", "--adapter", adapter, "--eval-set", "colours", "--config", str(path), "--json"]
    result = invoke_cli(setting["ws"], *args, *(["--limit", str(limit)] if limit else []))
    assert result.exit_code == code, result.output + (result.stderr or "")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def good_adapter(setting: dict[str, Any]) -> str:
    # the tiny tokenizer cuts text about 3x finer than SmolLM2's, so general conversations run longer in tokens
    return _train(setting, "good", "learning_rate: 0.002\nepochs: 16\nrehearsal:\n  max_tokens: 1024\n")


def test_a_good_adapter_passes_for_the_right_reasons(setting: dict[str, Any], good_adapter: str) -> None:
    report = _eval(setting, good_adapter, code=0)
    assert report["verdict"] == "pass"
    assert report["n_examples"] == 30 and report["contamination"] == "clean"
    assert report["adapter"] >= 0.8
    assert set(report["baselines"]) == {"base_zero_shot", "base_few_shot", "base_label_ranking"}
    assert all(score <= 0.5 for score in report["baselines"].values())
    assert report["ci_low"] > 0 and report["p_value"] < 0.05
    assert report["reason"].startswith(f"adapter {report['adapter']:.2f} beats the strongest baseline")
    regression = report["regression"]
    assert regression["status"] == "pass" and regression["n_prompts"] == 48
    assert regression["general_set"] == "refinery:general_reference.jsonl"
    assert regression["relative_change"] <= GateThresholds().max_regression
    assert "general-capability check pass" in report["reason"]
    # promotion is allowed on that verdict (in a copy: a promoted adapter joins later evals as the champion)
    copy = setting["root"] / "promoted-ws"
    shutil.copytree(setting["ws"], copy)
    promoted = invoke_cli(copy, "promote", good_adapter, "--json")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["adapter_id"] == good_adapter


def test_an_adapter_that_learned_nothing_fails_for_no_gain(setting: dict[str, Any]) -> None:
    adapter = _train(setting, "idle", "learning_rate: 1.0e-9\nmax_steps: 2\n")
    report = _eval(setting, adapter, code=1)
    assert report["verdict"] == "fail"
    assert report["adapter"] == report["baselines"]["base_zero_shot"]  # it answers like the base model
    assert report["diff"] <= 0
    reason = report["reason"]
    assert "is not above the minimum gain 0.00" in reason
    assert "CI of the difference reaches" in reason  # no gain: the CI reaches 0 (McNemar's p is two-sided)
    assert "contaminated" not in reason and "general-capability regression" not in reason
    assert report["regression"]["status"] == "pass"


def test_too_few_examples_fail_on_significance_alone(setting: dict[str, Any], good_adapter: str) -> None:
    prompted = "systems: [adapter, base_zero_shot, base_few_shot]\n"  # the prompted baselines: 0 right here
    report = _eval(setting, good_adapter, code=1, limit=5, extra=prompted)
    assert report["verdict"] == "fail" and report["n_examples"] == 5
    assert report["diff"] >= 0.8 and report["ci_low"] > 0  # right on 4 or 5 of 5 where the baselines are wrong
    assert report["p_value"] >= 0.05  # McNemar on 5 or fewer discordant pairs: at best p = 0.0625
    reason = report["reason"]
    assert f"McNemar p={report['p_value']:.2g} is not below alpha 0.05" in reason
    assert "minimum gain" not in reason and "CI of the difference" not in reason
    assert "contaminated" not in reason and "general-capability regression" not in reason


def test_forgetting_fails_on_the_general_check_alone(setting: dict[str, Any]) -> None:
    adapter = _train(setting, "forgetful", "learning_rate: 0.002\nepochs: 16\nrehearsal:\n  share: 0.0\n")
    report = _eval(setting, adapter, code=1)
    assert report["verdict"] == "fail"
    assert report["adapter"] >= 0.9 and report["ci_low"] > 0 and report["p_value"] < 0.05  # the task is learned
    regression = report["regression"]
    assert regression["status"] == "fail" and regression["relative_change"] > GateThresholds().max_regression
    reason = report["reason"]
    assert "general-capability regression: mean token loss of the human answers to 48 general prompts" in reason
    assert "minimum gain" not in reason and "not below alpha" not in reason and "contaminated" not in reason
