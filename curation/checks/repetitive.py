"""The ``repetitive`` check: the response repeats itself (a generation loop, copy-paste)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.checks.response import SKIPPED_EMPTY, is_blank, max_score_summary
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord
from curation.similarity.shingles import shingle_batch


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
    # a text of w >= ngram words has w - ngram + 1 n-grams (a shorter one 0 or 1), so "at least 2 * ngram words" is
    # "at least ngram + 1 n-grams": no second pass to count the words
    long_enough = batch.counts >= config.ngram + 1
    findings = []
    for i, rec in enumerate(records):
        if is_blank(rec.response):
            findings.append(Finding(rec.record_id, 0.0, False, None, {"skipped": SKIPPED_EMPTY}))
            continue
        line_ratio = repeated_line_ratio(rec.response, config.min_line_chars)
        grams = batch.of(i)
        ngram_ratio = 0.0
        if long_enough[i]:
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
    return CheckOutput(findings, summary=max_score_summary(findings, threshold=config.threshold))


SPEC = CheckSpec(
    "repetitive",
    check_repetitive,
    higher_score="more of the response repeats itself",
    config=RepetitiveConfig,
    shard_summary={"max_score": "max", "threshold": "same"},
    default=True,
)
