"""Model loading and the two ways a system answers: greedy generation and label log-likelihood ranking.

Batched generation pads on the left (so every row's next token sits in the last column), sorts prompts by
length so a batch pads as little as possible, and restores input order. With the attention mask and
position ids derived from it, batched answers equal one-by-one answers; :func:`generate_one_by_one` is the
reference the tests and the benchmark compare against.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.progress import progress

Conversation = Sequence[dict[str, str]]
# transformers' model and tokenizer classes are imported lazily (heavy, optional): typed as Any here.
Model = Any
Tokenizer = Any

_INSTALL_HINT = "pip install -e '.[train]' (after pip install torch==2.13.0)"
# Upper bound on the logits tensor of one ranking forward pass (rows x positions x vocab x 4 bytes).
_RANKING_LOGITS_BYTES = 256 * 1024 * 1024


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"evaluation needs torch and transformers: {_INSTALL_HINT}") from exc
    return torch


def load_model(base_path: Path | str, adapter_path: Path | str | None = None) -> tuple[Model, Tokenizer]:
    """Load a base model folder (safetensors, float32) and its tokenizer, plus a peft adapter if given.

    No remote code runs and no pickle is read: the base must ship ``*.safetensors`` and the adapter
    ``adapter_model.safetensors``. The tokenizer is set to pad on the left, with eos as pad if it has none.
    """
    torch = _require_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Path(base_path)
    if not base.is_dir():
        raise FileNotFoundError(f"base model folder {base} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(base), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        str(base), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    if adapter_path is not None:
        adapter = Path(adapter_path)
        if not (adapter / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{adapter} has no adapter_model.safetensors (only safetensors are loaded)")
        try:
            from peft import PeftModel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"loading an adapter needs peft: {_INSTALL_HINT}") from exc
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)  # type: ignore[assignment]
    model.eval()
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def prepare_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """Left padding, and eos as the pad token when the tokenizer defines none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_prompts(tokenizer: Tokenizer, conversations: Sequence[Conversation]) -> list[str]:
    """The exact text each conversation is given to the model as (chat template + assistant header)."""
    return [
        tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True) for conv in conversations
    ]


def _encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # The chat template already wrote any special tokens the model expects.
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def stop_token_ids(model: Model, tokenizer: Tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus any eos the model's generation config names."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for extra in configured if isinstance(configured, list) else [configured]:
        if extra is not None and int(extra) not in ids:
            ids.append(int(extra))
    if not ids:
        raise ValueError("the tokenizer has no eos token, so generation would never stop at end of turn")
    return ids


def _pad_id(tokenizer: Tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad)


def _decode(tokenizer: Tokenizer, new_ids: Sequence[int], stops: Sequence[int]) -> str:
    kept: list[int] = []
    for token in new_ids:
        if token in stops:
            break
        kept.append(int(token))
    return str(tokenizer.decode(kept, skip_special_tokens=True)).strip()


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    torch = _require_torch()
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


@dataclass(frozen=True)
class _SharedPrefix:
    """The token prefix every prompt starts with, run through the model once (cache None: no sharing)."""

    ids: tuple[int, ...]
    cache: Any

    @property
    def length(self) -> int:
        return len(self.ids) if self.cache is not None else 0


def _shared_prefix(model: Model, encoded: Sequence[Sequence[int]], min_tokens: int) -> _SharedPrefix:
    """Few-shot prompts repeat the same instruction and shots before each example: computing that prefix's
    key/value cache once and reusing it turns an 800-token prompt into a 40-token one per example."""
    torch = _require_torch()
    if len(encoded) < 2 or min_tokens <= 0:
        return _SharedPrefix((), None)
    first = encoded[0]
    length = min(len(e) for e in encoded) - 1  # every prompt keeps at least one token of its own
    for other in encoded[1:]:
        same = 0
        while same < length and other[same] == first[same]:
            same += 1
        length = same
    if length < min_tokens:
        return _SharedPrefix((), None)
    out = model(input_ids=torch.tensor([first[:length]], dtype=torch.long), use_cache=True)
    return _SharedPrefix(tuple(first[:length]), out.cache)


def _prefixed_batch(rows: Sequence[Sequence[int]], prefix: _SharedPrefix, pad_id: int) -> tuple[Any, Any, Any]:
    """Input ids and attention mask of the full prompts, plus a copy of the prefix cache per row (or None).

    The suffixes are left-padded after the shared prefix, so padding sits in the middle: the attention mask
    hides it and generate() derives each token's position from the mask, as it does for left padding.
    """
    torch = _require_torch()
    suffix_ids, suffix_mask = _left_pad([r[prefix.length :] for r in rows], pad_id)
    if prefix.cache is None:
        return suffix_ids, suffix_mask, None
    n = len(rows)
    head = torch.tensor([prefix.ids], dtype=torch.long).expand(n, -1)
    ids = torch.cat([head, suffix_ids], dim=1)
    mask = torch.cat([torch.ones((n, prefix.length), dtype=torch.long), suffix_mask], dim=1)
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(n)
    return ids, mask, cache


def _greedy_kwargs(model: Model, tokenizer: Tokenizer, max_new_tokens: int) -> dict[str, Any]:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=_pad_id(tokenizer),
    )
    return {"generation_config": config}


