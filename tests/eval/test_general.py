"""Reference-answer loss and the general-capability regression check, on the tiny model."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

from eval.general import (
    SHIPPED_SHA256,
    GeneralConfig,
    GeneralSet,
    GeneralSetError,
    load_general_set,
    regression_check,
)
from eval.generation import generate_greedy, load_model, render_prompts
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
def general_set() -> GeneralSet:
    references = ["card lost", "Reset it from the login page.", "ok", "Hello!", "The fox jumps.", "Goodbye!"]
    return GeneralSet("tiny-general", [[{"role": "user", "content": p}] for p in PROMPTS], references, "0" * 64)


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


def test_general_sets_load_from_several_layouts(tmp_path: Path) -> None:
    path = tmp_path / "general.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"}]},
        {"prompt": "b", "response": "B"},
        {"instruction": "c", "output": "C"},
        {"question": "d", "answer": "D"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    loaded = load_general_set(path)
    assert loaded.references == ["A", "B", "C", "D"]
    assert [c[-1]["content"] for c in loaded.conversations] == ["a", "b", "c", "d"]
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and loaded.name == str(path)
    assert load_general_set(path, limit=2).references == ["A", "B"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"question_id": 1, "turns": ["What is 2+2?"]}\n', r"general\.jsonl:1: no prompt with a reference answer"),
        ('{"prompt": "no answer"}\n', r"general\.jsonl:1: no prompt with a reference answer"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}\n', r"general\.jsonl:1: no prompt"),
        ("not json\n", r"general\.jsonl:1: not JSON"),
        ("\n\n", "has no conversations"),
    ],
)
def test_unusable_general_sets_are_refused_with_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "general.jsonl"
    path.write_text(body)
    with pytest.raises(GeneralSetError, match=message):
        load_general_set(path)


def test_a_missing_general_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GeneralSetError, match=r"missing\.jsonl does not exist"):
        load_general_set(tmp_path / "missing.jsonl")


def test_the_shipped_reference_set_loads_verified() -> None:
    shipped = load_general_set()
    assert len(shipped) == 256 and shipped.sha256 == SHIPPED_SHA256
    assert shipped.name == "refinery:general_reference.jsonl"
    assert all(
        ref.strip() and conv[-1]["role"] == "user"
        for conv, ref in zip(shipped.conversations, shipped.references, strict=True)
    )
    assert len(load_general_set(None, limit=40)) == 40


def test_a_damaged_shipped_set_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import eval.general as general

    monkeypatch.setattr(general, "SHIPPED_SHA256", "f" * 64)
    with pytest.raises(GeneralSetError, match=r"is damaged .* reinstall Refinery"):
        load_general_set()


def test_the_reference_set_and_the_rehearsal_set_are_disjoint() -> None:
    from training.rehearsal import load_rehearsal_set

    reference = resources.files("eval").joinpath("data", "general_reference.jsonl").read_text(encoding="utf-8")
    rehearsal_convs, _, _ = load_rehearsal_set()
    rehearsal = resources.files("training").joinpath("data", "rehearsal.jsonl").read_text(encoding="utf-8")

    def sources(text: str) -> set[str]:  # an OpenAssistant tree or a Self-Instruct task
        return {":".join(json.loads(line)["id"].split(":")[:2]) for line in text.splitlines()}

    assert sources(reference).isdisjoint(sources(rehearsal))
    ref_prompts = {conv[0]["content"] for conv in load_general_set().conversations}
    assert ref_prompts.isdisjoint({conv[0]["content"] for conv in rehearsal_convs})


def test_a_destructive_adapter_fails_and_a_harmless_one_passes(
    chatty_model_dir: Path, general_set: GeneralSet, tmp_path: Path
) -> None:
    # The tiny random model knows no language, so its own greedy answers stand in for "answers it finds likely".
    base_model, base_tokenizer = load_model(chatty_model_dir)
    answers = generate_greedy(base_model, base_tokenizer, general_set.conversations, 12, 4)
    general_set = GeneralSet(general_set.name, general_set.conversations, answers, general_set.sha256)
    config = GeneralConfig(batch_size=4)
    checks = {}
    for kind in ("harmless", "destructive"):
        adapter = _adapter(chatty_model_dir, tmp_path / kind, destructive=kind == "destructive")
        model, tokenizer = load_model(chatty_model_dir, adapter)
        checks[kind] = regression_check(model, tokenizer, model.disable_adapter, general_set, config, 0.10)
    harmless, destructive = checks["harmless"], checks["destructive"]
    assert harmless.status == "pass" and harmless.relative_change == pytest.approx(0.0, abs=1e-6)
    assert harmless.median_example_change == pytest.approx(0.0, abs=1e-6)
    assert destructive.status == "fail"
    assert destructive.relative_change is not None and destructive.relative_change > 0.10
    assert "above the allowed +10%" in destructive.reason
    assert "human answers to 6 general prompts (tiny-general)" in destructive.reason
    assert destructive.base_loss == pytest.approx(harmless.base_loss)  # the same references, the same base
    assert destructive.n_prompts == 6 and destructive.general_set_hash == "0" * 64
