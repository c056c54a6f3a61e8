from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.baselines import zero_shot_messages
from eval.examples import EvalExample, EvalTask
from eval.gate import decide
from eval.general import GeneralSet
from eval.generation import generate_greedy, load_model
from eval.runner import ALL_SYSTEMS, CHAMPION, Champion, EvalConfig, default_max_new_tokens, run_eval
from tests.eval.conftest import labelled_examples


@pytest.mark.slow
def test_run_eval_end_to_end(chatty_model_dir: Path, tiny_adapter_dir: Path, task: EvalTask) -> None:
    examples = labelled_examples(per_label=2)  # 6 examples
    pool = labelled_examples(start_index=100, per_label=3, offset=2)
    config = EvalConfig(few_shot_k=3, batch_size=4)
    report = run_eval(chatty_model_dir, tiny_adapter_dir, examples, task, pool, config)

    rows = list(report.rows())
    systems = [s for s in ALL_SYSTEMS if s != CHAMPION]  # no champion given: that baseline is skipped
    assert len(rows) == len(systems) * len(examples)
    assert {r.system for r in rows} == set(systems)
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
    assert set(data["baselines"]) == set(systems) - {"adapter"} == set(data["comparisons"])
    # the stored verdict is the gate's decision on exactly these per-example scores
    baselines = {name: report.systems[name].scores for name in systems if name != "adapter"}
    again = decide(report.systems["adapter"].scores, baselines, config.thresholds, metric=task.metric,
                   regression=report.verdict.regression)  # fmt: skip
    assert report.verdict == again
    adapter_score = sum(report.systems["adapter"].scores) / len(examples)
    strongest = max(baselines, key=lambda name: sum(baselines[name]))
    assert data["adapter"] == adapter_score and data["strongest_baseline"] == strongest
    # a random adapter on a random model: no better than the strongest baseline, so the gate must refuse it
    assert data["diff"] <= 0 and data["verdict"] == "fail"
    assert "is not above the minimum gain" in data["reason"]
    assert data["regression"]["status"] == "skipped" and "no general set" in data["regression"]["reason"]
    for name in systems:
        assert {"accuracy", "macro_f1", "out_of_label", "seconds", "examples_per_s"} <= set(data["systems"][name])

    # The base systems really ran without the adapter: same answers as the plain base model.
    base, tokenizer = load_model(chatty_model_dir)
    zero = [zero_shot_messages(e, task) for e in examples]
    max_new = default_max_new_tokens(task, tokenizer)
    # stop_outside_labels is on by default: answers stop once they can no longer name a label
    plain = generate_greedy(base, tokenizer, zero, max_new_tokens=max_new, labels=task.labels)
    assert report.systems["base_zero_shot"].predictions == plain
    # ... and the adapter changes the model (random LoRA A and B), so the check above has teeth.
    adapted, _ = load_model(chatty_model_dir, tiny_adapter_dir)
    assert generate_greedy(adapted, tokenizer, zero, max_new_tokens=max_new, labels=task.labels) != plain


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


def _examples(references: list[str]) -> list[EvalExample]:
    return [
        EvalExample(
            example_index=i, record_id=f"rec_{i}", messages=({"role": "user", "content": f"case {i}"},), reference=ref
        )
        for i, ref in enumerate(references)
    ]


def test_free_form_run_with_champion_and_general_check(
    chatty_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    """A free-form task: chrF per example, reference loss per system, the champion as a baseline with its
    adapter id, and the general-capability check run on a small general set."""
    general = GeneralSet(
        "tiny-general",
        [[{"role": "user", "content": "Hello!"}], [{"role": "user", "content": "Where is my card?"}]],
        ["Hello, how can I help?", "It is on its way."],
        "0" * 64,
    )
    task = EvalTask(kind="free_form")
    examples = _examples(["Your card is on its way.", "Reset it from the login page.", "Refund sent."])
    config = EvalConfig(
        systems=["adapter", "base_zero_shot", "champion"],
        max_new_tokens=8,
        general={"limit": 2},
    )
    champion = Champion(adapter_id="adp_champ", path=str(tiny_adapter_dir))
    report = run_eval(
        chatty_model_dir,
        tiny_adapter_dir,
        examples,
        task,
        [],
        config,
        champion=champion,
        general_set=general,
    )
    data = report.to_json()
    assert data["metric"] == "chrf" and data["champion_adapter_id"] == "adp_champ"
    assert data["comparisons"]["champion"]["adapter_id"] == "adp_champ"
    # the champion is the same adapter here, so it answers exactly as the adapter under test
    assert report.systems["champion"].predictions == report.systems["adapter"].predictions
    assert report.systems["base_zero_shot"].predictions != report.systems["adapter"].predictions
    for result in report.systems.values():
        assert result.scores == [task.score(p, e.reference) for p, e in zip(result.predictions, examples, strict=True)]
        assert result.metrics["reference_loss"] > 0 and "rouge_l" in result.metrics
    regression = data["regression"]
    assert regression["n_prompts"] == 2 and regression["general_set"] == "tiny-general"
    expected = "fail" if regression["relative_change"] > regression["max_regression"] else "pass"
    assert regression["status"] == expected
    assert regression["relative_change"] == pytest.approx(regression["adapter_loss"] / regression["base_loss"] - 1)
    assert {r.score for r in report.rows()} <= {s for r in report.systems.values() for s in r.scores}


def test_extraction_run_names_the_fields_and_can_skip_the_general_check(
    chatty_model_dir: Path, tiny_adapter_dir: Path
) -> None:
    task = EvalTask(kind="extraction")
    examples = _examples(['{"card": "visa", "amount": 3}', '{"card": "amex", "amount": null}'])
    config = EvalConfig(systems=["adapter", "base_zero_shot"], max_new_tokens=6, general={"enabled": False})
    report = run_eval(chatty_model_dir, tiny_adapter_dir, examples, task, [], config)
    assert report.task.fields == ["card", "amount"]
    assert "Fields:\n- card\n- amount" in report.systems["base_zero_shot"].prompts[0]
    data = report.to_json()
    assert data["metric"] == "field_accuracy"
    assert {"json_valid_rate", "field:card", "field:amount"} <= set(data["systems"]["adapter"])
    assert data["regression"]["status"] == "skipped" and "disabled" in data["regression"]["reason"]
    assert "general-capability check skipped" in data["reason"]
