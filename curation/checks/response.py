"""What the response checks share (``empty_response``, ``truncated``, ``repetitive``, ``length``, ``refusal``).

They look at the **response** (the final assistant turn: the text a fine-tuned model learns to write). A
prompt-only record (response ``''``) is reported by ``empty_response`` and skipped, with a recorded reason, by the
others. Text in any script works: words are the tokens of :mod:`curation.similarity.shingles` (a Han or kana
character, an emoji or another symbol is a token of its own), so Chinese text is not one giant "word". Scores are
dataset-independent (fixed rule weights, ratios, or a robust z-score scaled to [0, 1]), so a threshold means the
same on every dataset; the hand-checked samples behind each default are in ``docs/CHECKS.md`` and repeated in each
check's docstring.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from curation.checks.spec import Finding

SKIPPED_EMPTY = "empty response (see empty_response)"


def max_score_summary(findings: Sequence[Finding], **extra: Any) -> dict[str, Any]:
    """The summary of a response check: its highest score, and whatever else it reports."""
    scores = [f.score for f in findings]
    return {"max_score": round(max(scores), 4) if scores else 0.0, **extra}


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character (whitespace, control or format characters only)."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)
