"""Stopping a classification answer once it cannot name a label: the rule, and that no score changes."""

from __future__ import annotations

import pytest

from eval.answer_stop import can_still_name_a_label
from eval.metrics import normalize_answer

LABELS = [normalize_answer(label) for label in ("card_arrival", "card_linking", "top_up_failed", "Refund")]


@pytest.mark.parametrize(
    ("text", "alive"),
    [
        ("", True),
        ("c", True),
        ("card_", True),  # a separator at the end is still on the way to "card arrival"
        ("Card-Ar", True),  # case and separators are normalised as the score normalises them
        ("card_arrival", True),
        ("card_arrival.", True),  # trailing punctuation is stripped by the score too
        ("  top up f", True),
        ("refund", True),
        ("I'm", False),  # prose: no label starts with "i'"
        ("card_xy", False),  # the last character may still change, so a wrong one stops a character later
        ("card_arrival please", False),
        ("Sure! The", False),
    ],
)
def test_an_answer_stays_alive_while_it_can_still_grow_into_a_label(text: str, alive: bool) -> None:
    assert can_still_name_a_label(text, LABELS) is alive


def test_a_stopped_answer_could_never_have_scored() -> None:
    # every continuation of a stopped prefix normalises to something that is not a label
    for stopped in ("I'm", "card_xy", "Sure! The"):
        assert not can_still_name_a_label(stopped, LABELS)
        for tail in ("", "d", "_arrival", " card_arrival", "."):
            assert normalize_answer(stopped + tail) not in LABELS
