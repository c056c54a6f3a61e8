from __future__ import annotations

import pytest

from eval.metrics import (
    accuracy,
    count_outside_labels,
    exact_match,
    macro_f1,
    match_label,
    normalize_answer,
    system_metrics,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Card_Lost", "card lost"),
        ("  card-lost.  ", "card lost"),
        ("card   lost", "card lost"),
        ("CARD__LOST!", "card lost"),
        ('"refund_request"', "refund request"),
        ("v1.2", "v1.2"),  # inner punctuation is kept
        ("Straße", "strasse"),  # casefold, not lower
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_exact_match_and_accuracy() -> None:
    assert exact_match("Refund request.", "refund_request")
    assert not exact_match("refund", "refund_request")
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([1.0, 0.5]) == 0.75
    with pytest.raises(ValueError, match="accuracy of an empty list is undefined"):
        accuracy([])


def test_macro_f1_matches_hand_computation() -> None:
    labels = ["a", "b", "c"]
    refs = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", "something else", "C"]
    # a: TP 1, predicted 1, true 2 -> F1 = 2*1/(1+2) = 2/3
    # b: TP 1, predicted 2, true 2 -> F1 = 2*1/(2+2) = 1/2
    # c: TP 1, predicted 1, true 1 -> F1 = 1
    assert macro_f1(preds, refs, labels) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_macro_f1_skips_labels_absent_from_sample_but_counts_false_positives() -> None:
    labels = ["a", "b", "c"]
    # c is never referenced nor predicted: left out; b is predicted but never true: F1 0.
    assert macro_f1(["a", "b"], ["a", "a"], labels) == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro_f1(["a", "b"], ["a", "b"], labels) == 1.0
    with pytest.raises(ValueError, match="not in the label set"):
        macro_f1(["a"], ["zzz"], labels)


def test_outside_label_count_and_match() -> None:
    labels = ["card_lost", "refund_request"]
    preds = ["Card lost", "refund-request.", "I think it is a refund", ""]
    assert count_outside_labels(preds, labels) == 2
    assert match_label("REFUND REQUEST", labels) == "refund_request"
    assert match_label("refund", labels) is None


def test_system_metrics() -> None:
    m = system_metrics(["a", "x", "b"], ["a", "b", "b"], ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["out_of_label"] == 1
    assert "macro_f1" in m
    assert "macro_f1" not in system_metrics(["a"], ["a"], None)
