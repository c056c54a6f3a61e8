"""Assistant-only labels, the collator and the length-grouped sampler, on the tiny model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.formatting import (
    IGNORE_INDEX,
    FormattingError,
    LengthGroupedBatchSampler,
    PaddingCollator,
    TokenizedExample,
    format_conversations,
    padding_fraction,
    tokenize_conversation,
)

CONVERSATION = [
    {"role": "system", "content": "Classify the customer message."},
    {"role": "user", "content": "Where is my card?"},
    {"role": "assistant", "content": "card_lost"},
    {"role": "user", "content": "How do I reset my password?"},
    {"role": "assistant", "content": "password_reset"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _unmasked_runs(example: TokenizedExample) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return runs


def test_labels_cover_exactly_the_assistant_turns_and_their_end_token(tokenizer) -> None:
    example = tokenize_conversation(tokenizer, CONVERSATION)
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full
    runs = [tokenizer.decode(run) for run in _unmasked_runs(example)]
    assert runs == ["card_lost<|im_end|>", "password_reset<|im_end|>"]
    masked = tokenizer.decode(
        [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == IGNORE_INDEX]
    )
    assert "Where is my card?" in masked and "Classify the customer message." in masked
    assert "card_lost" not in masked and "<|im_start|>assistant\n" in masked


def test_system_prompt_is_added_only_when_missing(tokenizer) -> None:
    plain = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
    with_system = tokenize_conversation(tokenizer, plain, system_prompt="Be brief.")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in tokenizer.decode(with_system.input_ids)
    kept = tokenize_conversation(tokenizer, CONVERSATION, system_prompt="Be brief.")
    assert "Be brief." not in tokenizer.decode(kept.input_ids)


def test_overlength_is_truncated_from_the_left_or_dropped_and_counted(tokenizer) -> None:
    full = tokenize_conversation(tokenizer, CONVERSATION)
    short = tokenize_conversation(tokenizer, CONVERSATION, max_length=len(full.input_ids) - 5)
    assert short.truncated and short.input_ids == full.input_ids[5:] and short.labels == full.labels[5:]
    with pytest.raises(FormattingError) as info:
        tokenize_conversation(tokenizer, CONVERSATION, max_length=len(full.input_ids) - 5, overlength="drop")
    assert info.value.reason == "too_long"
    last_answer_start = max(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    while full.labels[last_answer_start - 1] != IGNORE_INDEX:
        last_answer_start -= 1
    # keeping the last tokens would cut into the last answer
    with pytest.raises(FormattingError, match="the last assistant turn alone exceeds max_length") as cut:
        tokenize_conversation(tokenizer, CONVERSATION, max_length=len(full.input_ids) - last_answer_start - 1)
    assert cut.value.reason == "too_long"
    result = format_conversations(
        tokenizer,
        [CONVERSATION, CONVERSATION[:2], [{"role": "assistant", "content": 3}]],
        max_length=len(full.input_ids) - 5,
    )
    assert len(result.examples) == 1 and result.truncated == 1
    assert result.dropped == {"no_assistant_turn": 1, "bad_message": 1}


def test_collator_pads_right_with_masked_labels() -> None:
    batch = PaddingCollator(pad_token_id=0)([TokenizedExample([5, 6, 7], [-100, 6, 7]), TokenizedExample([8], [8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_length_grouped_batches_waste_little_padding_and_are_seeded() -> None:
    import random

    rng = random.Random(1)
    lengths = [rng.randint(10, 400) for _ in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3)
    batches = sampler.batches(epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert padding_fraction(batches, lengths) < 0.03
    plain = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3, group_by_length=False).batches(0)
    assert padding_fraction(plain, lengths) > 0.3
    assert batches == LengthGroupedBatchSampler(lengths, batch_size=8, seed=3).batches(epoch=0)
    assert batches != sampler.batches(epoch=1)
    assert batches != LengthGroupedBatchSampler(lengths, batch_size=8, seed=4).batches(epoch=0)
    assert len(sampler) == len(batches) == 125
