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


#: Shortest common prefix worth running once per batch instead of once per row (a chat template's system turn).
MIN_SHARED_PREFIX = 8


def shared_prefix_length(batch: dict[str, Any], min_tokens: int = MIN_SHARED_PREFIX) -> int:
    """Leading tokens every row of ``batch`` shares and that carry no label (0 when fewer than ``min_tokens``).

    Every row keeps at least two tokens of its own, and no row may have a label inside the prefix or on the token
    right after it (that token is predicted from the prefix's last position, which the suffix pass does not see).
    """
    ids, labels = batch["input_ids"], batch["labels"]
    rows, width = ids.shape
    if rows < 2 or width <= min_tokens + 2:
        return 0
    same = (ids == ids[:1]).all(dim=0)  # [width]: column equal in every row
    differing = (~same).nonzero()
    length = int(differing[0]) if len(differing) else width
    lengths = batch["attention_mask"].sum(dim=1)
    length = min(length, int(lengths.min()) - 2)
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if len(labelled):
        length = min(length, int(labelled[0]) - 1)
    return length if length >= min_tokens else 0


def _suffix_hidden(body: Any, batch: dict[str, Any], prefix: int) -> Any:
    """Hidden states of positions ``prefix`` onward, with the shared prefix run once for the whole batch.

    The prefix's keys and values are computed for one row and repeated (``repeat_interleave`` keeps the graph, so
    gradients of every row flow back through the one prefix pass). Same values as the full pass: the prefix tokens
    attend only to each other in both. With LoRA dropout on, the rows share the prefix's dropout mask.
    """
    import torch

    ids, mask = batch["input_ids"], batch["attention_mask"]
    head = body(input_ids=ids[:1, :prefix], use_cache=True)
    cache = head.cache
    cache.batch_repeat_interleave(ids.shape[0])
    positions = torch.arange(prefix, ids.shape[1], device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
    out = body(input_ids=ids[:, prefix:], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return out.last_hidden_state


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
        prefix = shared_prefix_length(batch)
        if prefix:  # the rows' common start (system turn, user header) runs once; labels all lie after it
            hidden = _suffix_hidden(body, batch, prefix)  # positions prefix..T-1; mask[:, :prefix] is all False
            flat_logits = head(hidden[:, :-1][mask[:, prefix:]])
        else:
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
