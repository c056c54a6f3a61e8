"""Eval fixtures: a tiny model with varied greedy answers and a random-init LoRA adapter for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval.examples import EvalExample, EvalTask
from tests.support.tiny_model import randomize_weights

LABELS = ["card_lost", "password_reset", "refund_request"]
_QUERIES = {
    "card_lost": [
        "Where is my card?",
        "I lost my card yesterday.",
        "My card is gone, I need a new one.",
        "Card lost, please help.",
        "I cannot find my card anywhere.",
    ],
    "password_reset": [
        "How do I reset my password?",
        "My account is locked.",
        "I forgot my password.",
        "Reset password please.",
        "Locked out of my account, help.",
    ],
    "refund_request": [
        "I want a refund for my order.",
        "The package never arrived, refund me.",
        "Please refund my order.",
        "Refund request for my last order.",
        "I need my money back, the order never came.",
    ],
}


@pytest.fixture(scope="session")
def chatty_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with larger random weights: its greedy answers differ in content and length across
    prompts (the default init answers nothing but newlines), which makes batching bugs visible."""
    folder = tmp_path_factory.mktemp("chatty-model")
    shutil.rmtree(folder)
    shutil.copytree(tiny_model_dir, folder)
    return randomize_weights(folder)


@pytest.fixture(scope="session")
def tiny_adapter_dir(chatty_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on q_proj/v_proj with random A *and* B (peft's default B = 0 would be a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(chatty_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    folder = tmp_path_factory.mktemp("tiny-adapter")
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture
def task() -> EvalTask:
    return EvalTask(kind="classification", labels=LABELS)


def labelled_examples(start_index: int = 0, per_label: int = 5, offset: int = 0) -> list[EvalExample]:
    """Examples cycling through the labels, ``per_label`` each, using queries from ``offset`` on."""
    from schemas.ids import record_id

    out: list[EvalExample] = []
    for j in range(per_label):
        for label in LABELS:
            query = _QUERIES[label][(offset + j) % len(_QUERIES[label])]
            messages = ({"role": "user", "content": query},)
            out.append(
                EvalExample(
                    example_index=start_index + len(out),
                    record_id=record_id([*messages, {"role": "assistant", "content": label}]),
                    messages=messages,
                    reference=label,
                )
            )
    return out
