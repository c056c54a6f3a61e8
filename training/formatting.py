"""Chat formatting for training: token ids, assistant-only labels, dynamic padding and length-grouped batches.

Labels come from the tokenizer's own chat template, found by rendering prefixes: for every assistant message
``i`` the text of ``messages[:i]`` plus the generation prompt ends where the assistant's content starts, and the
text of ``messages[:i + 1]`` ends after its end-of-turn marker. The tokens in between are the assistant's, so
they keep their labels; everything else (system, user, the template's role headers) gets -100. This works for
any template that renders prefixes consistently, and each prefix is checked to be a token prefix of the whole.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips

Message = Mapping[str, str]


class FormattingError(ValueError):
    """A conversation cannot be turned into training tokens; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    weight: float = 1.0  # multiplies the loss of each of its label tokens (rehearsal conversations: below 1)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def weighted_label_tokens(self) -> float:
        return self.weight * self.num_label_tokens


@dataclass
class FormattedSet:
    """Tokenized conversations plus a count of every conversation that was changed or left out, and why."""

    examples: list[TokenizedExample] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())


def _render(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):  # transformers 5 returns a str for tokenize=False; be explicit if not
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # The template already wrote any BOS it wants; adding special tokens again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _end_of_turn(span: list[int], special_ids: set[int]) -> int:
    """Length of an assistant span up to and including its last special token (the end-of-turn marker).

    Scaffolding the template writes after that marker (typically a newline) belongs to no one's answer and is
    masked. A template without special end markers keeps the whole span.
    """
    for index in range(len(span) - 1, -1, -1):
        if span[index] in special_ids:
            return index + 1
    return len(span)


def tokenize_conversation(
    tokenizer: Any,
    messages: Sequence[Message],
    max_length: int | None = None,
    overlength: Literal["truncate_left", "drop"] = "truncate_left",
    system_prompt: str | None = None,
) -> TokenizedExample:
    """Token ids and labels (-100 except on assistant content and its end-of-turn token) for one conversation.

    Raises :class:`FormattingError` for conversations that cannot be used (no assistant turn, too long, a
    template that does not render prefixes consistently).
    """
    if tokenizer.chat_template is None:
        raise FormattingError("no_chat_template", "the tokenizer has no chat template")
    for message in messages:
        if not isinstance(message.get("content"), str) or not isinstance(message.get("role"), str):
            raise FormattingError("bad_message", "every message needs a string role and content")
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns:
        raise FormattingError("no_assistant_turn", "nothing to learn from: no assistant message")

    input_ids = _token_ids(tokenizer, _render(tokenizer, messages, generation_prompt=False))
    labels = [IGNORE_INDEX] * len(input_ids)
    special_ids = set(tokenizer.all_special_ids)
    last_start = 0
    for i in assistant_turns:
        start = _token_ids(tokenizer, _render(tokenizer, messages[:i], generation_prompt=True))
        end = _token_ids(tokenizer, _render(tokenizer, messages[: i + 1], generation_prompt=False))
        if input_ids[: len(start)] != start or input_ids[: len(end)] != end or len(end) <= len(start):
            raise FormattingError(
                "template_mismatch",
                f"the chat template does not render message {i} as a prefix of the conversation",
            )
        stop = len(start) + _end_of_turn(end[len(start) :], special_ids)
        labels[len(start) : stop] = input_ids[len(start) : stop]
        last_start = len(start)

    truncated = False
    if max_length is not None and len(input_ids) > max_length:
        cut = len(input_ids) - max_length
        if overlength == "drop":
            raise FormattingError("too_long", f"{len(input_ids)} tokens > max_length {max_length}")
        if cut > last_start:  # the last assistant turn itself would be cut: learning a mid-answer start
            raise FormattingError("too_long", f"the last assistant turn alone exceeds max_length {max_length} tokens")
        input_ids, labels, truncated = input_ids[cut:], labels[cut:], True
    return TokenizedExample(input_ids=input_ids, labels=labels, truncated=truncated)


def format_conversations(
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    max_length: int | None = None,
    overlength: Literal["truncate_left", "drop"] = "truncate_left",
    system_prompt: str | None = None,
) -> FormattedSet:
    """Tokenize every conversation; unusable ones are counted by reason, never dropped silently."""
    result = FormattedSet()
    for messages in conversations:
        try:
            example = tokenize_conversation(tokenizer, messages, max_length, overlength, system_prompt)
        except FormattingError as exc:
            result.dropped[exc.reason] += 1
            continue
        result.truncated += example.truncated
        result.examples.append(example)
    return result


class PaddingCollator:
    """Stack examples into tensors padded to the longest in the batch, on the right.

    Padding positions get attention 0 and label -100, so a pad id equal to EOS (SmolLM2) costs nothing.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, batch: Sequence[TokenizedExample]) -> dict[str, Any]:
        import torch

        width = max(len(example.input_ids) for example in batch)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example.input_ids)
            input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
            labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
            attention[row, :n] = 1
        tensors = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if any(example.weight != 1.0 for example in batch):  # per-position loss weights (training/loss.py)
            weights = torch.tensor([[example.weight] for example in batch], dtype=torch.float32)
            tensors["label_weights"] = weights.expand(len(batch), width) * (labels != IGNORE_INDEX)
        return tensors


class LengthGroupedBatchSampler:
    """Batches of similar-length examples in a seeded random order, a new order per epoch.

    The examples are shuffled, cut into mega-batches of ``batch_size * mega_batch_factor``, each mega-batch is
    sorted by length and cut into batches, and the batches are shuffled. Batches stay random across epochs
    while padding nearly vanishes. With ``group_by_length=False`` it is a plain seeded shuffle.

    ``pools`` (one id per example) keeps examples of different pools out of each other's batches: rehearsal
    conversations (about 170 tokens) batched with intent examples (about 50) would pad every row of the batch to
    the general one's length, and with a 10% share most random batches of 8 hold one.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        mega_batch_factor: int = 32,
        group_by_length: bool = True,
        pools: Sequence[int] | None = None,
        grouped_pools: Sequence[int] = (),
    ) -> None:
        if batch_size < 1 or mega_batch_factor < 1:
            raise ValueError("batch_size and mega_batch_factor must be >= 1")
        if pools is not None and len(pools) != len(lengths):
            raise ValueError(f"{len(pools)} pool ids for {len(lengths)} examples")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.group_by_length = group_by_length
        self.pools = list(pools) if pools is not None else [0] * len(self.lengths)
        self.grouped_pools = set(grouped_pools)  # batched by length even when group_by_length is off

    def __len__(self) -> int:
        counts = Counter(self.pools)
        return sum(-(-n // self.batch_size) for n in counts.values())

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{epoch}")  # a str seed hashes deterministically across runs
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for pool in sorted(set(self.pools)):
            members = [i for i in order if self.pools[i] == pool]
            batches.extend(self._cut(members, self.group_by_length or pool in self.grouped_pools))
        if not self.group_by_length and len(set(self.pools)) == 1:
            return batches  # a plain shuffle: the batches are already in random order
        rng.shuffle(batches)
        return batches

    def _cut(self, order: list[int], grouped: bool) -> list[list[int]]:
        if not grouped:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        mega = self.batch_size * self.mega_batch_factor
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches.extend(group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(0))


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the padded token grid that is padding, for batches of example indices."""
    real = sum(lengths[i] for batch in batches for i in batch)
    grid = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    return 1 - real / grid if grid else 0.0
