from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.baselines import zero_shot_messages
from eval.examples import EvalTask
from eval.generation import generate_greedy, load_model
from eval.runner import ALL_SYSTEMS, EvalConfig, default_max_new_tokens, run_eval
from tests.eval.conftest import labelled_examples


@pytest.mark.slow
def test_run_eval_end_to_end(chatty_model_dir: Path, tiny_adapter_dir: Path, task: EvalTask) -> None:
    examples = labelled_examples(per_label=2)  # 6 examples
    pool = labelled_examples(start_index=100, per_label=3, offset=2)
    config = EvalConfig(few_shot_k=3, batch_size=4)
    report = run_eval(chatty_model_dir, tiny_adapter_dir, examples, task, pool, config)

    rows = list(report.rows())
    assert len(rows) == len(ALL_SYSTEMS) * len(examples)
    assert {r.system for r in rows} == set(ALL_SYSTEMS)
    for row in rows:
        assert row.prompt.endswith("<|im_start|>assistant\n")
        assert row.correct == (row.prediction == row.reference)  # tiny labels: no normalisation needed here
    ranking = [r for r in rows if r.system == "base_label_ranking"]
    assert all(r.prediction in task.labels for r in ranking)
    few = next(r for r in rows if r.system == "base_few_shot")
    assert few.prompt.count("<|im_start|>assistant") == 4  # 3 shots + the answer header
    assert len(report.shot_record_ids) == 3

    data = report.to_json()
    json.dumps(data)  # JSON-ready
    for key in ("verdict", "metric", "adapter", "baselines", "ci_low", "ci_high", "reason", "p_value", "systems"):
        assert key in data
    assert set(data["baselines"]) == set(ALL_SYSTEMS) - {"adapter"}
    assert data["verdict"] in ("pass", "fail")
    for name in ALL_SYSTEMS:
        assert {"accuracy", "macro_f1", "out_of_label", "seconds", "examples_per_s"} <= set(data["systems"][name])

    # The base systems really ran without the adapter: same answers as the plain base model.
    base, tokenizer = load_model(chatty_model_dir)
    zero = [zero_shot_messages(e, task) for e in examples]
    max_new = default_max_new_tokens(task, tokenizer)
    plain = generate_greedy(base, tokenizer, zero, max_new_tokens=max_new)
    assert report.systems["base_zero_shot"].predictions == plain
    # ... and the adapter changes the model (random LoRA A and B), so the check above has teeth.
    adapted, _ = load_model(chatty_model_dir, tiny_adapter_dir)
    assert generate_greedy(adapted, tokenizer, zero, max_new_tokens=max_new) != plain


def test_contaminated_run_fails_and_config_is_validated(
    chatty_model_dir: Path, tiny_adapter_dir: Path, task: EvalTask
) -> None:
    with pytest.raises(ValueError, match="adapter"):
        EvalConfig(systems=["base_zero_shot"])
    examples = labelled_examples(per_label=1)
    config = EvalConfig(systems=["adapter", "base_label_ranking"])
    report = run_eval(chatty_model_dir, tiny_adapter_dir, examples, task, [], config, contaminated=True)
    assert report.verdict.verdict == "fail" and "contaminated" in report.verdict.reason
    assert set(report.systems) == {"adapter", "base_label_ranking"}
