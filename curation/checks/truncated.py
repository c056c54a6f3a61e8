"""The ``truncated`` check: the response looks cut off (an unclosed code fence, a trailing connector word, ...)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from curation.checks.response import SKIPPED_EMPTY, is_blank, max_score_summary
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord


class TruncatedConfig(BaseModel):
    """Configuration of ``truncated``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.6, gt=0.0, le=1.0, description="Flag records whose score reaches this.")


#: Words a finished English sentence does not end with (articles, prepositions, conjunctions, auxiliaries).
CONNECTORS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "because",
        "although",
        "though",
        "while",
        "whereas",
        "if",
        "unless",
        "than",
        "that",
        "which",
        "who",
        "whom",
        "whose",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "with",
        "without",
        "into",
        "onto",
        "about",
        "as",
        "like",
        "such",
        "including",
        "between",
        "through",
        "during",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "will",
        "would",
        "can",
        "could",
        "should",
        "may",
        "might",
        "must",
        "shall",
        "do",
        "does",
        "did",
        "my",
        "your",
        "our",
        "their",
        "its",
        "his",
        "her",
        "this",
        "these",
        "those",
        "very",
        "also",
        "then",
        "when",
        "where",
        "whether",
        "e.g",
        "i.e",
    ]
)
#: The weight of each truncation signal: the score is the largest weight among the signals found.
TRUNCATION_SIGNALS: dict[str, float] = {
    "unclosed code fence": 0.9,
    "ends with a connector word": 0.8,
    "ends with a comma, colon or dash": 0.8,
    "unclosed bracket or quote at the end": 0.7,
    "ends mid-sentence": 0.5,
}
_FENCE_RE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_LIST_OR_HEADING_RE = re.compile(r"^\s*([-*+•#>|]|\d+[.)]|[a-zA-Z][.)]\s)")
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_SENTENCE_END_RE = re.compile(r"[.!?。！？](\s|$)")
_TRAILING_WORD_RE = re.compile(r"([A-Za-z][A-Za-z.]*)\W*$")


def _unclosed_bracket(text: str, tail: int = 200) -> bool:
    """An opening bracket in the last ``tail`` characters never closed (closers without opener are ignored,
    so '1)' list markers and ':)' do not count)."""
    stack: list[tuple[str, int]] = []
    for i, ch in enumerate(text):
        if ch in _OPEN:
            stack.append((ch, i))
        elif ch in _CLOSE and stack and stack[-1][0] == _CLOSE[ch]:
            stack.pop()
    return bool(stack) and stack[-1][1] >= len(text) - tail and not text.rstrip().endswith(":(")


def truncation_signals(response: str) -> list[str]:
    """The truncation signals (keys of :data:`TRUNCATION_SIGNALS`) found in ``response``.

    Guarantees: a response of fewer than 5 words (a class label such as ``card_arrival``, a short answer) and
    an empty response have none; text inside a closed code block never counts as prose.
    """
    text = response.rstrip()
    words = text.split()
    if len(words) < 5:
        return []
    found = []
    if len(_FENCE_RE.findall(text)) % 2 == 1:
        found.append("unclosed code fence")
        return found  # the rest of the text is code: prose rules do not apply
    if "```" in text or "~~~" in text:
        text_outside = re.sub(r"(```|~~~).*?(```|~~~)", " ", text, flags=re.DOTALL).rstrip()
        if text.endswith(("```", "~~~")) or not text_outside:
            return found  # ends with a closed code block
        text = text_outside
    last_line = text.splitlines()[-1].strip() if text else ""
    last = text[-1] if text else ""
    trailing = _TRAILING_WORD_RE.search(text[-40:])
    if last.isalpha() and trailing and trailing.group(1).lower() in CONNECTORS and len(last_line.split()) >= 3:
        found.append("ends with a connector word")
    elif last in ",:" or (last in "-–—" and not last_line.startswith(("-", "–", "—"))):
        found.append("ends with a comma, colon or dash")
    if _unclosed_bracket(text):
        found.append("unclosed bracket or quote at the end")
    prose = (
        last.isalnum()
        and len(words) >= 20
        and len(_SENTENCE_END_RE.findall(text)) >= 2
        and len(last_line.split()) >= 8
        and not _LIST_OR_HEADING_RE.match(last_line)
    )
    if prose and not found:
        found.append("ends mid-sentence")
    return found


def check_truncated(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``truncated``: the response looks cut off. Score = the largest weight among the signals found
    (:data:`TRUNCATION_SIGNALS`: unclosed code fence 0.9, trailing connector word 0.8, trailing comma/colon/dash
    0.8, unclosed bracket near the end 0.7, a long prose answer that ends mid-sentence 0.5); 0.0 when none.

    Default threshold 0.6: flags the structural signals, not "ends mid-sentence" alone. Measured (docs/CHECKS.md):
    the strong signals were real cut-offs or malformed answers in the hand-checked samples, while a prose answer
    without a final full stop is often a finished answer written without one (toolformer answers that end with
    a tool call, poems, slogans), so it is reported (score 0.5, in details) but not flagged by default.
    Responses of fewer than 5 words are never truncated (labels, short answers); prompt-only records are skipped.
    """
    config = ctx.config if ctx is not None and isinstance(ctx.config, TruncatedConfig) else TruncatedConfig()
    findings = []
    counts: Counter[str] = Counter()
    for rec in records:
        if is_blank(rec.response):
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": SKIPPED_EMPTY}))
            continue
        signals = truncation_signals(rec.response)
        counts.update(signals)
        score = max((TRUNCATION_SIGNALS[s] for s in signals), default=0.0)
        flagged = score >= config.threshold
        reason = f"response looks cut off: {', '.join(signals)}" if flagged else None
        findings.append(Finding(rec.record_id, score, flagged, reason, {"signals": signals} if signals else None))
    return CheckOutput(findings, summary=max_score_summary(findings, threshold=config.threshold, signals=dict(counts)))


SPEC = CheckSpec(
    "truncated",
    check_truncated,
    higher_score="a stronger sign that the response was cut off",
    config=TruncatedConfig,
    shard_summary={"max_score": "max", "threshold": "same", "signals": "sum"},
    default=True,
)
