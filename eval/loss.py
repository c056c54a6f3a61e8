"""Mean token loss of reference answers: how likely a model finds the expected answer to a prompt.

The prompt is rendered with the chat template (assistant header included), the reference follows as the
assistant's answer with the end-of-turn token, and only the reference tokens count: prompt and padding are
masked out. Used for free-form tasks (the adapter's and the base's loss on the references) and for the
general-capability regression check. The computation lives here, not in ``training/``, so ``eval`` stays
independent of the training package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eval.generation import (
    Conversation,
    Model,
    Tokenizer,
    _encode,
    _left_pad,
    _pad_id,
    _require_torch,
    render_prompts,
    stop_token_ids,
)
from schemas.progress import progress

# Upper bound on the logits kept per forward pass (rows x reference positions x vocab x 4 bytes).
_LOSS_LOGITS_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ReferenceLoss:
    """Summed negative log-likelihood and token count of each example's reference (end-of-turn included)."""

    nll: list[float]
    tokens: list[int]

    @property
    def per_example(self) -> list[float]:
        """Mean loss per reference token, per example."""
        return [n / t for n, t in zip(self.nll, self.tokens, strict=True)]

    @property
    def mean(self) -> float:
        """Token-weighted mean loss over all references (total nll / total tokens)."""
        total = sum(self.tokens)
        if total == 0:
            raise ValueError("no reference tokens to compute a loss on")
        return sum(self.nll) / total


def reference_losses(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    references: Sequence[str],
    batch_size: int = 8,
    description: str = "reference loss",
) -> ReferenceLoss:
    """Negative log-likelihood of each reference as the assistant's answer to its conversation.

    Batches are left-padded with position ids from the attention mask (as in generation), so a batched
    result equals the one-by-one result; only the last ``longest reference + 1`` positions' logits are kept.
    """
    torch = _require_torch()
    if len(conversations) != len(references):
        raise ValueError(f"{len(conversations)} conversations for {len(references)} references")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    eos = stop_token_ids(model, tokenizer)[0]
    prompts = _encode(tokenizer, render_prompts(tokenizer, conversations))
    answers = [[*ids, eos] for ids in _encode(tokenizer, references)] if references else []
    vocab = int(model.get_output_embeddings().weight.shape[0])
    order = sorted(range(len(prompts)), key=lambda i: (-(len(prompts[i]) + len(answers[i])), i))
    nll = [0.0] * len(prompts)
    tokens = [len(a) for a in answers]
    pad_id = _pad_id(tokenizer)
    with progress(description, total=len(prompts)) as bar, torch.inference_mode():
        start = 0
        while start < len(order):
            keep = max(len(answers[i]) for i in order[start : start + batch_size]) + 1
            rows = max(1, min(batch_size, _LOSS_LOGITS_BYTES // (keep * vocab * 4)))
            batch = order[start : start + rows]
            keep = max(len(answers[i]) for i in batch) + 1
            ids, mask = _left_pad([prompts[i] + answers[i] for i in batch], pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
            logits = out.logits[:, -keep:-1, :].float()  # position t predicts token t+1
            logp = torch.log_softmax(logits, dim=-1)
            targets = ids[:, -(keep - 1) :]
            picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, keep-1]
            for b, index in enumerate(batch):
                n = len(answers[index])
                nll[index] = float(-picked[b, keep - 1 - n :].double().sum())
            bar.advance(len(batch))
            start += len(batch)
    return ReferenceLoss(nll=nll, tokens=tokens)
