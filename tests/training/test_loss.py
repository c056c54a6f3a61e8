"""The sparse-logits loss (lm_head only at label positions) equals the full-logits loss, value and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.formatting import PaddingCollator, format_conversations
from training.loss import _body_and_head, shared_prefix_length, token_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVERSATIONS = [
    [{"role": "user", "content": "Where is my card? I lost it."}, {"role": "assistant", "content": "card_lost"}],
    [
        {"role": "system", "content": "Classify the customer message."},
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "password_reset"},
        {"role": "user", "content": "And my refund?"},
        {"role": "assistant", "content": "refund_request"},
    ],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help you today?"}],
]


SYSTEM = "You are a support desk assistant. Classify every customer message into one intent label."


def _lora_model_and_batch(
    folder: Path, lora_on_head: bool = False, conversations: list[list[dict[str, str]]] = CONVERSATIONS
) -> tuple[object, dict[str, object]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.support.tiny_model import randomize_weights

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(randomize_weights(folder, seed=3), dtype=torch.float32)
    targets = ["q_proj", "v_proj", "lm_head"] if lora_on_head else ["q_proj", "v_proj"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    for name, param in model.named_parameters():  # a non-zero LoRA B so its gradients flow both ways
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    examples = format_conversations(tokenizer, conversations).examples
    return model, PaddingCollator(tokenizer.pad_token_id)(examples)


def _loss_and_grads(model, batch, sparse: bool) -> tuple[float, int, dict[str, object]]:
    model.zero_grad(set_to_none=True)
    loss, count = token_loss(model, batch, sparse=sparse)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), count, grads


@pytest.mark.parametrize(("lora_on_head", "shared_system"), [(False, False), (True, False), (False, True)])
def test_sparse_loss_and_gradients_equal_the_full_logits_ones(
    tiny_model_dir, tmp_path, lora_on_head, shared_system
) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    conversations = CONVERSATIONS
    if shared_system:  # every row starts with the same system turn: that prefix runs once for the batch
        conversations = [[{"role": "system", "content": SYSTEM}, *(m for m in c if m["role"] != "system")]
                         for c in CONVERSATIONS]  # fmt: skip
    model, batch = _lora_model_and_batch(folder, lora_on_head, conversations)
    prefix = shared_prefix_length(batch)
    assert prefix >= 30 if shared_system else prefix == 0  # the system turn and the user header
    assert _body_and_head(model) is not None  # the sparse path is really taken
    assert int((batch["attention_mask"] == 0).sum()) > 0  # and padding is present

    full, full_count, full_grads = _loss_and_grads(model, batch, sparse=False)
    sparse, sparse_count, sparse_grads = _loss_and_grads(model, batch, sparse=True)

    labels = batch["labels"][:, 1:]
    assert full_count == sparse_count == int((labels != -100).sum()) > 10
    assert sparse == pytest.approx(full, rel=1e-5)
    assert full_grads.keys() == sparse_grads.keys() and len(full_grads) >= 4
    for name, grad in full_grads.items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((sparse_grads[name] - grad).abs().max()) / scale < 1e-4, name
        assert float(grad.abs().max()) > 0, name  # the gradient is not trivially zero on both sides

    # and the value is the plain mean cross-entropy transformers computes, times the label count
    hf = model(**batch).loss.item()
    assert sparse / sparse_count == pytest.approx(hf, rel=1e-5)


def test_logit_transforming_architectures_take_the_full_forward(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert _body_and_head(model) is not None
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style soft-capping is applied after lm_head
    assert _body_and_head(model) is None


def test_a_batch_without_label_tokens_gives_a_differentiable_zero(tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.full((1, 3), -100),
    }
    loss, count = token_loss(model, batch)
    loss.backward()
    assert count == 0 and loss.item() == 0.0


@pytest.mark.parametrize("sparse", [True, False])
def test_label_weights_scale_each_examples_token_losses(tiny_model_dir, tmp_path, sparse) -> None:
    """A rehearsal conversation's weight multiplies the loss of each of its label tokens, nothing else."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model, _ = _lora_model_and_batch(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = format_conversations(tokenizer, CONVERSATIONS).examples
    collate = PaddingCollator(tokenizer.pad_token_id)
    plain = collate(examples)
    assert "label_weights" not in plain  # all weights 1: the usual batch
    per_example = [token_loss(model, collate([e]), sparse=sparse)[0].item() for e in examples]
    examples[2].weight = 0.25
    weighted = collate(examples)
    assert weighted["label_weights"][2].max().item() == 0.25 and weighted["label_weights"][0].max().item() == 1.0
    with torch.no_grad():
        loss, count = token_loss(model, weighted, sparse=sparse)
    assert count == sum(e.num_label_tokens for e in examples)  # the count stays unweighted
    expected = per_example[0] + per_example[1] + 0.25 * per_example[2]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert examples[2].weighted_label_tokens == pytest.approx(0.25 * examples[2].num_label_tokens)


def test_the_shared_prefix_stops_before_any_label_and_leaves_every_row_two_tokens() -> None:
    import torch

    ignore = -100
    ids = torch.tensor([[1] * 12 + [2, 3, 4], [1] * 12 + [5, 6, 0]])
    mask = torch.tensor([[1] * 15, [1] * 14 + [0]])
    labels = torch.full_like(ids, ignore)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert shared_prefix_length(batch) == 12
    labels[1, 10] = 6  # a label inside the common start: the prefix ends before the token it is predicted from
    assert shared_prefix_length(batch) == 9
    labels[1, 5] = 6
    assert shared_prefix_length(batch) == 0  # 4 shared tokens: not worth it
    short = {"input_ids": ids[:, :10], "attention_mask": mask[:, :10], "labels": torch.full((2, 10), ignore)}
    assert shared_prefix_length(short) == 0  # 10 equal tokens: each row keeps two of its own, 8 left
    assert shared_prefix_length({k: v[:1] for k, v in batch.items()}) == 0  # one row: nothing to share
