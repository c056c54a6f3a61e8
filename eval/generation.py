"""Model loading, greedy generation, and the label log-likelihoods that label ranking is built on.

Batched generation pads on the left (so every row's next token sits in the last column), sorts prompts by
length so a batch pads as little as possible, and restores input order. With the attention mask and
position ids derived from it, batched answers equal one-by-one answers; :func:`generate_one_by_one` is the
reference the tests and the benchmark compare against.
"""

from __future__ import annotations

import copy
import functools
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
    labels: Sequence[str] | None = None,
) -> list[str]:
    """Greedy answers to each conversation, batched; returned in input order, special tokens dropped.

    When all prompts share a token prefix of at least ``min_shared_prefix`` tokens (few-shot prompts), its
    key/value cache is computed once and reused by every batch; 0 turns that off. With ``labels`` (a
    classification task), an answer stops as soon as it can no longer name one of them (eval/answer_stop.py):
    its score cannot change any more, and prose answers would otherwise run to ``max_new_tokens``.
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
            extra: dict[str, Any] = {} if cache is None else {"cache": cache}
            if labels is not None:
                from transformers import StoppingCriteriaList

                from eval.answer_stop import outside_labels_stop

                stop = outside_labels_stop(tokenizer, labels, ids.shape[1])
                extra["stopping_criteria"] = StoppingCriteriaList([stop])
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


@dataclass(frozen=True)
class _LabelTrie:
    """The labels' token sequences (each ending in end-of-turn) as a prefix tree, flattened for one forward pass.

    Node n stands for a label prefix of ``depth[n] + 1`` tokens whose last token is ``tokens[n]``; feeding the
    nodes to the model at positions ``prompt length + depth`` with a mask that lets each node see the prompt and
    its own ancestors (``visible``) gives, at node n, the distribution of the token after that prefix. A label's
    first token is scored from the prompt's last position; every later token from its parent node. Labels that
    share leading tokens ("card_arrival", "card_linking") share nodes, so banking77's 77 labels (558 tokens with
    end-of-turn, up to 18 per label) need 382 nodes instead of 77 padded rows of 17.
    """

    tokens: list[int]
    depth: list[int]
    visible: list[list[int]]  # per node: its ancestors and itself
    first: list[int]  # per label: its first token
    steps: list[list[tuple[int, int]]]  # per label: (node, next token) for tokens 1..end

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> _LabelTrie:
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        depth: list[int] = []
        visible: list[list[int]] = []
        steps: list[list[tuple[int, int]]] = []
        for seq in sequences:
            path: list[int] = []
            for d in range(len(seq) - 1):  # the last token (end-of-turn) is only predicted, never fed
                key = tuple(seq[: d + 1])
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(int(seq[d]))
                    depth.append(d)
                    visible.append([*path, len(tokens) - 1])
                path.append(index[key])
            steps.append([(node, int(seq[d + 1])) for d, node in enumerate(path)])
        return cls(tokens, depth, visible, [int(s[0]) for s in sequences], steps)

    @functools.cached_property
    def tree(self) -> Any:
        """[nodes, nodes] bool: row n is True at n's ancestors and n (built once per trie, not per batch)."""
        torch = _require_torch()
        n = len(self.tokens)
        tree = torch.zeros((n, n), dtype=torch.bool)
        for node, seen in enumerate(self.visible):
            tree[node, seen] = True
        return tree

    def mask(self, prompt_mask: Any, dtype: Any) -> Any:
        """Additive 4D attention mask [rows, 1, nodes, prompt + nodes]: 0 where a node may look, -inf elsewhere."""
        torch = _require_torch()
        n, tree = len(self.tokens), self.tree
        rows = prompt_mask.shape[0]
        allowed = torch.cat(
            [prompt_mask.bool().unsqueeze(1).expand(rows, n, -1), tree.unsqueeze(0).expand(rows, n, n)], dim=2
        )
        additive = torch.zeros(allowed.shape, dtype=dtype)
        additive.masked_fill_(~allowed, torch.finfo(dtype).min)
        return additive.unsqueeze(1)


def label_loglikelihoods(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    batch_size: int = 8,
    min_shared_prefix: int = 16,
) -> Any:
    """Matrix [conversation, label] of log P(label tokens + end-of-turn | prompt), as a float64 numpy array.

    The prompts' shared prefix (instruction and label list) is run once and its key/value cache reused (as in
    :func:`generate_greedy`); each batch of prompts is then run once, and all labels are scored in a single
    further pass over the label trie (:class:`_LabelTrie`), so the cost is one prompt pass plus one pass over
    the distinct label prefixes, whatever the number of labels.
    """
    torch = _require_torch()
    import numpy as np

    if not labels:
        raise ValueError("label ranking needs a non-empty label set")
    eos = stop_token_ids(model, tokenizer)[0]
    trie = _LabelTrie.build([[*ids, eos] for ids in _encode(tokenizer, labels)])
    encoded = _encode(tokenizer, render_prompts(tokenizer, conversations))
    pad_id = _pad_id(tokenizer)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    per_prompt_bytes = max(1, len(trie.tokens)) * vocab * 4
    prompts_per_batch = max(1, min(batch_size, _RANKING_LOGITS_BYTES // per_prompt_bytes))
    nodes = torch.tensor(trie.tokens, dtype=torch.long)
    depth = torch.tensor(trie.depth, dtype=torch.long)
    step_nodes = torch.tensor([node for label in trie.steps for node, _ in label], dtype=torch.long)
    step_tokens = torch.tensor([token for label in trie.steps for _, token in label], dtype=torch.long)
    step_label = torch.tensor([j for j, label in enumerate(trie.steps) for _ in label], dtype=torch.long)
    first_tokens = torch.tensor(trie.first, dtype=torch.long)

    scores = np.zeros((len(encoded), len(labels)), dtype=np.float64)
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    with progress("rank labels", total=len(encoded)) as bar, torch.inference_mode():
        prefix = _shared_prefix(model, encoded, min_shared_prefix)
        for start in range(0, len(order), prompts_per_batch):
            batch = order[start : start + prompts_per_batch]
            ids, mask, cache = _prefixed_batch([encoded[i] for i in batch], prefix, pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            extra = {} if cache is None else {"cache": cache}
            out = model(
                input_ids=ids[:, prefix.length :],
                attention_mask=mask,
                position_ids=positions[:, prefix.length :],
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
            first = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)  # [B, V]
            rows = len(batch)
            tree = model(
                input_ids=nodes.unsqueeze(0).expand(rows, -1),
                attention_mask=trie.mask(mask, model.dtype),
                position_ids=mask.sum(-1, keepdim=True) + depth.unsqueeze(0),
                cache=out.cache,
                use_cache=True,
            )
            logits = tree.logits.float()  # [B, nodes, V]
            norm = torch.logsumexp(logits, dim=-1)  # [B, nodes]
            step_logp = (logits[:, step_nodes, step_tokens] - norm[:, step_nodes]).double()  # [B, steps]
            total = first[:, first_tokens].index_add(1, step_label, step_logp)  # [B, labels]
            for b, index in enumerate(batch):
                scores[index] = total[b].cpu().numpy()
            bar.advance(rows)
    return scores


def __getattr__(name: str) -> Any:
    # The ranking entry point moved to eval/label_ranking.py (calibration, pruned search), which imports this
    # module's helpers; it is re-exported lazily so that neither import order is circular.
    if name == "label_loglikelihood_ranking":
        from eval import label_ranking

        return label_ranking.label_loglikelihood_ranking
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
