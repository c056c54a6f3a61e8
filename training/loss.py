"""Assistant-token loss that projects onto the vocabulary only where a label needs it.

A causal LM's forward ends with the output projection (``lm_head``: hidden size x vocabulary, 576 x 49,152 for
SmolLM2) at every position, then the loss ignores most of them: in a chat-formatted example only the assistant's
tokens carry labels. For short answers after a long prompt (intent classification) the projection and its
backward are most of a LoRA step's arithmetic and the logits most of its memory. :func:`token_loss` runs the
decoder body for hidden states, keeps the positions whose next-token label is not ``IGNORE_INDEX`` and applies
``lm_head`` and cross-entropy to those rows only. The result equals the full-logits loss (same sum, same
gradients, up to float summation order); tests/training/test_loss.py checks both.

Architectures that transform the logits after ``lm_head`` (soft-capping, logit scales) or whose body cannot be
found fall back to the full forward, so the function is correct for any causal LM and fast for the common ones.
"""

from __future__ import annotations

from typing import Any

from training.formatting import IGNORE_INDEX

#: Config attributes that mean "the logits are not just lm_head(hidden)": such models take the full forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def _body_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder body, output projection) of a (peft-wrapped) causal LM, or None when the split is not safe."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if config is None or any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    try:
        body = inner.get_decoder()
        head = inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or head is None or body is inner:
        return None
    return body, head


def token_loss(model: Any, batch: dict[str, Any], sparse: bool = True) -> tuple[Any, int]:
    """Summed cross-entropy over the label tokens of a right-padded batch, and how many tokens that is.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` where no loss is wanted),
    as :class:`training.formatting.PaddingCollator` makes them, and optionally ``label_weights`` (a float per
    position multiplying that token's loss). ``sparse=False`` computes the logits at every position (the reference
    the sparse path is tested against). The count is of label tokens, unweighted.
    """
    import torch

    labels = batch["labels"][:, 1:]  # the hidden state at t predicts token t + 1
    mask = labels != IGNORE_INDEX
    count = int(mask.sum().item())
    parts = _body_and_head(model) if sparse else None
    if parts is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1)
    else:
        body, head = parts
        hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        flat_logits = head(hidden.last_hidden_state[:, :-1][mask])  # (label tokens, vocabulary)
        flat_labels = labels[mask]
    weights = batch.get("label_weights")
    if weights is None:
        loss = torch.nn.functional.cross_entropy(
            flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return loss, count
    per_token = torch.nn.functional.cross_entropy(
        flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    flat_weights = weights[:, 1:].reshape(-1) if parts is None else weights[:, 1:][mask]
    return (per_token * flat_weights).sum(), count
