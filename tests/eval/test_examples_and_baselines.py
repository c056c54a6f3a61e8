from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from eval.baselines import few_shot_messages, select_shots, task_instruction, zero_shot_messages
from eval.examples import EvalExample, EvalTask, eval_set_hash
from eval.metrics import normalize_answer
from schemas.records import Message, Record
from tests.eval.conftest import LABELS, labelled_examples


def test_example_rejects_a_prompt_ending_with_the_answer() -> None:
    with pytest.raises(ValidationError, match="assistant"):
        EvalExample(
            example_index=0,
            messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}),
            reference="x",
        )


def test_example_from_record_uses_label_or_final_answer() -> None:
    msgs = [Message(role="user", content="Where is my card?"), Message(role="assistant", content="card_lost")]
    record = Record.from_messages(msgs, label="card_lost")
    example = EvalExample.from_record(record, 3)
    assert example.messages == ({"role": "user", "content": "Where is my card?"},)
    assert example.reference == "card_lost" and example.record_id == record.record_id


def test_task_validation() -> None:
    with pytest.raises(ValidationError, match="label set"):
        EvalTask(kind="classification")
    with pytest.raises(ValidationError, match="equal after normalisation"):
        EvalTask(kind="classification", labels=["card_lost", "Card lost"])
    with pytest.raises(ValidationError, match="only meaningful for classification"):
        EvalTask(kind="free_form", labels=["a"])
    assert EvalTask(kind="exact_match").metric == "exact_match"


def test_eval_set_hash_depends_on_content_and_order() -> None:
    examples = labelled_examples(per_label=2)
    assert eval_set_hash(examples) == eval_set_hash(labelled_examples(per_label=2))
    assert eval_set_hash(examples) != eval_set_hash(list(reversed(examples)))
    changed = [*examples[:-1], examples[-1].model_copy(update={"reference": "card_lost"})]
    assert eval_set_hash(changed) != eval_set_hash(examples)


def test_zero_shot_prompt_lists_every_label_and_keeps_the_example() -> None:
    task = EvalTask(kind="classification", labels=LABELS)
    example = labelled_examples(per_label=1)[0]
    messages = zero_shot_messages(example, task)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(label in messages[0]["content"] for label in LABELS)
    assert messages[0]["content"].endswith("written exactly as in the list, and nothing else.")
    assert messages[1:] == example.messages_as_list()
    system = {"role": "system", "content": "Be brief."}
    with_system = example.model_copy(update={"messages": (system, *example.messages)})
    merged = zero_shot_messages(with_system, task)
    assert [m["role"] for m in merged] == ["system", "user"]  # one system turn: instruction, then its own
    assert merged[0]["content"].startswith(task_instruction(task)) and merged[0]["content"].endswith("Be brief.")


def test_few_shot_turns_precede_the_example() -> None:
    task = EvalTask(kind="classification", labels=LABELS)
    example = labelled_examples(per_label=1)[0]
    shots = labelled_examples(per_label=2, offset=2)[:2]
    messages = few_shot_messages(example, shots, task)
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == shots[0].reference
    assert messages[-1] == example.messages_as_list()[-1]


def test_shot_draw_is_deterministic_stratified_and_excludes_eval_examples() -> None:
    task = EvalTask(kind="classification", labels=LABELS)
    pool = labelled_examples(per_label=5)
    evaluated = pool[:3]  # one query of each label is also an eval example
    shots = select_shots(pool, 3, seed=0, task=task, exclude=evaluated)
    assert sorted(normalize_answer(s.reference) for s in shots) == sorted(normalize_answer(x) for x in LABELS)
    assert not {s.record_id for s in shots} & {e.record_id for e in evaluated}

    shuffled = list(pool)
    random.Random(4).shuffle(shuffled)
    assert select_shots(shuffled, 3, seed=0, task=task, exclude=evaluated) == shots  # pool order is irrelevant

    five = select_shots(pool, 5, seed=0, task=task)
    counts = {label: sum(s.reference == label for s in five) for label in LABELS}
    assert min(counts.values()) >= 1 and max(counts.values()) <= 2
    draws = {tuple(s.record_id for s in select_shots(pool, 3, seed=seed, task=task)) for seed in range(6)}
    assert len(draws) > 1  # the seed changes the draw
    assert len(select_shots(pool, 100, seed=0, task=task)) == len(pool)


def test_shot_draw_without_labels_takes_hash_order() -> None:
    pool = labelled_examples(per_label=3)
    shots = select_shots(pool, 4, seed=1)
    assert len(shots) == 4 and shots == select_shots(list(reversed(pool)), 4, seed=1)
