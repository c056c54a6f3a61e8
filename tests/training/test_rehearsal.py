"""Rehearsal: the shipped general conversations, the mixing rule, and what a run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import TrainConfig, load_train_config
from training.recipe import train_lora
from training.rehearsal import (
    SHIPPED_SHA256,
    RehearsalSetError,
    draw_rehearsal,
    general_count,
    load_rehearsal_set,
)


def test_the_shipped_set_loads_verified() -> None:
    conversations, name, digest = load_rehearsal_set()
    assert len(conversations) == 300 and name == "refinery:rehearsal.jsonl" and digest == SHIPPED_SHA256
    assert all(c[-1]["role"] == "assistant" and c[-1]["content"].strip() for c in conversations)
    assert all(c[0]["role"] == "user" for c in conversations)


def test_a_damaged_shipped_set_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.rehearsal as rehearsal

    monkeypatch.setattr(rehearsal, "SHIPPED_SHA256", "0" * 64)
    with pytest.raises(RehearsalSetError, match=r"is damaged .* reinstall Refinery"):
        load_rehearsal_set()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', r"own\.jsonl:1: expected"),
        ('{"prompt": "a", "response": "b"}\n', r"own\.jsonl:1: expected"),
        ("{not json\n", r"own\.jsonl:1: not JSON"),
        ("\n", "has no conversations"),
    ],
)
def test_an_unusable_own_set_is_refused_with_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "own.jsonl"
    path.write_text(body)
    with pytest.raises(RehearsalSetError, match=message):
        load_rehearsal_set(path)
    with pytest.raises(RehearsalSetError, match=r"missing\.jsonl does not exist"):
        load_rehearsal_set(tmp_path / "missing.jsonl")


def test_the_share_is_of_the_mixed_set() -> None:
    assert general_count(0.1, 900) == 100  # 100 of 1,000
    assert general_count(0.2, 800) == 200
    assert general_count(0.0, 5000) == 0
    with pytest.raises(ValueError, match="share"):
        general_count(1.0, 10)


def test_the_draw_is_seeded_and_repeats_only_after_a_full_pass() -> None:
    general, mix = draw_rehearsal(3600, 0.1, seed=0)  # 0.1 share of 4,000: 400 general, more than the 300
    again, _ = draw_rehearsal(3600, 0.1, seed=0)
    other, _ = draw_rehearsal(3600, 0.1, seed=1)
    assert general == again and general != other and len(general) == 400
    first_pass = [json.dumps(c) for c in general[:300]]
    assert len(set(first_pass)) == 300  # every shipped conversation once before any repeats
    assert mix.general_conversations == 400 and mix.unique_general == 300 and mix.task_conversations == 3600
    assert mix.eligible_general == 300
    assert mix.sha256 == SHIPPED_SHA256 and mix.source == "refinery:rehearsal.jsonl"
    none, off = draw_rehearsal(5000, 0.0, seed=0)
    assert none == [] and off.general_conversations == 0 and off.sha256 is None


def test_only_conversations_that_fit_are_drawn() -> None:
    short = lambda c: sum(len(m["content"]) for m in c) < 300  # noqa: E731
    general, mix = draw_rehearsal(900, 0.1, seed=0, fits=short)
    assert all(short(c) for c in general) and mix.eligible_general < 300
    with pytest.raises(RehearsalSetError, match=r"fits rehearsal\.max_tokens"):
        draw_rehearsal(900, 0.1, seed=0, fits=lambda c: False)


def test_the_config_carries_rehearsal_with_a_default_share() -> None:
    config = load_train_config({})
    assert config.rehearsal.share == 0.1 and config.rehearsal.path is None
    with pytest.raises(ValueError, match=r"rehearsal\.share"):
        load_train_config({"rehearsal": {"share": 1.0}})
    with pytest.raises(ValueError, match=r"rehearsal\.mix"):
        load_train_config({"rehearsal": {"mix": 0.1}})


@pytest.mark.slow
def test_a_run_trains_on_the_mix_and_records_it(trainable_tiny_dir: Path, toy_task, tmp_path: Path) -> None:
    train, validation = toy_task  # 32 task conversations
    own = tmp_path / "general.jsonl"
    own.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": "hi"}]}
            )
            + "\n"
            for i in range(3)
        )
    )
    config = TrainConfig.model_validate(
        {"max_steps": 2, "batch_size": 8, "eval_every": 2, "rehearsal": {"share": 0.2, "path": str(own)}}
    )
    result = train_lora(trainable_tiny_dir, train, validation, config, tmp_path / "adapter")
    assert result.num_train == 40 and result.num_val == 4  # 32 task + 8 general (20% of 40); validation task-only
    assert result.rehearsal["general_conversations"] == 8 and result.rehearsal["unique_general"] == 3
    assert result.rehearsal["source"] == str(own) and result.rehearsal["task_conversations"] == 32
    curves = json.loads((tmp_path / "adapter" / "curves.json").read_text())
    assert curves["summary"]["rehearsal"]["share"] == 0.2


def test_each_general_conversation_weighs_like_an_average_task_example() -> None:
    from training.formatting import FormattedSet, TokenizedExample
    from training.recipe import _add_rehearsal

    def example(label_tokens: int) -> TokenizedExample:
        return TokenizedExample(input_ids=[1] * (label_tokens + 5), labels=[-100] * 5 + [2] * label_tokens)

    task = FormattedSet(examples=[example(3), example(5)])  # 4 label tokens on average
    general = FormattedSet(examples=[example(100), example(40)])
    general.dropped["too_long"] += 1
    _add_rehearsal(task, general, TrainConfig())
    assert [e.weighted_label_tokens for e in task.examples] == pytest.approx([3, 5, 4, 4])
    assert task.dropped == {"rehearsal_too_long": 1}
    tokens = FormattedSet(examples=[example(3)])
    _add_rehearsal(
        tokens, FormattedSet(examples=[example(100)]), load_train_config({"rehearsal": {"weighting": "token"}})
    )
    assert [e.weight for e in tokens.examples] == [1.0, 1.0]


def test_batches_never_mix_task_and_general_conversations() -> None:
    from training.formatting import LengthGroupedBatchSampler

    lengths = [50] * 90 + [170] * 10
    pools = [0] * 90 + [1] * 10
    for grouped in (False, True):
        sampler = LengthGroupedBatchSampler(lengths, 8, seed=3, group_by_length=grouped, pools=pools)
        batches = sampler.batches(0)
        assert len(batches) == len(sampler) == 12 + 2  # ceil(90 / 8) + ceil(10 / 8)
        assert sorted(i for b in batches for i in b) == list(range(100))
        assert all(len({pools[i] for i in b}) == 1 for b in batches)
        general_at = [n for n, b in enumerate(batches) if pools[b[0]] == 1]
        assert general_at != [12, 13]  # shuffled among the task batches, not appended at the end
    varied = [50] * 90 + [20 + 25 * i for i in range(10)]  # general conversations of 20 to 245 tokens
    sampler = LengthGroupedBatchSampler(varied, 8, seed=3, group_by_length=False, pools=pools, grouped_pools=[1])
    general = [b for b in sampler.batches(0) if pools[b[0]] == 1]
    assert [[varied[i] for i in b] for b in sorted(general, key=len, reverse=True)] == [
        [245, 220, 195, 170, 145, 120, 95, 70],
        [45, 20],
    ]  # the general pool is batched by length even with group_by_length off
    single = LengthGroupedBatchSampler(lengths, 8, seed=3, group_by_length=False)
    assert single.batches(1) == LengthGroupedBatchSampler(
        lengths, 8, seed=3, group_by_length=False, pools=[0] * 100
    ).batches(1)
