"""Extraction and free-form metrics on hand-computed cases, and the task kinds that use them."""

from __future__ import annotations

import pytest

from eval.examples import EvalExample, EvalTask
from eval.metrics import chrf, extraction_metrics, field_matches, parse_json_object, rouge_l


def test_chrf_on_a_hand_computed_case() -> None:
    # "ab" vs "abc": n=1 P=1 R=2/3; n=2 P=1 R=1/2; n=3 P=0 R=0 (only the reference has a trigram);
    # n=4..6 skipped (neither side has such n-grams). Mean P=2/3, mean R=7/18, F2 = 5PR/(4P+R) = 14/33.
    assert chrf("ab", "abc") == pytest.approx(14 / 33)
    assert chrf("abc", "abc") == 1.0
    assert chrf("a b c", "abc") == 1.0  # whitespace is ignored
    assert chrf("", "") == 1.0 and chrf("", "abc") == 0.0 and chrf("xyz", "") == 0.0
    assert chrf("xyz", "abc") == 0.0
    # beta=2 weighs recall: a prediction covering the reference plus noise beats a fragment of equal F1
    assert chrf("the cat sat there today", "the cat sat") > chrf("the", "the cat sat")
    assert chrf("Abc", "abc") < 1.0  # case-sensitive
    with pytest.raises(ValueError, match="chrF needs n >= 1"):
        chrf("a", "a", n=0)


def test_rouge_l_on_a_hand_computed_case() -> None:
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is "the cat on the mat": 5 of 6 tokens each side
    assert rouge_l("the cat sat on the mat", "The cat is on the mat") == pytest.approx(5 / 6)
    # LCS 2 ("a c"), P = 2/2, R = 2/4: F1 = 2/3
    assert rouge_l("a c", "a b c d") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0 and rouge_l("x y", "z") == 0.0


def test_json_parsing_accepts_an_object_alone_or_fenced() -> None:
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object('The answer is {"a": 1}') is None
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object('{"a": ') is None


def test_extraction_metrics_on_hand_computed_cases() -> None:
    ref = '{"name": "Ann", "age": 30}'
    predictions = [
        '{"name": "ann", "age": 30.0}',  # both right (strings normalised, numbers by value)
        '```json\n{"name": "Ann"}\n```',  # name right, age missing
        "Name: Ann",  # not JSON: every field missed
        '{"name": "Bob", "age": 30, "extra": true}',  # age right; an extra key is not scored
    ]
    assert field_matches(predictions[1], ref) == {"name": True, "age": False}
    metrics = extraction_metrics(predictions, [ref] * 4)
    assert metrics["json_valid_rate"] == pytest.approx(3 / 4)
    assert metrics["field_accuracy"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert metrics["field:name"] == pytest.approx(2 / 4) and metrics["field:age"] == pytest.approx(2 / 4)
    assert metrics["exact_match"] == pytest.approx(1 / 4)
    # declared fields: only those are scored
    assert extraction_metrics(predictions, [ref] * 4, fields=["name"])["field_accuracy"] == pytest.approx(2 / 4)


def test_task_kinds_score_and_validate() -> None:
    extraction = EvalTask(kind="extraction")
    assert extraction.metric == "field_accuracy" and extraction.graded
    assert extraction.score('{"a": 1, "b": 2}', '{"a": 1, "b": 3}') == 0.5
    assert not extraction.correct('{"a": 1, "b": 2}', '{"a": 1, "b": 3}')
    examples = [
        EvalExample(example_index=0, messages=({"role": "user", "content": "x"},), reference='{"a": 1}'),
        EvalExample(example_index=1, messages=({"role": "user", "content": "y"},), reference='{"b": 2, "a": 0}'),
    ]
    assert extraction.with_fields_from(examples).fields == ["a", "b"]
    bad = [EvalExample(example_index=0, messages=({"role": "user", "content": "x"},), reference="not json")]
    with pytest.raises(ValueError, match="example 0: an extraction reference must be a JSON object"):
        extraction.check_examples(bad)

    free = EvalTask(kind="free_form")
    assert free.metric == "chrf" and free.score("ab", "abc") == pytest.approx(14 / 33)
    assert EvalTask(kind="free_form", free_form_metric="rouge_l").metric == "rouge_l"
    assert set(free.metrics(["ab"], ["abc"])) == {"chrf", "rouge_l", "exact_match", "n"}
    with pytest.raises(ValueError, match="fields"):
        EvalTask(kind="free_form", fields=["a"])
    assert EvalTask(kind="classification", labels=["a", "b"]).score("A.", "a") == 1.0
