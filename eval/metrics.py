"""Answer normalisation and the per-system metrics: exact match, accuracy, macro-F1, answers outside the set.

Everything here works on plain strings and booleans so it can be checked by hand on small vectors.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

# Punctuation trimmed at either end of an answer ("refund." == "refund"); inner punctuation is kept because
# it can be part of a label ("card_payment_fee_charged" after separators are unified, "v1.2").
_EDGE_CHARS = string.punctuation + string.whitespace + "“”‘’«»…"
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_answer(text: str) -> str:
    """Canonical form for comparing answers.

    NFKC, casefold, strip whitespace and punctuation at both ends, and treat runs of ``_``, ``-`` and
    whitespace as one space, so "Card_Lost." == "card lost" == "card-lost".
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _SEPARATORS.sub(" ", text)
    return text.strip(_EDGE_CHARS).strip()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def accuracy(correct: Sequence[bool | float]) -> float:
    """Mean of per-example scores (booleans count as 0/1)."""
    if not correct:
        raise ValueError("accuracy of an empty list is undefined")
    return float(sum(float(c) for c in correct)) / len(correct)


def match_label(prediction: str, labels: Sequence[str]) -> str | None:
    """The label ``prediction`` names after normalisation, or None when it names none of them."""
    wanted = normalize_answer(prediction)
    for label in labels:
        if normalize_answer(label) == wanted:
            return label
    return None


def count_outside_labels(predictions: Sequence[str], labels: Sequence[str]) -> int:
    """How many predictions name no label of the set (the model answered something else)."""
    known = {normalize_answer(label) for label in labels}
    return sum(1 for p in predictions if normalize_answer(p) not in known)


def macro_f1(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over the label set.

    A prediction outside the set is a miss for its reference's label and a false positive for no label.
    Labels that are neither referenced nor predicted in this sample are left out of the mean: their F1 is
    0/0 and says nothing about the system. A label with precision and recall both 0 counts as F1 = 0.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    canon = {normalize_answer(label): label for label in labels}
    true_pos = dict.fromkeys(canon, 0)
    pred_count = dict.fromkeys(canon, 0)
    ref_count = dict.fromkeys(canon, 0)
    for prediction, reference in zip(predictions, references, strict=True):
        p, r = normalize_answer(prediction), normalize_answer(reference)
        if r not in canon:
            raise ValueError(f"reference {reference!r} is not in the label set")
        ref_count[r] += 1
        if p in canon:
            pred_count[p] += 1
            if p == r:
                true_pos[p] += 1
    scores = []
    for key in canon:
        if ref_count[key] == 0 and pred_count[key] == 0:
            continue
        denominator = pred_count[key] + ref_count[key]
        scores.append(2.0 * true_pos[key] / denominator)  # F1 = 2TP / (2TP + FP + FN)
    if not scores:
        raise ValueError("macro-F1 of an empty sample is undefined")
    return sum(scores) / len(scores)


def system_metrics(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None
) -> dict[str, float]:
    """The metrics reported for one system: accuracy always; macro-F1 and out-of-label for label sets."""
    correct = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    metrics: dict[str, float] = {"accuracy": accuracy(correct), "n": float(len(correct))}
    if labels:
        metrics["macro_f1"] = macro_f1(predictions, references, labels)
        outside = count_outside_labels(predictions, labels)
        metrics["out_of_label"] = float(outside)
        metrics["out_of_label_rate"] = outside / len(predictions)
    return metrics
