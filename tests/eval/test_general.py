"""Reference-answer loss and the general-capability regression check, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.general import GeneralConfig, GeneralSetError, base_references, load_general_prompts, regression_check
from eval.generation import load_model, render_prompts
from eval.loss import reference_losses

PROMPTS = [
    "Where is my card?",
    "How do I reset my password? My account is locked.",
    "I want a refund for my order.",
    "Hello, how can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Thanks! Goodbye.",
]


def _adapter(base: Path, folder: Path, destructive: bool) -> Path:
    """A LoRA on every projection: a no-op one (peft's B = 0) or one with large random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=64, target_modules=targets, init_lora_weights=not destructive)
    peft_model = get_peft_model(model, config)
    if destructive:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.mul_(4.0)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture
def general_set(tmp_path: Path) -> Path:
    path = tmp_path / "general.jsonl"
    lines = [{"question_id": i, "turns": [p, "And then?"]} for i, p in enumerate(PROMPTS)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_reference_loss_matches_a_full_sequence_forward(chatty_model_dir: Path) -> None:
    import torch

    model, tokenizer = load_model(chatty_model_dir)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    refs = ["card lost", "Reset it from the login page, please.", "ok", "", "a" * 30, "Goodbye!"]
    batched = reference_losses(model, tokenizer, convs, refs, batch_size=4)
    one = reference_losses(model, tokenizer, convs, refs, batch_size=1)
    assert batched.nll == pytest.approx(one.nll, abs=1e-3)
    eos = tokenizer.eos_token_id
    for i, prompt in enumerate(render_prompts(tokenizer, convs)):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = [*tokenizer(refs[i], add_special_tokens=False)["input_ids"], eos]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([p_ids + r_ids])).logits[0].log_softmax(-1)
        expected = -sum(logp[len(p_ids) - 1 + t, tok].item() for t, tok in enumerate(r_ids))
        assert batched.nll[i] == pytest.approx(expected, abs=1e-3)
        assert batched.tokens[i] == len(r_ids)
    assert batched.mean == pytest.approx(sum(batched.nll) / sum(batched.tokens))


def test_general_prompts_load_from_several_layouts(tmp_path: Path, general_set: Path) -> None:
    assert load_general_prompts(general_set, 3) == PROMPTS[:3]  # MT-Bench: first turn, first N
    other = tmp_path / "other.jsonl"
    rows = [{"prompt": "a"}, {"instruction": "b"}, {"messages": [{"role": "user", "content": "c"}]}]
    other.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_general_prompts(other, 10) == ["a", "b", "c"]
    other.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(GeneralSetError, match=r"other\.jsonl:1: no prompt"):
        load_general_prompts(other, 10)
    with pytest.raises(GeneralSetError, match="does not exist"):
        load_general_prompts(tmp_path / "missing.jsonl", 10)


def test_a_destructive_adapter_fails_and_a_harmless_one_passes(
    chatty_model_dir: Path, general_set: Path, tmp_path: Path
) -> None:
    config = GeneralConfig(limit=6, max_new_tokens=12, batch_size=4)
    cache = tmp_path / "refs"
    checks = {}
    for kind in ("harmless", "destructive"):
        adapter = _adapter(chatty_model_dir, tmp_path / kind, destructive=kind == "destructive")
        model, tokenizer = load_model(chatty_model_dir, adapter)
        checks[kind] = regression_check(
            model, tokenizer, model.disable_adapter, general_set, config, 0.10, "base_tiny", cache
        )
    harmless, destructive = checks["harmless"], checks["destructive"]
    assert harmless.status == "pass" and harmless.relative_change == pytest.approx(0.0, abs=1e-6)
    assert destructive.status == "fail"
    assert destructive.relative_change is not None and destructive.relative_change > 0.10
    assert "above the allowed +10%" in destructive.reason and "6 prompts of general.jsonl" in destructive.reason
    assert destructive.base_loss == pytest.approx(harmless.base_loss)  # same base answers, from the cache
    assert destructive.n_prompts == 6 and destructive.general_set_hash == harmless.general_set_hash
    assert len(list(cache.glob("*.json"))) == 1


def test_base_answers_are_cached_per_base_model_and_prompts(
    chatty_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eval.general as general

    model, tokenizer = load_model(chatty_model_dir)
    first = base_references(model, tokenizer, PROMPTS[:3], "base_a", 8, 4, tmp_path)

    def refuse(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("the cached answers should have been used")

    monkeypatch.setattr(general, "generate_greedy", refuse)
    assert base_references(model, tokenizer, PROMPTS[:3], "base_a", 8, 4, tmp_path) == first
    with pytest.raises(AssertionError, match="cached"):  # another base model id: a new key
        base_references(model, tokenizer, PROMPTS[:3], "base_b", 8, 4, tmp_path)
