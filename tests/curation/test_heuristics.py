"""Heuristic checks on planted-defect records: exactly the planted records are flagged, with defined scores on
odd input (empty fields, a 1 MB response, non-English text, a single record)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from curation.checks.empty_response import check_empty_response
from curation.checks.length import check_length
from curation.checks.refusal import check_refusal
from curation.checks.repetitive import check_repetitive
from curation.checks.spec import CheckContext, CheckOutput, ScanRecord
from curation.checks.truncated import check_truncated, truncation_signals
from curation.similarity.exact import KeepRank

CHECKS: dict[str, Callable[..., CheckOutput]] = {
    "empty_response": check_empty_response,
    "truncated": check_truncated,
    "repetitive": check_repetitive,
    "length": check_length,
    "refusal": check_refusal,
}
NORMAL = (
    "Paris is the capital of France. It lies on the Seine and has been the country's capital for centuries. "
    "It is known for its museums and its food."
)


def rec(rid: str, response: str, prompt: str = "Tell me something.") -> ScanRecord:
    return ScanRecord(rid, prompt, response, None, KeepRank(1, 0.0, ("t", 0, 0), rid))


def planted() -> list[ScanRecord]:
    records = [rec(f"ok_{i:02d}", NORMAL.replace("Paris", f"City {i}")) for i in range(30)]
    records += [
        rec("label", "card_arrival"),
        rec("short_answer", "Yes."),
        rec("prompt_only", ""),
        rec("blank", " \u200b "),
        rec("fence", "Here is the code:\n```python\ndef f(x):\n    return x +"),
        rec("connector", "The three main causes were the economy, the war, and"),
        rec("comma", "First you open the box, then you take out the device, then you plug it in,"),
        rec("json", 'The result is {"name": "Ada", "items": [1, 2, 3'),
        rec("loop", "\n".join(["I am happy to help you with that today."] * 12)),
        rec("ngram_loop", " ".join(["the cat sat on the mat"] * 20)),
        rec("refusal", "I'm sorry, but I cannot help with that request."),
        rec("disclaimer", "As an AI language model, I do not have personal opinions. " + NORMAL),
        rec("idiom", "I am like a moth to a flame; I can't help but be drawn to her."),
        rec("essay", " ".join(f"Sentence number {i} talks about topic {7 * i} in detail." for i in range(120))),
    ]
    return records


def flagged(name: str, records: list[ScanRecord]) -> set[str]:
    out = CHECKS[name](records, CheckContext())
    assert [f.record_id for f in out.findings] == [r.record_id for r in records]
    assert all(0.0 <= f.score <= 1.0 for f in out.findings)
    assert all(f.reason for f in out.findings if f.flagged)
    return {f.record_id for f in out.findings if f.flagged}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("empty_response", {"prompt_only", "blank"}),
        ("truncated", {"fence", "connector", "comma", "json"}),
        ("repetitive", {"loop", "ngram_loop"}),
        ("refusal", {"refusal", "disclaimer"}),
    ],
)
def test_each_check_flags_exactly_the_planted_records(name: str, expected: set[str]) -> None:
    assert flagged(name, planted()) == expected


def test_length_flags_both_tails_against_the_dataset_distribution() -> None:
    records = planted()
    out = check_length(records, CheckContext())
    by_id = {f.record_id: f for f in out.findings}
    assert {"essay", "label", "short_answer"} <= {f.record_id for f in out.findings if f.flagged}
    assert by_id["essay"].reason is not None and "too long" in by_id["essay"].reason
    assert by_id["label"].reason is not None and "too short" in by_id["label"].reason
    assert not any(by_id[f"ok_{i:02d}"].flagged for i in range(30))
    assert by_id["prompt_only"].details == {"skipped": "empty response (see empty_response)"}


def test_length_does_not_flag_a_third_of_the_dataset() -> None:
    """A mode of short replies (sharegpt's 'You too!') is not an outlier: the rarity rule."""
    records = [rec(f"ok_{i}", NORMAL) for i in range(20)] + [rec(f"short_{i}", "You too!") for i in range(10)]
    assert flagged("length", records) == set()


def test_truncation_ignores_labels_short_answers_and_closed_code() -> None:
    assert truncation_signals("card_arrival") == []
    assert truncation_signals("Yes, and") == []
    assert truncation_signals("") == []
    assert truncation_signals("Use this:\n```\nprint(1)\n```") == []
    assert truncation_signals("console.log(currentDateTime);\nvar x = new Date();\nvar y = 2;") == []
    assert truncation_signals("We went to the market and bought apples, pears and") == ["ends with a connector word"]


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_odd_input_gives_defined_scores(name: str) -> None:
    records = [
        rec("empty_both", "", prompt=""),
        rec("huge", "word " * 200_000 + "end."),  # about 1 MB
        rec("chinese", "巴黎是法国的首都。它位于塞纳河畔，以博物馆和美食闻名。"),
        rec("arabic", "باريس هي عاصمة فرنسا، وتقع على نهر السين."),
        rec("emoji", "🎉🎉🎉 👍"),
    ]
    out = CHECKS[name](records, CheckContext())
    assert len(out.findings) == len(records)
    assert all(0.0 <= f.score <= 1.0 for f in out.findings)
    assert isinstance(out.summary, dict)
    huge = next(f for f in out.findings if f.record_id == "huge")
    if name == "repetitive":
        assert huge.flagged  # 'word word word ...' is one repeated 5-gram


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_single_record_is_scored(name: str) -> None:
    out = CHECKS[name]([rec("only", NORMAL)], CheckContext())
    assert [(f.record_id, f.flagged) for f in out.findings] == [("only", False)]
    if name == "length":
        assert "fewer than 20 non-empty responses" in out.summary["skipped"]
