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


@pytest.mark.slow
def test_generation_with_the_stop_scores_exactly_as_without(chatty_model_dir, tiny_adapter_dir) -> None:
    """The chatty tiny model answers in noise: every answer stops early, each is a prefix of the full answer, and
    right/wrong is the same for every example and every system."""
    from eval.baselines import zero_shot_messages
    from eval.examples import EvalTask
    from eval.generation import generate_greedy, load_model
    from tests.eval.conftest import LABELS, labelled_examples

    task = EvalTask(kind="classification", labels=LABELS)
    examples = labelled_examples(per_label=3)
    model, tokenizer = load_model(chatty_model_dir, tiny_adapter_dir)
    for convs in ([e.messages_as_list() for e in examples], [zero_shot_messages(e, task) for e in examples]):
        full = generate_greedy(model, tokenizer, convs, max_new_tokens=12, batch_size=4)
        stopped = generate_greedy(model, tokenizer, convs, max_new_tokens=12, batch_size=4, labels=LABELS)
        assert all(f.startswith(s) for f, s in zip(full, stopped, strict=True))
        assert sum(len(s) for s in stopped) < sum(len(f) for f in full)  # noise stops early
        for e, f, s in zip(examples, full, stopped, strict=True):
            assert task.correct(s, e.reference) == task.correct(f, e.reference)
