"""The gate: does the adapter beat the strongest baseline, by enough, with evidence?

A verdict is a decision with its evidence attached: every system's score, which baseline was the strongest,
the paired bootstrap CI of the difference, the paired test's p-value, the thresholds and a plain-language
reason. Pass needs all three of: diff > min_gain, ci_low > 0, p < alpha; and an uncontaminated eval set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from eval.stats import is_binary, mcnemar_exact, paired_bootstrap_ci, sign_test


class GateThresholds(BaseModel):
    """What "better" means for a promotion."""

    min_gain: float = Field(
        default=0.0, description="Smallest adapter-minus-baseline difference (absolute, e.g. 0.02 = 2 points)."
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="Significance level of the paired test.")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Level of the bootstrap CI.")
    n_resamples: int = Field(default=2000, ge=100, description="Bootstrap resamples.")
    seed: int = Field(default=0, description="Bootstrap seed (the same inputs give the same CI).")
    max_regression: float | None = Field(
        default=None,
        ge=0.0,
        description="Reserved: largest allowed drop against the currently promoted adapter (not checked yet).",
    )


class GateVerdict(BaseModel):
    verdict: Literal["pass", "fail"]
    metric: str = Field(description="The per-example score compared (accuracy, exact_match, ...).")
    adapter_score: float
    baselines: dict[str, float] = Field(description="Baseline system name -> score.")
    strongest_baseline: str
    diff: float = Field(description="adapter_score - strongest baseline's score.")
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    test: str = Field(description="The paired test behind p_value: McNemar (0/1 scores) or sign test.")
    n_examples: int
    contaminated: bool
    thresholds: GateThresholds
    reason: str

    @model_validator(mode="after")
    def _check(self) -> GateVerdict:
        if self.strongest_baseline not in self.baselines:
            raise ValueError(f"strongest_baseline {self.strongest_baseline!r} is not among the baselines")
        return self

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def _strongest(scores: Mapping[str, float]) -> str:
    # Highest score; ties go to the first baseline given, so the choice is deterministic.
    best = next(iter(scores))
    for name, score in scores.items():
        if score > scores[best]:
            best = name
    return best


def decide(
    adapter: Sequence[bool | float],
    baselines: Mapping[str, Sequence[bool | float]],
    thresholds: GateThresholds | None = None,
    contaminated: bool = False,
    metric: str = "accuracy",
) -> GateVerdict:
    """Compare per-example adapter scores with each baseline's on the same examples, in the same order."""
    thresholds = thresholds or GateThresholds()
    if not baselines:
        raise ValueError("the gate needs at least one baseline")
    n = len(adapter)
    if n == 0:
        raise ValueError("the gate needs at least one example")
    for name, scores in baselines.items():
        if len(scores) != n:
            raise ValueError(f"baseline {name!r} has {len(scores)} scores for {n} adapter examples")

    adapter_score = sum(float(s) for s in adapter) / n
    baseline_scores = {name: sum(float(s) for s in v) / n for name, v in baselines.items()}
    strongest = _strongest(baseline_scores)
    reference = baselines[strongest]
    ci = paired_bootstrap_ci(adapter, reference, thresholds.n_resamples, thresholds.confidence, thresholds.seed)
    binary = is_binary(adapter) and is_binary(reference)
    p_value = mcnemar_exact(adapter, reference) if binary else sign_test(adapter, reference)
    test = "McNemar" if binary else "sign test"
    diff = adapter_score - baseline_scores[strongest]

    level = f"{thresholds.confidence:.0%}"
    evidence = f"({level} CI {ci.low:.2f} to {ci.high:.2f}, {test} p={_fmt_p(p_value)}, n={n})"
    head = f"adapter {adapter_score:.2f} vs the strongest baseline {strongest} {baseline_scores[strongest]:.2f}"
    failures: list[str] = []
    if contaminated:
        failures.append("the eval set overlaps the training data (contaminated), so no score can be trusted")
    if not diff > thresholds.min_gain:
        failures.append(f"the difference {diff:+.2f} is not above the minimum gain {thresholds.min_gain:.2f}")
    if not ci.low > 0.0:
        failures.append(f"the {level} CI of the difference reaches {ci.low:.2f}, not above 0")
    if not p_value < thresholds.alpha:
        failures.append(f"{test} p={_fmt_p(p_value)} is not below alpha {thresholds.alpha:g}")

    if failures:
        verdict: Literal["pass", "fail"] = "fail"
        reason = f"fail: {head} {evidence}: " + "; ".join(failures)
    else:
        verdict = "pass"
        reason = (
            f"adapter {adapter_score:.2f} beats the strongest baseline {strongest} "
            f"{baseline_scores[strongest]:.2f} by {diff:.2f} {evidence}"
        )
    return GateVerdict(
        verdict=verdict,
        metric=metric,
        adapter_score=adapter_score,
        baselines=baseline_scores,
        strongest_baseline=strongest,
        diff=diff,
        ci_low=ci.low,
        ci_high=ci.high,
        confidence=thresholds.confidence,
        p_value=p_value,
        test=test,
        n_examples=n,
        contaminated=contaminated,
        thresholds=thresholds,
        reason=reason,
    )
