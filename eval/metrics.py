"""Answer normalisation and the per-system metrics: exact match, accuracy, macro-F1, answers outside the set.

Everything here works on plain strings and booleans so it can be checked by hand on small vectors.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Any

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


# --- free-form answers: chrF and ROUGE-L ---------------------------------------------------------------------


def _char_ngrams(text: str, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(len(text) - n + 1):
        gram = text[i : i + n]
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def chrf(prediction: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (Popović 2015), in [0, 1].

    Whitespace is removed (as in the paper and sacrebleu's default); for each order 1..``n`` the clipped
    n-gram matches give a precision and a recall; both are averaged over the orders where the prediction or the
    reference has n-grams of that length, then combined as F-beta (beta=2: recall weighs twice as much).
    Two empty strings score 1.0; one empty string scores 0.0. Case-sensitive.
    """
    if n < 1 or beta <= 0:
        raise ValueError("chrF needs n >= 1 and beta > 0")
    hyp = "".join(prediction.split())
    ref = "".join(reference.split())
    if not hyp and not ref:
        return 1.0
    if not hyp or not ref:
        return 0.0
    precisions: list[float] = []
    recalls: list[float] = []
    for order in range(1, n + 1):
        h, r = _char_ngrams(hyp, order), _char_ngrams(ref, order)
        h_total, r_total = sum(h.values()), sum(r.values())
        if h_total == 0 and r_total == 0:
            continue
        matches = sum(min(count, r.get(gram, 0)) for gram, count in h.items())
        precisions.append(matches / h_total if h_total else 0.0)
        recalls.append(matches / r_total if r_total else 0.0)
    precision = sum(precisions) / len(precisions)
    recall = sum(recalls) / len(recalls)
    if precision == 0.0 and recall == 0.0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(previous[j] + 1 if x == y else max(previous[j + 1], row[j]))
        previous = row
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens after :func:`normalize_answer`-style casefolding, in [0, 1].

    Precision and recall are the longest common subsequence's length over each side's token count.
    Two empty answers score 1.0; one empty answer scores 0.0.
    """
    hyp = unicodedata.normalize("NFKC", prediction).casefold().split()
    ref = unicodedata.normalize("NFKC", reference).casefold().split()
    if not hyp and not ref:
        return 1.0
    if not hyp or not ref:
        return 0.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- structured extraction: JSON validity and per-field exact match -----------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object an answer contains, or None when it is not one.

    Accepts the object alone or inside one Markdown code fence (```json ... ```); anything else (prose around
    it, a list, a truncated object) is invalid: the task asked for a JSON object.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def reference_object(reference: str) -> dict[str, Any]:
    """An extraction reference as its JSON object (a clear error when it is not one)."""
    value = parse_json_object(reference)
    if value is None:
        raise ValueError(f"an extraction reference must be a JSON object, got {reference[:80]!r}")
    return value


def _canonical_value(value: Any) -> Any:
    if isinstance(value, str):
        return ("s", normalize_answer(value))
    if isinstance(value, bool) or value is None:
        return ("j", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    return ("j", json.dumps(value, sort_keys=True, ensure_ascii=False))


def field_matches(prediction: str, reference: str, fields: Sequence[str] | None = None) -> dict[str, bool]:
    """Per field: does the predicted JSON object give the reference's value?

    Fields are ``fields`` when given, else the reference's keys. Strings compare after
    :func:`normalize_answer`, numbers by value (3 == 3.0), anything else as canonical JSON. An answer that is
    not a JSON object misses every field; a field absent from the reference must be absent (or null) too.
    """
    ref = reference_object(reference)
    pred = parse_json_object(prediction)
    names = list(fields) if fields else list(ref)
    if pred is None:
        return dict.fromkeys(names, False)
    return {name: _canonical_value(pred.get(name)) == _canonical_value(ref.get(name)) for name in names}


def field_accuracy(prediction: str, reference: str, fields: Sequence[str] | None = None) -> float:
    """Share of the fields the answer got right (the per-example score of extraction tasks)."""
    matches = field_matches(prediction, reference, fields)
    if not matches:
        return 1.0 if parse_json_object(prediction) is not None else 0.0
    return sum(matches.values()) / len(matches)


def extraction_metrics(
    predictions: Sequence[str], references: Sequence[str], fields: Sequence[str] | None = None
) -> dict[str, float]:
    """JSON validity rate, mean field accuracy, all-fields exact match and per-field exact match (``field:NAME``)."""
    if not predictions:
        raise ValueError("extraction metrics of an empty sample are undefined")
    per_field: dict[str, list[bool]] = {}
    scores, exact, valid = [], [], []
    for p, r in zip(predictions, references, strict=True):
        matches = field_matches(p, r, fields)
        for name, ok in matches.items():
            per_field.setdefault(name, []).append(ok)
        scores.append(field_accuracy(p, r, fields))
        exact.append(all(matches.values()) and parse_json_object(p) is not None)
        valid.append(parse_json_object(p) is not None)
    metrics = {
        "field_accuracy": accuracy(scores),
        "exact_match": accuracy(exact),
        "json_valid_rate": accuracy(valid),
        "n": float(len(predictions)),
    }
    for name, oks in sorted(per_field.items()):
        metrics[f"field:{name}"] = accuracy(oks)
    return metrics


def free_form_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean chrF, mean ROUGE-L and normalised exact match of free-form answers."""
    pairs = list(zip(predictions, references, strict=True))
    if not pairs:
        raise ValueError("free-form metrics of an empty sample are undefined")
    return {
        "chrf": accuracy([chrf(p, r) for p, r in pairs]),
        "rouge_l": accuracy([rouge_l(p, r) for p, r in pairs]),
        "exact_match": accuracy([exact_match(p, r) for p, r in pairs]),
        "n": float(len(pairs)),
    }
