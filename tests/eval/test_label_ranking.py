"""Label ranking: contextual calibration, and the pruned trie search against full scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.generation import label_loglikelihoods, load_model
from eval.label_ranking import (
    CONTENT_FREE_INPUTS,
    Calibration,
    RankingStats,
    calibrated_label_scores,
    content_free_conversations,
    label_loglikelihood_ranking,
    label_offsets,
)
from tests.eval.conftest import LABELS

# Labels sharing leading tokens share trie nodes; "card" and "card_l" are prefixes of other labels.
_LABELS = [*LABELS, "other", "card_lost_abroad", "card_linking", "card", "refund_request_not_showing", "card_l"]


def _conversations(n: int = 24) -> list[list[dict[str, str]]]:
    system = {"role": "system", "content": "Classify the message. Labels: " + ", ".join(_LABELS)}
    convs = []
    for i in range(n):
        turns = [system, {"role": "user", "content": "Where is my card? " * (i % 5 + 1) + f"number {i}"}]
        if i % 7 == 0:  # a second frame (other system turn) and a multi-turn dialogue
            turns = [
                {"role": "system", "content": "You are a bank assistant."},
                turns[1],
                {"role": "assistant", "content": "Let me check."},
                {"role": "user", "content": "Thanks!" * (i + 1)},
            ]
        convs.append(turns)
    return convs


def test_content_free_prompts_keep_each_frame_and_replace_the_dialogue() -> None:
    convs = _conversations(8)
    prompts, frame_of = content_free_conversations(convs)
    assert frame_of == [0, 1, 1, 1, 1, 1, 1, 0]
    assert len(prompts) == 2 * len(CONTENT_FREE_INPUTS)
    for frame, conv in ((0, convs[0]), (1, convs[1])):
        for k, text in enumerate(CONTENT_FREE_INPUTS):
            prompt = prompts[frame * len(CONTENT_FREE_INPUTS) + k]
            assert prompt == [conv[0], {"role": "user", "content": text}]


def test_contextual_offsets_average_label_normalised_probabilities(chatty_model_dir: Path) -> None:
    model, tokenizer = load_model(chatty_model_dir)
    convs = _conversations(8)
    offsets = label_offsets(model, tokenizer, convs, _LABELS, "contextual")
    prompts, frame_of = content_free_conversations(convs)
    raw = label_loglikelihoods(model, tokenizer, prompts, _LABELS).reshape(2, len(CONTENT_FREE_INPUTS), -1)
    probs = np.exp(raw) / np.exp(raw).sum(axis=2, keepdims=True)
    expected = np.log(probs.mean(axis=1))[frame_of]
    assert offsets.shape == (len(convs), len(_LABELS))
    assert np.allclose(offsets, expected, atol=1e-9)
    assert np.allclose(np.exp(offsets).sum(axis=1), 1.0)  # a distribution over the label set, per frame
    assert not np.allclose(offsets[0], offsets[1])
    assert (label_offsets(model, tokenizer, convs, _LABELS, "none") == 0).all()
    with pytest.raises(ValueError, match="unknown calibration"):
        label_offsets(model, tokenizer, convs, _LABELS, "platt")  # type: ignore[arg-type]


_CALIBRATIONS: list[Calibration] = ["none", "contextual"]


@pytest.mark.parametrize("calibration", _CALIBRATIONS)
@pytest.mark.parametrize("frames", [1, 2])
def test_pruned_search_gives_the_argmax_of_full_scoring(
    chatty_model_dir: Path, calibration: Calibration, frames: int
) -> None:
    """One frame: the prompts share a long prefix, read through the shared-prefix attention; two frames: no
    shared prefix. The search must pick full scoring's argmax whatever the number of queries searched together
    (1: wide speculative steps; 3: queries leave the batch at different steps; 32: all together)."""
    model, tokenizer = load_model(chatty_model_dir)
    convs = [c for c in _conversations(28) if frames == 2 or c[0]["content"].startswith("Classify")]
    full = calibrated_label_scores(model, tokenizer, convs, _LABELS, calibration)
    offsets = label_offsets(model, tokenizer, convs, _LABELS, calibration)
    assert np.allclose(full, label_loglikelihoods(model, tokenizer, convs, _LABELS) - offsets)
    expected = [_LABELS[int(row.argmax())] for row in full]
    for rows in (1, 3, 32):
        stats = RankingStats()
        ranked = label_loglikelihood_ranking(
            model, tokenizer, convs, _LABELS, calibration=calibration, search_rows=rows, stats=stats
        )
        assert ranked == expected, (calibration, rows)
        assert stats.queries == len(convs) and 0 < stats.nodes_fed <= stats.queries * stats.trie_nodes
    if calibration == "contextual":
        assert len(set(expected)) > 2, "calibration should spread the answers over several labels"


def test_pruned_search_feeds_less_than_the_whole_trie(chatty_model_dir: Path) -> None:
    """Uncalibrated, the search stops once no open prefix is more likely than the best complete label."""
    model, tokenizer = load_model(chatty_model_dir)
    stats = RankingStats()
    convs = _conversations(12)
    label_loglikelihood_ranking(model, tokenizer, convs, _LABELS, calibration="none", search_rows=12, stats=stats)
    assert stats.fed_share < 1.0


def test_shared_prefix_attention_matches_the_plain_forward_pass(chatty_model_dir: Path) -> None:
    """The prefix run once (batch 1), each row's own tokens attending to it through the combined softmax,
    gives the logits of the whole sequence run the ordinary way."""
    import torch

    from eval.generation import _encode, _shared_prefix, render_prompts
    from eval.label_ranking import _prefix_attention, _suffix_pass

    model, tokenizer = load_model(chatty_model_dir)
    convs = [c for c in _conversations(10) if c[0]["content"].startswith("Classify")]
    encoded = _encode(tokenizer, render_prompts(tokenizer, convs))
    with torch.inference_mode():
        prefix = _shared_prefix(model, encoded, 16)
        assert prefix.length >= 16
        with _prefix_attention(model, prefix.cache):
            first, _, _ = _suffix_pass(model, [e[prefix.length :] for e in encoded], prefix.length, 0)
        assert model.config._attn_implementation == "sdpa"  # restored
        for row, ids in enumerate(encoded):
            plain = model(input_ids=torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
            assert torch.allclose(first[row], plain, atol=1e-4)


def test_ranking_entry_point_is_still_importable_from_generation() -> None:
    from eval import generation

    assert generation.label_loglikelihood_ranking is label_loglikelihood_ranking
    with pytest.raises(AttributeError):
        _ = generation.no_such_name


def test_eval_config_calibration_defaults_to_contextual_and_enters_the_eval_id() -> None:
    from eval.runner import EvalConfig

    config = EvalConfig()
    assert config.ranking_calibration == "contextual"
    assert config.model_dump(mode="json")["ranking_calibration"] == "contextual"
    assert EvalConfig(ranking_calibration="none").model_dump() != config.model_dump()
    with pytest.raises(ValueError):
        EvalConfig(ranking_calibration="platt")
