"""Seeded random texts for the near-duplicate tests: words drawn from a small vocabulary, and copies of a text with
some words replaced (by a vocabulary word plus "x", a word no random text has)."""

from __future__ import annotations

import random
from collections.abc import Sequence

_VOCABULARY = """the a my card bank money transfer account pending refund payment balance app phone top up cash
why how when is not has been blocked stolen abroad fee charged twice limit verify identity statement salary loan rate"""
#: The default vocabulary: 37 support-desk (banking) words.
BANKING_WORDS: tuple[str, ...] = tuple(_VOCABULARY.split())


def random_text(rng: random.Random, n: int, words: Sequence[str] = BANKING_WORDS) -> str:
    """``n`` words drawn independently from ``words``."""
    return " ".join(rng.choice(words) for _ in range(n))


def mutate(rng: random.Random, text: str, edits: int, words: Sequence[str] = BANKING_WORDS) -> str:
    """``text`` with ``edits`` randomly chosen word positions (repeats possible) replaced by a new word."""
    out = text.split()
    for _ in range(edits):
        out[rng.randrange(len(out))] = rng.choice(words) + "x"
    return " ".join(out)
