"""Cheap heuristic checks of one record at a time: empty, truncated, repetitive, refused or oddly long responses.

Every check follows the scan contract (:mod:`curation.check_types`): one :class:`Finding` per record, a score in
[0, 1] where **higher = worse**, a flag, a short reason for flagged records and a summary dict. Scores are
dataset-independent (fixed rule weights, ratios, or a robust z-score scaled to [0, 1]), so a threshold means the
same on every dataset. The default thresholds are justified by hand-checked samples of real data; the figures
are in ``docs/CHECKS.md`` and repeated in each check's docstring.

All checks look at the **response** (the final assistant turn: the text a fine-tuned model learns to write).
A prompt-only record (response ``''``) is reported by ``empty_response`` and skipped, with a recorded reason,
by the others. Text in any script works: words are the tokens of :mod:`curation.similarity.shingles` (a Han or kana
character, an emoji or another symbol is a token of its own), so Chinese text is not one giant "word".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.check_types import CheckContext, CheckOutput, Finding, ScanRecord
from curation.similarity.shingles import shingle_batch

SKIPPED_EMPTY = "empty response (see empty_response)"


def _summary(findings: Sequence[Finding], **extra: Any) -> dict[str, Any]:
    scores = [f.score for f in findings]
    return {"max_score": round(max(scores), 4) if scores else 0.0, **extra}


def _is_blank(text: str) -> bool:
    """True when ``text`` has no visible character (whitespace, control or format characters only)."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)


# --------------------------------------------------------------------------------------------- empty_response


def check_empty_response(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``empty_response``: score 1.0 (flagged) when the response has no visible character: empty (a prompt-only
    record, or an assistant turn with no text), whitespace, or only invisible control/format characters such as
    zero-width spaces; else 0.0. No threshold: the rule is exact.

    Measured: 0 of 9,999 banking77, 427 self_instruct, 500 sharegpt, 400 oasst and 7,673 toolformer records
    (ingest already refuses training rows without an assistant turn); a planted-defect fixture proves the flag.
    """
    findings = []
    prompt_only = 0
    for rec in records:
        if _is_blank(rec.response):
            what = "no response (prompt-only record)" if rec.response == "" else "response is whitespace only"
            prompt_only += rec.response == ""
            findings.append(Finding(rec.record_id, 1.0, True, what))
        else:
            findings.append(Finding(rec.record_id, 0.0, False))
    return CheckOutput(findings, summary=_summary(findings, prompt_only=prompt_only))


# -------------------------------------------------------------------------------------------------- truncated


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
        if _is_blank(rec.response):
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": SKIPPED_EMPTY}))
            continue
        signals = truncation_signals(rec.response)
        counts.update(signals)
        score = max((TRUNCATION_SIGNALS[s] for s in signals), default=0.0)
        flagged = score >= config.threshold
        reason = f"response looks cut off: {', '.join(signals)}" if flagged else None
        findings.append(Finding(rec.record_id, score, flagged, reason, {"signals": signals} if signals else None))
    return CheckOutput(findings, summary=_summary(findings, threshold=config.threshold, signals=dict(counts)))


# ------------------------------------------------------------------------------------------------- repetitive


class RepetitiveConfig(BaseModel):
    """Configuration of ``repetitive``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="Flag records whose score reaches this.")
    ngram: int = Field(5, ge=2, le=16, description="Words per n-gram of the repeated n-gram ratio.")
    min_line_chars: int = Field(12, ge=1, description="Shorter lines ('}', '---', blank) are ignored.")


def repeated_line_ratio(text: str, min_line_chars: int = 12) -> float:
    """Fraction of the lines (of at least ``min_line_chars`` visible characters) that repeat an earlier line;
    0.0 with fewer than 3 such lines."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if len(line) >= min_line_chars]
    if len(lines) < 3:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def check_repetitive(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``repetitive``: the response repeats itself (a generation loop, copy-paste). Score = the larger of the
    repeated line ratio (:func:`repeated_line_ratio`) and the repeated n-gram ratio (1 - distinct / total word
    ``ngram``-grams, computed when the response has at least 2 * ngram words, else 0). Both are fractions of the
    text that add nothing new, so 0.5 means "half of it is a repeat" on any dataset.

    Default threshold 0.5: natural answers, lists and code in the real sets stay far below it (docs/CHECKS.md:
    p99 of the score is 0.12 on self_instruct, 0.19 on oasst, 0.24 on toolformer, 0 on sharegpt and banking77;
    the maximum anywhere is 0.43); a degenerate loop is near 1.
    """
    config = ctx.config if ctx is not None and isinstance(ctx.config, RepetitiveConfig) else RepetitiveConfig()
    batch = shingle_batch([r.response for r in records], config.ngram)
    words = shingle_batch([r.response for r in records], 1).counts
    findings = []
    for i, rec in enumerate(records):
        if _is_blank(rec.response):
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": SKIPPED_EMPTY}))
            continue
        line_ratio = repeated_line_ratio(rec.response, config.min_line_chars)
        grams = batch.of(i)
        ngram_ratio = 0.0
        if words[i] >= 2 * config.ngram:
            ngram_ratio = 1.0 - len(np.unique(grams)) / len(grams)
        score = round(max(line_ratio, ngram_ratio), 6)
        flagged = score >= config.threshold
        reason = None
        if flagged:
            reason = (
                f"repetitive response: {line_ratio:.0%} repeated lines, {ngram_ratio:.0%} repeated {config.ngram}-grams"
            )
        details = {"repeated_lines": round(line_ratio, 4), "repeated_ngrams": round(ngram_ratio, 4)} if score else None
        findings.append(Finding(rec.record_id, score, flagged, reason, details))
    return CheckOutput(findings, summary=_summary(findings, threshold=config.threshold))