def generate_greedy(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    max_new_tokens: int = 16,
    batch_size: int = 16,
    description: str = "generate",
    min_shared_prefix: int = 16,
) -> list[str]:
    """Greedy answers to each conversation, batched; returned in input order, special tokens dropped.

    When all prompts share a token prefix of at least ``min_shared_prefix`` tokens (few-shot prompts), its
    key/value cache is computed once and reused by every batch; 0 turns that off.
    """
    torch = _require_torch()
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    encoded = _encode(tokenizer, render_prompts(tokenizer, conversations))
    # Longest first: similar lengths share a batch, and an out-of-memory error shows on the first batch.
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    stops = stop_token_ids(model, tokenizer)
    kwargs = _greedy_kwargs(model, tokenizer, max_new_tokens)
    answers = [""] * len(encoded)
    with progress(description, total=len(encoded)) as bar, torch.inference_mode():
        prefix = _shared_prefix(model, encoded, min_shared_prefix)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask, cache = _prefixed_batch([encoded[i] for i in batch], prefix, _pad_id(tokenizer))
            extra = {} if cache is None else {"cache": cache}
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **extra)
            for row, index in zip(out[:, ids.shape[1] :].tolist(), batch, strict=True):
                answers[index] = _decode(tokenizer, row, stops)
            bar.advance(len(batch))
    return answers


def generate_one_by_one(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    max_new_tokens: int = 16,
) -> list[str]:
    """Reference implementation: one unpadded ``generate`` call per conversation."""
    torch = _require_torch()
    stops = stop_token_ids(model, tokenizer)
    kwargs = _greedy_kwargs(model, tokenizer, max_new_tokens)
    answers = []
    with progress("generate (one by one)", total=len(conversations)) as bar, torch.inference_mode():
        for ids in _encode(tokenizer, render_prompts(tokenizer, conversations)):
            input_ids = torch.tensor([ids], dtype=torch.long)
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            answers.append(_decode(tokenizer, out[0, input_ids.shape[1] :].tolist(), stops))
            bar.advance()
    return answers


def label_loglikelihoods(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    batch_size: int = 8,
    min_shared_prefix: int = 16,
) -> Any:
    """Matrix [conversation, label] of log P(label tokens + end-of-turn | prompt), as a float64 numpy array.

    Each prompt is run once; its key/value cache is then repeated for every label, so the cost is one
    prompt pass plus the (short) label continuations, not one full pass per label.
    """
    torch = _require_torch()
    import numpy as np

    if not labels:
        raise ValueError("label ranking needs a non-empty label set")
    eos = stop_token_ids(model, tokenizer)[0]
    label_ids = [[*ids, eos] for ids in _encode(tokenizer, labels)]
    encoded = _encode(tokenizer, render_prompts(tokenizer, conversations))
    pad_id = _pad_id(tokenizer)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    cont_width = max(len(ids) for ids in label_ids) - 1
    per_label_bytes = max(1, cont_width) * vocab * 4
    labels_per_chunk = max(1, min(len(labels), _RANKING_LOGITS_BYTES // per_label_bytes))
    prompts_per_batch = max(1, min(batch_size, _RANKING_LOGITS_BYTES // (per_label_bytes * labels_per_chunk)))

    scores = np.zeros((len(encoded), len(labels)), dtype=np.float64)
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    with progress("rank labels", total=len(encoded)) as bar, torch.inference_mode():
        for start in range(0, len(order), prompts_per_batch):
            batch = order[start : start + prompts_per_batch]
            ids, mask = _left_pad([encoded[i] for i in batch], pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)  # [B, V]
            lengths = mask.sum(-1)
            for lo in range(0, len(labels), labels_per_chunk):
                chunk = list(range(lo, min(len(labels), lo + labels_per_chunk)))
                part = _continuation_logprobs(
                    model, out.cache, mask, lengths, [label_ids[j] for j in chunk], pad_id
                )  # [B, len(chunk)]
                for c, j in enumerate(chunk):
                    part[:, c] += first[:, label_ids[j][0]]
                for b, index in enumerate(batch):
                    scores[index, chunk] = part[b].cpu().numpy()
            bar.advance(len(batch))
    return scores


def _continuation_logprobs(
    model: Model, cache: Any, mask: Any, lengths: Any, label_ids: list[list[int]], pad_id: int
) -> Any:
    """Sum of log-probs of label tokens 1..end given the prompt cache (token 0 is scored by the caller)."""
    torch = _require_torch()
    n_prompts, n_labels = mask.shape[0], len(label_ids)
    width = max(len(ids) for ids in label_ids) - 1
    cont = torch.full((n_labels, width), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((n_labels, width), dtype=torch.long)
    targets = torch.full((n_labels, width), 0, dtype=torch.long)
    for j, ids in enumerate(label_ids):
        cont[j, : len(ids) - 1] = torch.tensor(ids[:-1])
        targets[j, : len(ids) - 1] = torch.tensor(ids[1:])
        cont_mask[j, : len(ids) - 1] = 1
    # Rows are prompt-major: (prompt 0, label 0), (prompt 0, label 1), ...
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(n_labels)
    rows_cont = cont.repeat(n_prompts, 1)
    rows_mask = torch.cat([mask.repeat_interleave(n_labels, 0), cont_mask.repeat(n_prompts, 1)], dim=1)
    rows_pos = lengths.repeat_interleave(n_labels).unsqueeze(1) + torch.arange(width).unsqueeze(0)
    out = model(
        input_ids=rows_cont,
        attention_mask=rows_mask,
        position_ids=rows_pos,
        cache=cache,
        use_cache=True,
    )
    logits = out.logits.float()
    picked = logits.gather(-1, targets.repeat(n_prompts, 1).unsqueeze(-1)).squeeze(-1)
    logp = (picked - torch.logsumexp(logits, dim=-1)).double()
    return (logp * cont_mask.repeat(n_prompts, 1)).sum(-1).view(n_prompts, n_labels)


def label_loglikelihood_ranking(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    batch_size: int = 8,
) -> list[str]:
    """The most likely label of the set as the assistant's answer to each conversation (ties: first label)."""
    scores = label_loglikelihoods(model, tokenizer, conversations, labels, batch_size)
    return [labels[int(row.argmax())] for row in scores]
