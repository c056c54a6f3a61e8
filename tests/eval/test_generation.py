from __future__ import annotations

from pathlib import Path

import pytest

from eval.generation import (
    generate_greedy,
    generate_one_by_one,
    label_loglikelihoods,
    load_model,
    render_prompts,
)
from eval.label_ranking import label_loglikelihood_ranking
from tests.eval.conftest import LABELS


def _conversations() -> list[list[dict[str, str]]]:
    convs = []
    for i in range(12):
        turns = [{"role": "user", "content": "Where is my card? " * (i % 5 + 1) + f"number {i}"}]
        if i % 3 == 0:  # multi-turn and system prompts: lengths vary a lot within a batch
            turns = [
                {"role": "system", "content": "You are a bank assistant."},
                *turns,
                {"role": "assistant", "content": "Let me check."},
                {"role": "user", "content": "Thanks!" * (i + 1)},
            ]
        convs.append(turns)
    return convs


def test_batched_generation_equals_one_by_one(chatty_model_dir: Path) -> None:
    model, tokenizer = load_model(chatty_model_dir)
    convs = _conversations()
    reference = generate_one_by_one(model, tokenizer, convs, max_new_tokens=12)
    assert len({len(a) for a in reference}) > 3, "the fixture model should give answers of varied length"
    assert generate_greedy(model, tokenizer, convs, max_new_tokens=12, batch_size=5) == reference
    assert generate_greedy(model, tokenizer, convs[::-1], max_new_tokens=12, batch_size=4) == reference[::-1]


def test_shared_prefix_reuse_gives_the_same_answers(chatty_model_dir: Path, tiny_adapter_dir: Path) -> None:
    from eval.baselines import few_shot_messages
    from eval.examples import EvalTask
    from tests.eval.conftest import labelled_examples

    task = EvalTask(kind="classification", labels=LABELS)
    shots = labelled_examples(start_index=50, per_label=1, offset=3)
    convs = [few_shot_messages(e, shots, task) for e in labelled_examples(per_label=3)]
    for adapter in (None, tiny_adapter_dir):  # peft's generate() must accept the prefilled cache too
        model, tokenizer = load_model(chatty_model_dir, adapter)
        reference = generate_one_by_one(model, tokenizer, convs, max_new_tokens=10)
        assert generate_greedy(model, tokenizer, convs, 10, batch_size=4) == reference
        assert generate_greedy(model, tokenizer, convs, 10, batch_size=4, min_shared_prefix=0) == reference
    with_prefix = label_loglikelihoods(model, tokenizer, convs, LABELS, batch_size=3)
    without = label_loglikelihoods(model, tokenizer, convs, LABELS, batch_size=3, min_shared_prefix=0)
    assert abs(with_prefix - without).max() < 1e-3


def test_generation_without_a_pad_token_falls_back_to_eos(chatty_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from eval.generation import prepare_tokenizer

    model, _ = load_model(chatty_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(chatty_model_dir)
    tokenizer.pad_token = None
    prepare_tokenizer(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    convs = _conversations()[:6]
    assert generate_greedy(model, tokenizer, convs, 8, batch_size=6) == generate_one_by_one(model, tokenizer, convs, 8)


def test_label_ranking_matches_full_sequence_loglikelihood(chatty_model_dir: Path) -> None:
    import torch

    model, tokenizer = load_model(chatty_model_dir)
    convs = _conversations()[:5]
    # labels sharing leading tokens share nodes of the label trie; one label is a prefix of another
    labels = [*LABELS, "other", "card_lost_abroad", "card_linking", "card", "refund_request_not_showing"]
    scores = label_loglikelihoods(model, tokenizer, convs, labels, batch_size=2)
    assert abs(scores - label_loglikelihoods(model, tokenizer, convs, labels, batch_size=5)).max() < 1e-4
    eos = tokenizer.eos_token_id
    for c, prompt in enumerate(render_prompts(tokenizer, convs)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, label in enumerate(labels):
            label_ids = [*tokenizer(label, add_special_tokens=False)["input_ids"], eos]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([prompt_ids + label_ids])).logits[0].log_softmax(-1)
            expected = sum(logp[len(prompt_ids) - 1 + t, tok].item() for t, tok in enumerate(label_ids))
            assert scores[c, j] == pytest.approx(expected, abs=1e-3)
    ranked = label_loglikelihood_ranking(model, tokenizer, convs, labels, calibration="none")
    assert all(answer in labels for answer in ranked)
    assert ranked == [labels[int(row.argmax())] for row in scores]


def test_load_model_refuses_pickled_adapters(chatty_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(chatty_model_dir, tmp_path)