# ----------------------------------------------------------------------------------------------------- length


class LengthConfig(BaseModel):
    """Configuration of ``length``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    z_threshold: float = Field(3.5, gt=0.0, description="Flag records at least this many robust sigmas away.")
    min_records: int = Field(20, ge=2, description="With fewer non-empty responses no distribution is estimated.")
    min_log_scale: float = Field(
        0.5, ge=0.0, description="Floor of the robust sigma of log length (0.5: 3.5 sigmas is at least 5.8x)."
    )
    max_tail_fraction: float = Field(
        0.02, gt=0.0, le=1.0, description="Flag only when at most this fraction of records is as extreme or more."
    )


#: However small the dataset, this many records as extreme or more still count as rare.
MIN_RARE = 3
#: |z| at which the score reaches 1.0 (so the default z_threshold 3.5 is score 0.5).
Z_SCALE = 7.0


def robust_location_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, robust sigma) of ``values``: sigma = 1.4826 * MAD (the standard deviation for normal data).

    When more than half the values are equal (MAD 0), sigma falls back to 1.2533 * mean absolute deviation
    (again the standard deviation for normal data); it is 0.0 only when every value is equal.
    """
    median = float(np.median(values))
    deviation = np.abs(values - median)
    scale = 1.4826 * float(np.median(deviation))
    if scale == 0.0:
        scale = 1.2533 * float(np.mean(deviation))
    return median, scale


def check_length(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``length``: the response is unusually short or long **for this dataset**. Length = words (tokens of
    :mod:`curation.similarity.shingles`, so CJK characters count one each); z = robust z-score of log(1 + words) against
    the scanned records' own distribution (median, and 1.4826 * MAD floored at ``min_log_scale``); score =
    min(1, |z| / 7), so score 0.5 is 3.5 robust sigmas whatever the dataset's typical length.

    Flagged when |z| >= ``z_threshold`` (3.5, the Iglewicz-Hoaglin cut-off) **and** the record is rare: at most
    ``max_tail_fraction`` (2%) of the responses, or 3 in a small dataset, are as short (as long) or more.
    Both extra conditions come from real data (docs/CHECKS.md): without the floor, toolformer's tight
    distribution (sigma 0.27) flagged 84 answers of 38-76 words against a median of 14, none a problem;
    without the rarity rule, sharegpt's 167 "You too!" replies (a third of the set) were flagged as too short.
    With them, a length must differ from the median by at least e^(3.5 * 0.5) = 5.8x and be rare to be
    flagged. With fewer than ``min_records`` non-empty responses, or when all have the same length,
    nothing is flagged and the summary says why. Empty responses are skipped (see ``empty_response``).
    """
    config = ctx.config if ctx is not None and isinstance(ctx.config, LengthConfig) else LengthConfig()
    lengths = shingle_batch([r.response for r in records], 1).counts.astype(np.float64)
    present = np.array([not _is_blank(r.response) for r in records], dtype=bool)
    summary: dict[str, Any] = {"z_threshold": config.z_threshold}
    n_present = int(present.sum())
    if n_present < config.min_records:
        note = f"fewer than {config.min_records} non-empty responses ({n_present}): no distribution"
        findings = [Finding(r.record_id, 0.0, False, None, {"skipped": note}) for r in records]
        return CheckOutput(findings, summary=_summary(findings, **summary, skipped=note))
    logs = np.log1p(lengths)
    median, scale = robust_location_scale(logs[present])
    summary.update({"median_words": round(math.expm1(median), 1), "log_scale": round(scale, 4)})
    if scale == 0.0:
        summary["skipped"] = "every response has the same length: no outliers"
    scale = max(scale, config.min_log_scale)
    z = np.where(present, (logs - median) / scale if scale else 0.0, 0.0)
    sorted_logs = np.sort(logs[present])
    shorter_or_equal = np.searchsorted(sorted_logs, logs, side="right")
    longer_or_equal = n_present - np.searchsorted(sorted_logs, logs, side="left")
    rare = max(config.max_tail_fraction * n_present, MIN_RARE)
    findings = []
    for i, rec in enumerate(records):
        if not present[i]:
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": SKIPPED_EMPTY}))
            continue
        zi = float(z[i])
        tail = int(longer_or_equal[i] if zi > 0 else shorter_or_equal[i])
        score = round(min(1.0, abs(zi) / Z_SCALE), 6)
        flagged = abs(zi) >= config.z_threshold and tail <= rare
        reason = None
        if flagged:
            side = "long" if zi > 0 else "short"
            reason = (
                f"response too {side}: {int(lengths[i])} words (dataset median {math.expm1(median):.0f}, z={zi:+.1f})"
            )
        details = {"words": int(lengths[i]), "z": round(zi, 3), "as_extreme": tail}
        findings.append(Finding(rec.record_id, score, flagged, reason, details))
    return CheckOutput(findings, summary=_summary(findings, **summary))


# ---------------------------------------------------------------------------------------------------- refusal


class RefusalConfig(BaseModel):
    """Configuration of ``refusal``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="Flag records whose score reaches this.")


