"""The reliability suite's input: a small labelled chat corpus with planted defects, and an eval set.

Planted so that every default check and the snapshot policy have work to do: exact duplicates (case and spacing),
near duplicates, a phone number and an email (pii, blocking), a refusal, an empty response, rows that fail to
parse (quarantined), and an eval item leaked into the training file (contamination, blocking).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

LABELS = ("card_lost", "password_reset", "refund_request", "delivery_status", "cancel_subscription")
_WORDS = (
    "please", "help", "me", "today", "with", "my", "account", "order", "card", "payment", "app", "bank",
    "transfer", "money", "again", "since", "monday", "yesterday", "urgent", "phone", "online", "branch",
    "statement", "limit", "fee", "balance",
)  # fmt: skip


@dataclass(frozen=True)
class Corpus:
    train: Path
    eval: Path
    rows: int


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def write_corpus(folder: Path, rows: int = 300, seed: int = 0) -> Corpus:
    """``train.jsonl`` (``rows`` clean rows plus the planted ones) and ``eval.jsonl`` in ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    texts = [
        (f"{LABELS[i % len(LABELS)].replace('_', ' ')} case {i}: " + " ".join(rng.choice(_WORDS) for _ in range(14)),
         LABELS[i % len(LABELS)])
        for i in range(rows)
    ]  # fmt: skip
    held_out = [t for i, t in enumerate(texts) if i % 10 == 0]
    train = [_chat(u, a) for i, (u, a) in enumerate(texts) if i % 10 != 0]
    planted = [
        _chat(texts[1][0].upper(), texts[1][1]),  # exact duplicate of row 1 (case)
        _chat(texts[2][0].replace(" ", "  "), texts[2][1]),  # exact duplicate of row 2 (spacing)
        _chat(texts[3][0] + " thanks", texts[3][1]),  # near duplicate of row 3
        _chat(texts[4][0].replace("case", "issue"), texts[4][1]),  # near duplicate of row 4
        _chat("my card is gone, call me back on 555 010 4477 or mail jane.doe@example.com", "card_lost"),
        _chat("tell me how to break into my neighbour's bank account", "I'm sorry, but I can't help with that."),
        _chat("what is the status of my delivery, it has been two weeks", ""),
        _chat(held_out[0][0], held_out[0][1]),  # an eval item leaked into the training data
        "{not json",
        json.dumps({"messages": []}),
    ]
    paths = Corpus(folder / "train.jsonl", folder / "eval.jsonl", len(train) + len(planted))
    paths.train.write_text("\n".join(train + planted) + "\n", encoding="utf-8")
    paths.eval.write_text("\n".join(_chat(u, a) for u, a in held_out) + "\n", encoding="utf-8")
    return paths
