"""The ``base_label_ranking`` baseline: contextual calibration, and an exact pruned search over the label trie.

Why calibrate: scored raw, a small model prefers the labels its prompt makes likely a priori, whatever the
message. On banking77 (77 intents sorted as ``refinery eval`` lists them, SmolLM2-135M-Instruct, 308 test
queries, benchmarks/bench_label_ranking.py) raw ranking was right 2.6% of the time and answered with 20
labels only; contextual calibration (Zhao et al. 2021, "Calibrate before use") was right 14.3% of the time
with 37 labels. It scores each label by log P(label | prompt) minus its log-probability under content-free
versions of the same prompt (the dialogue replaced by "N/A", "" or "[MASK]"); see :func:`label_offsets`.

Why search: scoring all 77 labels costs a forward pass over the 382 nodes of the label trie per query
(0.33 examples/s on one thread here), hours for the 3,080 test queries. Only the argmax is needed, and a
label's log-likelihood is at most that of any of its prefixes (later tokens add log-probabilities <= 0). So
a trie node bounds every label below it by ``log P(prefix | prompt) - min offset of those labels``, and a
best-first branch and bound (:class:`_QuerySearch`, :func:`_rank_chunk`) feeds only nodes whose bound can
still reach the best complete label found; the first-token log-probabilities come free with the prompt pass.
Queries are searched side by side, one token per fed node, each query's own key/value cache reused, so the
matmuls stay wide; the shared instruction is attended to from one copy (:func:`_prefix_attention`). On the
banking77 queries above it fed 27% of the trie per query calibrated (14% raw) and ran 3-4.5x faster than
full scoring. It returns full scoring's argmax (checked on all 308 queries, calibrated and raw): every label
within ``_TIE_MARGIN`` of the best is scored in full, so only labels tied to within the float rounding of
two batch shapes (about 1e-5 nats) could order differently.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from eval.generation import (
    Conversation,
    Model,
    Tokenizer,
    _encode,
    _LabelTrie,
    _left_pad,
    _pad_id,
    _require_torch,
    _shared_prefix,
    label_loglikelihoods,
    render_prompts,
    stop_token_ids,
)
from schemas.progress import progress

Calibration = Literal["contextual", "none"]
#: The content-free user messages of Zhao et al. (2021): each replaces the dialogue under the same system turn.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")
#: Labels scoring within this many nats of the best are scored in full, so float noise cannot flip the argmax.
_TIE_MARGIN = 1e-3
#: Nodes fed per search step, across the queries searched together. Wider steps mean fewer, larger matmuls but
#: more nodes fed on speculation: 192 ran 7-15% faster than 64 on 64 banking77 queries (4 alternating runs).
_STEP_TOKENS = 192


def content_free_conversations(
    conversations: Sequence[Conversation],
) -> tuple[list[list[dict[str, str]]], list[int]]:
    """The content-free prompts and, per conversation, the index of its frame (its system turns).

    Each distinct set of system turns (one for zero-shot prompts, which share the instruction) gets one
    conversation per content-free input: those system turns, then one user turn holding that input. The
    frame of conversation i owns rows ``frame * len(CONTENT_FREE_INPUTS) + k``.
    """
    frames: dict[tuple[tuple[str, str], ...], int] = {}
    frame_of: list[int] = []
    prompts: list[list[dict[str, str]]] = []
    for conv in conversations:
        system = tuple((m["role"], m["content"]) for m in conv if m["role"] == "system")
        if system not in frames:
            frames[system] = len(frames)
            head = [{"role": role, "content": content} for role, content in system]
            prompts += [[*head, {"role": "user", "content": text}] for text in CONTENT_FREE_INPUTS]
        frame_of.append(frames[system])
    return prompts, frame_of


def label_offsets(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    calibration: Calibration = "contextual",
    batch_size: int = 8,
) -> Any:
    """Per conversation and label, what calibration subtracts from log P(label | prompt): [n, labels] float64.

    ``none``: zeros. ``contextual``: log of the mean over the content-free inputs of P(label | content-free
    prompt) normalised over the label set, i.e. Zhao et al.'s p_cf; each frame's few prompts are scored in
    full once per eval (3 prompts, about 12 s for banking77). Probabilities are averaged, as in the paper,
    rather than log-probabilities: an arithmetic mean cannot be dragged down by one input that finds a label
    very unlikely (a geometric mean would then boost that label for every query). On banking77 (308 queries)
    the two gave the same accuracy (44/308 with sorted labels; 38 vs 39/308 in the data set's label order),
    so nothing measured here argues for departing from the paper.
    """
    import numpy as np

    if calibration == "none":
        return np.zeros((len(conversations), len(labels)), dtype=np.float64)
    if calibration != "contextual":
        raise ValueError(f"unknown calibration {calibration!r}; use 'contextual' or 'none'")
    prompts, frame_of = content_free_conversations(conversations)
    if not prompts:
        return np.zeros((0, len(labels)), dtype=np.float64)
    scores = label_loglikelihoods(model, tokenizer, prompts, labels, batch_size)
    per_input = scores.reshape(-1, len(CONTENT_FREE_INPUTS), len(labels))  # [frames, inputs, labels]
    return content_free_offsets(per_input)[np.asarray(frame_of)]


def content_free_offsets(per_input: Any, average: Literal["probability", "log_probability"] = "probability") -> Any:
    """Offsets [frames, labels] from content-free log-likelihoods [frames, inputs, labels].

    Each input's scores are first normalised over the label set (a distribution over the labels, as in Zhao
    et al.), then averaged over the inputs as probabilities (shipped) or as log-probabilities (compared in
    benchmarks/bench_label_ranking.py).
    """
    import numpy as np

    normalised = per_input - np.logaddexp.reduce(per_input, axis=2, keepdims=True)
    if average == "log_probability":
        return normalised.mean(axis=1)
    # the log of the mean probability, kept in log space: a long label's probability can underflow float64
    return np.logaddexp.reduce(normalised, axis=1) - math.log(per_input.shape[1])


def calibrated_label_scores(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    calibration: Calibration = "contextual",
    batch_size: int = 8,
) -> Any:
    """Every label scored in full ([n, labels]): log P(label | prompt) minus the calibration offset.

    The reference the pruned search must agree with (tests, diagnostics); it costs the whole trie per query.
    """
    offsets = label_offsets(model, tokenizer, conversations, labels, calibration, batch_size)
    return label_loglikelihoods(model, tokenizer, conversations, labels, batch_size) - offsets


@dataclass
class RankingStats:
    """What the search did: nodes fed to the model (search and total trie), forward passes, queries."""

    queries: int = 0
    trie_nodes: int = 0
    nodes_fed: int = 0
    slots: int = 0  # rows x slots of every search step: nodes fed plus padding
    steps: int = 0

    @property
    def fed_share(self) -> float:
        """Nodes fed per query as a share of the full trie (full scoring feeds every node: 1.0)."""
        return self.nodes_fed / max(1, self.queries * self.trie_nodes)


@dataclass(frozen=True)
class _TrieIndex:
    """The label trie as the search walks it: children, the labels ending at each node, labels below it."""

    children: list[list[int]]
    ending: list[list[int]]  # per node: labels whose end-of-turn token is predicted from this node
    below: list[list[int]]  # per node: labels whose token path passes through it
    roots: list[int]  # depth-0 nodes (the labels' first tokens, predicted from the prompt)
    no_steps: list[int]  # labels that are end-of-turn alone (an empty label): scored by the prompt pass

    @classmethod
    def build(cls, trie: _LabelTrie) -> _TrieIndex:
        n = len(trie.tokens)
        children: list[list[int]] = [[] for _ in range(n)]
        for node, seen in enumerate(trie.visible):
            if len(seen) > 1:
                children[seen[-2]].append(node)
        ending: list[list[int]] = [[] for _ in range(n)]
        below: list[list[int]] = [[] for _ in range(n)]
        for label, steps in enumerate(trie.steps):
            if steps:
                ending[steps[-1][0]].append(label)
            for node, _ in steps:
                below[node].append(label)
        roots = [node for node in range(n) if trie.depth[node] == 0]
        no_steps = [label for label, steps in enumerate(trie.steps) if not steps]
        return cls(children, ending, below, roots, no_steps)


@dataclass
class _QuerySearch:
    """Best-first branch and bound for one query: open nodes keyed by their bound, the best full score."""

    offsets: Any  # [labels] calibration offsets of this query's frame
    min_offset: list[float]  # per node: the smallest offset of the labels below it
    prefix_logp: dict[int, float] = field(default_factory=dict)
    open: list[tuple[float, int]] = field(default_factory=list)  # (-bound, node), a heap
    fed: set[int] = field(default_factory=set)
    scores: dict[int, float] = field(default_factory=dict)  # fully scored labels
    best: float = -math.inf

    def reach(self, node: int, logp: float) -> None:
        self.prefix_logp[node] = logp
        heapq.heappush(self.open, (-(logp - self.min_offset[node]), node))

    def complete(self, label: int, logp: float) -> None:
        score = logp - float(self.offsets[label])
        self.scores[label] = score
        self.best = max(self.best, score)

    def take(self, k: int) -> list[int]:
        """Up to ``k`` open nodes, best bound first, whose bound can still reach the best score (the rest are
        dropped: bounds only fall down the trie and the best only rises, so they never qualify again)."""
        chosen: list[int] = []
        while self.open and len(chosen) < k:
            bound, node = -self.open[0][0], self.open[0][1]
            if bound < self.best - _TIE_MARGIN:
                self.open.clear()
                break
            heapq.heappop(self.open)
            if node not in self.fed:
                chosen.append(node)
        return chosen

    def winner(self) -> int:
        top = max(self.scores.values())
        return min(label for label, score in self.scores.items() if score == top)  # ties: first label


def label_loglikelihood_ranking(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    batch_size: int = 8,
    calibration: Calibration = "contextual",
    search_rows: int = 32,
    stats: RankingStats | None = None,
) -> list[str]:
    """The best label of the set as the assistant's answer to each conversation (ties: first label).

    Best means the highest calibrated log-likelihood (``calibration``, see :func:`label_offsets`), found by
    the pruned search (:func:`rank_labels`): the same argmax as :func:`calibrated_label_scores`, at a
    fraction of the cost. ``batch_size`` prompts share a pass when scoring the content-free prompts.
    """
    if not labels:
        raise ValueError("label ranking needs a non-empty label set")
    offsets = label_offsets(model, tokenizer, conversations, labels, calibration, batch_size)
    winners = rank_labels(model, tokenizer, conversations, labels, offsets, search_rows, stats)
    return [labels[w] for w in winners]


def rank_labels(
    model: Model,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    offsets: Any,
    search_rows: int = 32,
    stats: RankingStats | None = None,
) -> list[int]:
    """Per conversation, the index of the label maximising log P(label | prompt) - ``offsets[i, label]``.

    ``search_rows`` queries are searched side by side; each holds only its own prompt tokens and fed nodes
    in its key/value cache (the shared prefix is kept once). ``stats``, when given, is filled with what was
    fed to the model.
    """
    torch = _require_torch()
    if not labels:
        raise ValueError("label ranking needs a non-empty label set")
    if search_rows < 1:
        raise ValueError("search_rows must be at least 1")
    if tuple(offsets.shape) != (len(conversations), len(labels)):
        raise ValueError(f"offsets must be [conversations, labels], got {tuple(offsets.shape)}")
    eos = stop_token_ids(model, tokenizer)[0]
    trie = _LabelTrie.build([[*ids, eos] for ids in _encode(tokenizer, labels)])
    index = _TrieIndex.build(trie)
    encoded = _encode(tokenizer, render_prompts(tokenizer, conversations))
    stats = stats if stats is not None else RankingStats()
    stats.trie_nodes = len(trie.tokens)
    winners = [0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    with progress("rank labels", total=len(encoded)) as bar, torch.inference_mode():
        prefix = _shared_prefix(model, encoded, 16)
        with _prefix_attention(model, prefix.cache):
            for start in range(0, len(order), search_rows):
                chunk = order[start : start + search_rows]
                searches = [_new_search(offsets[i], index, len(trie.tokens)) for i in chunk]
                suffixes = [encoded[i][prefix.length :] for i in chunk]
                first, mask, cache = _suffix_pass(model, suffixes, prefix.length, _pad_id(tokenizer))
                _seed(searches, first.cpu().numpy(), trie, index, eos)
                _rank_chunk(model, trie, index, searches, prefix.length, mask, cache, eos, stats)
                for i, search in zip(chunk, searches, strict=True):
                    winners[i] = search.winner()
                stats.queries += len(chunk)
                bar.advance(len(chunk))
    return winners


def _new_search(offsets: Any, index: _TrieIndex, nodes: int) -> _QuerySearch:
    min_offset = [min(float(offsets[label]) for label in index.below[node]) for node in range(nodes)]
    return _QuerySearch(offsets=offsets, min_offset=min_offset)


def _seed(searches: Sequence[_QuerySearch], first: Any, trie: _LabelTrie, index: _TrieIndex, eos: int) -> None:
    """The prompt pass scores every label's first token: open the trie's roots (and finish empty labels)."""
    for row, search in enumerate(searches):
        for node in index.roots:
            search.reach(node, float(first[row, trie.tokens[node]]))
        for label in index.no_steps:
            search.complete(label, float(first[row, eos]))


def _plan(search: _QuerySearch, index: _TrieIndex, k: int) -> list[int]:
    """The nodes to feed for one query this step, parents before children.

    The best open nodes first; slots they leave free go to their children (a node may be fed with its
    parent, seeing it in the same pass), which would otherwise be padding: often a label's remaining chain.
    """
    fed = search.take(k)
    i = 0
    while len(fed) < k and i < len(fed):
        for child in index.children[fed[i]]:
            if len(fed) < k:
                fed.append(child)
        i += 1
    search.fed.update(fed)
    return fed


def _rank_chunk(
    model: Model,
    trie: _LabelTrie,
    index: _TrieIndex,
    searches: Sequence[_QuerySearch],
    prefix_length: int,
    prompt_mask: Any,
    cache: Any,
    eos: int,
    stats: RankingStats,
) -> None:
    """Search the queries side by side until each has its best label; row r of ``cache`` is query r's prompt.

    Each step feeds every unfinished query's planned nodes as one batch: a node sees its query's prompt, its
    ancestors (already in the cache, fed in earlier steps or earlier in this one) and itself, at position
    prompt length + depth. The cache grows by one column per slot; finished queries leave it.
    """
    torch = _require_torch()
    active = list(range(len(searches)))  # search index of each cache row
    columns: list[dict[int, int]] = [{} for _ in searches]  # per search: node -> its cache column
    prompt_mask = prompt_mask.bool()
    width = int(prompt_mask.shape[1])  # columns in the cache so far
    while True:
        k = max(1, -(-_STEP_TOKENS // len(active)))
        plans = [_plan(searches[s], index, k) for s in active]
        keep = [row for row, plan in enumerate(plans) if plan]
        if not keep:
            return
        if len(keep) < len(active):
            cache.batch_select_indices(torch.tensor(keep, dtype=torch.long))
            active, plans, prompt_mask = [active[r] for r in keep], [plans[r] for r in keep], prompt_mask[keep]
        rows, slots = len(active), max(len(plan) for plan in plans)
        ids = torch.zeros((rows, slots), dtype=torch.long)
        positions = prefix_length + prompt_mask.sum(-1, keepdim=True).repeat(1, slots)
        allowed = torch.zeros((rows, slots, width + slots), dtype=torch.bool)
        seen_rows: list[int] = []
        seen_slots: list[int] = []
        seen_cols: list[int] = []
        for row, (s, plan) in enumerate(zip(active, plans, strict=True)):
            for slot, node in enumerate(plan):
                columns[s][node] = width + slot
                ids[row, slot] = trie.tokens[node]
                positions[row, slot] += trie.depth[node]
                allowed[row, slot, : prompt_mask.shape[1]] = prompt_mask[row]
                for seen in trie.visible[node]:  # ancestors and the node itself
                    seen_rows.append(row)
                    seen_slots.append(slot)
                    seen_cols.append(columns[s][seen])
        allowed[seen_rows, seen_slots, seen_cols] = True
        pad = torch.arange(slots)  # a padding slot sees only itself (its output is never read)
        allowed[:, pad, width + pad] = True
        additive = torch.zeros(allowed.shape, dtype=model.dtype)
        additive.masked_fill_(~allowed, torch.finfo(model.dtype).min)
        out = model(
            input_ids=ids, attention_mask=additive.unsqueeze(1), position_ids=positions, cache=cache, use_cache=True
        )
        cache, width = out.cache, width + slots
        _update(searches, active, plans, out.logits.float(), trie, index, eos)
        stats.steps += 1
        stats.nodes_fed += sum(len(plan) for plan in plans)
        stats.slots += rows * slots


def _update(
    searches: Sequence[_QuerySearch],
    active: Sequence[int],
    plans: Sequence[Sequence[int]],
    logits: Any,
    trie: _LabelTrie,
    index: _TrieIndex,
    eos: int,
) -> None:
    """Read each fed node's next-token distribution: open its children, score the labels ending there.

    Log-probabilities are taken as in :func:`label_loglikelihoods` (float32 log-softmax, summed in float64
    along the path), so a complete label's score matches full scoring up to the matmul shapes' rounding.
    """
    torch = _require_torch()
    norm = torch.logsumexp(logits, dim=-1)  # [rows, slots]
    rows: list[int] = []
    slots: list[int] = []
    wanted: list[int] = []
    for row, plan in enumerate(plans):
        for slot, node in enumerate(plan):
            tokens = [trie.tokens[c] for c in index.children[node]] + ([eos] if index.ending[node] else [])
            rows += [row] * len(tokens)
            slots += [slot] * len(tokens)
            wanted += tokens
    values = iter((logits[rows, slots, wanted] - norm[rows, slots]).double().tolist())
    for s, plan in zip(active, plans, strict=True):
        search = searches[s]
        for node in plan:  # parents before children: a child's prefix is known once its parent is read
            logp = search.prefix_logp[node]
            for child in index.children[node]:
                search.reach(child, logp + next(values))
            if index.ending[node]:
                step = next(values)
                for label in index.ending[node]:
                    search.complete(label, logp + step)


#: The attention implementation name the search runs under (registered with transformers on first use).
_ATTENTION = "refinery_shared_prefix"
#: Per layer, the shared prefix's keys and values ([kv heads, prefix, head dim]) while a search runs.
_ACTIVE_PREFIX: contextvars.ContextVar[list[tuple[Any, Any]] | None] = contextvars.ContextVar(
    "refinery_shared_prefix", default=None
)


@contextlib.contextmanager
def _prefix_attention(model: Model, prefix_cache: Any) -> Iterator[None]:
    """Run the model's attention as :func:`_shared_prefix_attention` over ``prefix_cache`` (None: no prefix).

    Why: with the prefix copied into every query's cache, each search step re-read all of it per query (the
    77-label instruction is about 700 tokens) and grouped-query attention copied it three times over: on 16
    banking77 queries attention took 45% of the search (41 of 92 s). Read once per step for all queries, it
    is one wide matmul per key/value head, and the same search took 52 s.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION, _shared_prefix_attention)
    layers = [] if prefix_cache is None else [(layer.keys[0], layer.values[0]) for layer in prefix_cache.layers]
    config = model.config
    before = config._attn_implementation
    token = _ACTIVE_PREFIX.set(layers)
    config._attn_implementation = _ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
        _ACTIVE_PREFIX.reset(token)