#: (name, weight, pattern) of boilerplate refusals and AI disclaimers, matched case-insensitively.
REFUSAL_PATTERNS: tuple[tuple[str, float, re.Pattern[str]], ...] = tuple(
    (name, weight, re.compile(pattern, re.IGNORECASE))
    for name, weight, pattern in (
        ("AI disclaimer", 0.8, r"\bas an? (ai|artificial intelligence)( language)?( model| assistant| chatbot)?\b"),
        (
            "refusal",
            1.0,
            r"\b(i'?m|i am) (sorry|afraid),? (but )?(i|as an ai,? i) (can ?not|can't|won't|am not able|'m not able"
            r"|am unable|'m unable)",
        ),
        (
            "refusal",
            0.9,
            r"\bi (can ?not|can't|won't|am unable to|'m unable to|am not able to|'m not able to) "
            r"(help(?! but)|assist|provide|comply|fulfil|fulfill|generate|create|write|answer|do that|engage|support)",
        ),
        (
            "policy boilerplate",
            0.9,
            r"\b(against|violates?) (my|openai'?s?|the) (programming|guidelines|policies|policy|content polic)",
        ),
        ("AI disclaimer", 0.7, r"\bi (do not|don't) have (personal )?(opinions|feelings|emotions|beliefs|preferences)"),
        (
            "AI disclaimer",
            0.7,
            r"\bi (do not|don't) have (access to )?(real-time|the ability to browse|internet access)",
        ),
        ("AI disclaimer", 0.6, r"\b(as of )?my (knowledge|training)( data)? cut-?off\b"),
    )
)


def refusal_matches(response: str) -> list[tuple[str, float, int]]:
    """(name, weight, character offset) of every refusal pattern found in ``response``, by offset."""
    found = []
    for name, weight, pattern in REFUSAL_PATTERNS:
        m = pattern.search(response)
        if m:
            found.append((name, weight, m.start()))
    return sorted(found, key=lambda t: t[2])


def check_refusal(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``refusal``: the response is (or contains) a boilerplate refusal or AI disclaimer ("As an AI language
    model", "I'm sorry, but I cannot", "against my guidelines", ...). Score = the largest weight of the patterns
    found (:data:`REFUSAL_PATTERNS`: outright refusal 0.9-1.0, AI disclaimer 0.6-0.8), halved when the first
    match lies beyond the first 300 characters of a response of at least 150 words (a long helpful answer
    with an aside), so an answer that *is* a refusal scores higher than one that mentions one.

    Default threshold 0.5 flags every refusal and disclaimer in the first 300 characters, and a late one only
    when it is an outright refusal (1.0 * 0.5). Measured (docs/CHECKS.md): oasst 6 of 400 flagged (6 refusals
    or AI disclaimers), self_instruct 1 of 427 (a privacy refusal), toolformer 1 of 7,673 (a partial refusal),
    sharegpt and banking77 none; the one false positive seen ("I can't help but ...") is excluded by the rule.
    """
    config = ctx.config if ctx is not None and isinstance(ctx.config, RefusalConfig) else RefusalConfig()
    findings = []
    for rec in records:
        matches = refusal_matches(rec.response)
        if not matches:
            findings.append(Finding(rec.record_id, 0.0, False))
            continue
        weight = max(w for _, w, _ in matches)
        first = matches[0][2]
        late = first > 300 and len(rec.response.split()) >= 150
        score = weight * (0.5 if late else 1.0)
        flagged = score >= config.threshold
        names = ", ".join(dict.fromkeys(n for n, _, _ in matches))
        snippet = " ".join(rec.response[first : first + 60].split())
        reason = f"{names} in response: {snippet!r}" if flagged else None
        details = {"patterns": names, "offset": first, "late": late}
        findings.append(Finding(rec.record_id, round(score, 6), flagged, reason, details))
    return CheckOutput(findings, summary=_summary(findings, threshold=config.threshold))


__all__ = [
    "LengthConfig",
    "RefusalConfig",
    "RepetitiveConfig",
    "TruncatedConfig",
    "check_empty_response",
    "check_length",
    "check_refusal",
    "check_repetitive",
    "check_truncated",
    "repeated_line_ratio",
    "robust_location_scale",
    "truncation_signals",
]
