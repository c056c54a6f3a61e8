"""The ``refusal`` check: the response is, or contains, a boilerplate refusal or AI disclaimer."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from curation.checks.response import max_score_summary
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord


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
    return CheckOutput(findings, summary=max_score_summary(findings, threshold=config.threshold))


SPEC = CheckSpec(
    "refusal",
    check_refusal,
    higher_score="a stronger refusal or AI disclaimer, nearer the start of the response",
    config=RefusalConfig,
    shard_summary={"max_score": "max", "threshold": "same"},
    default=True,
)