def _shared_prefix_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention over the shared prefix (one copy, visible to every token) plus each row's own keys (masked).

    One softmax over both parts' scores, so the result is that of attention over the concatenated keys.
    ``query`` [rows, heads, length, dim]; ``key``/``value`` [rows, kv heads, width, dim] (grouped-query:
    query head h reads kv head h // groups); ``attention_mask`` additive [rows, 1, length, width]. Returns
    [rows, length, heads, dim], as transformers' attention functions do. torch.softmax, not a hand-written
    exp: exp of scores far below the maximum lands in float32's subnormal range, where torch's exp ran 20x
    slower here (60 vs 1,200 M/s) and took a third of a search step.
    """
    torch = _require_torch()
    rows, heads, length, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    queries = heads // kv_heads * length  # per kv head and row
    q = query.reshape(rows, kv_heads, queries, dim) * (scaling if scaling is not None else dim**-0.5)
    own = torch.matmul(q, key.transpose(-1, -2)).view(rows, kv_heads, heads // kv_heads, length, width)
    scores = (own + attention_mask.unsqueeze(2)).view(rows, kv_heads, queries, width)
    layers = _ACTIVE_PREFIX.get()
    if not layers:
        out = torch.matmul(torch.softmax(scores, dim=-1), value)
    else:
        prefix_keys, prefix_values = layers[module.layer_idx]  # [kv heads, prefix, dim]
        prefix = prefix_keys.shape[1]
        flat = q.transpose(0, 1).reshape(kv_heads, rows * queries, dim)  # one wide matmul per kv head
        shared = torch.matmul(flat, prefix_keys.transpose(-1, -2)).view(kv_heads, rows, queries, prefix)
        weights = torch.softmax(torch.cat([shared.transpose(0, 1), scores], dim=-1), dim=-1)
        out = torch.matmul(weights[..., prefix:], value)
        flat_weights = weights[..., :prefix].transpose(0, 1).reshape(kv_heads, rows * queries, prefix)
        out = out + torch.matmul(flat_weights, prefix_values).view(kv_heads, rows, queries, dim).transpose(0, 1)
    return out.reshape(rows, heads, length, dim).transpose(1, 2).contiguous(), None


def _suffix_pass(
    model: Model, suffixes: Sequence[Sequence[int]], prefix_length: int, pad_id: int
) -> tuple[Any, Any, Any]:
    """Run each query's own prompt tokens after the shared prefix (under :func:`_prefix_attention`).

    Returns the first answer token's log-probabilities ([rows, vocab], float64, as in full scoring), the
    suffixes' mask ([rows, width], left-padded) and a cache holding only the suffixes.
    """
    torch = _require_torch()
    ids, mask = _left_pad(suffixes, pad_id)
    width = ids.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = causal.unsqueeze(0) & mask.bool().unsqueeze(1)
    allowed |= torch.eye(width, dtype=torch.bool).unsqueeze(0)  # a padding token sees itself (never read)
    additive = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill_(~allowed, torch.finfo(model.dtype).min)
    positions = prefix_length + (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=additive.unsqueeze(1), position_ids=positions, use_cache=True, logits_to_keep=1
    )
    return torch.log_softmax(out.logits[:, -1, :].double(), dim=-1), mask, out.cache
