"""The ``length`` check: the response is unusually short or long for this dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.checks.response import SKIPPED_EMPTY, is_blank, max_score_summary
from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord
from curation.similarity.shingles import word_counts


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
    lengths = word_counts([r.response for r in records]).astype(np.float64)
    present = np.array([not is_blank(r.response) for r in records], dtype=bool)
    summary: dict[str, Any] = {"z_threshold": config.z_threshold}
    n_present = int(present.sum())
    if n_present < config.min_records:
        note = f"fewer than {config.min_records} non-empty responses ({n_present}): no distribution"
        findings = [Finding(r.record_id, 0.0, False, None, {"skipped": note}) for r in records]
        return CheckOutput(findings, summary=max_score_summary(findings, **summary, skipped=note))
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
    return CheckOutput(findings, summary=max_score_summary(findings, **summary))


SPEC = CheckSpec(
    "length",
    check_length,
    higher_score="the response's length is further from the dataset's typical length (robust z-score / 7)",
    config=LengthConfig,
    default=True,
)
