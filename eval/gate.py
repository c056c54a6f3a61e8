"""The gate: does the adapter beat the strongest baseline, by enough, with evidence?

A verdict is a decision with its evidence attached: every system's score, the difference to every baseline
with its paired bootstrap CI and paired test (McNemar for right/wrong scores, the sign test for graded ones),
which baseline was the strongest, the thresholds, the contamination status, the general-capability regression
check and a plain-language reason. Pass needs all of: against the strongest baseline diff > min_gain,
ci_low > 0 and p < alpha; an uncontaminated eval set; and no general-capability regression above
``max_regression`` (a skipped check is reported, not failed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from eval.stats import is_binary, mcnemar_exact, paired_bootstrap_ci, paired_test_log10_p, sign_test


class GateThresholds(BaseModel):
    """What "better" means for a promotion."""

    min_gain: float = Field(
        default=0.0, description="Smallest adapter-minus-baseline difference (absolute, e.g. 0.02 = 2 points)."
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="Significance level of the paired test.")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Level of the bootstrap CI.")
    n_resamples: int = Field(default=2000, ge=100, description="Bootstrap resamples.")
    seed: int = Field(default=0, description="Bootstrap seed (the same inputs give the same CI).")
    max_regression: float = Field(
        default=0.20,
        ge=0.0,
        description="Largest allowed relative rise of the adapter's mean token loss on the general set over the "
        "base model's (0.20 = +20%). Calibrated on SmolLM2-135M (docs/EVAL.md): adapters of the shipped recipe "
        "rose 3-13%, damaging ones (no rehearsal, one-word answers, 15x the recipe's learning rate) 36-478%.",
    )


class Comparison(BaseModel):
    """The adapter against one baseline on the same examples."""

    baseline: str
    baseline_score: float
    diff: float = Field(description="adapter score - baseline score.")
    ci_low: float
    ci_high: float
    p_value: float
    p_log10: float | None = Field(
        default=None, description="log10 of p_value, exact where p_value underflows to 0 (below ~1e-308)."
    )
    test: str
    adapter_id: str | None = Field(default=None, description="For an adapter baseline (champion): its id.")


class RegressionCheck(BaseModel):
    """General-capability check: the adapter's mean token loss on a held-out general set vs the base model's."""

    status: Literal["pass", "fail", "skipped"]
    reason: str
    general_set: str | None = None
    general_set_hash: str | None = None
    n_prompts: int = 0
    base_loss: float | None = None
    adapter_loss: float | None = None
    relative_change: float | None = Field(default=None, description="adapter_loss / base_loss - 1.")
    median_example_change: float | None = Field(
        default=None, description="Median over the prompts of each reference's own relative loss change."
    )
    max_regression: float | None = None
    seconds: float | None = None


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
    p_log10: float | None = Field(
        default=None, description="log10 of p_value, exact where p_value underflows to 0 (below ~1e-308)."
    )
    test: str = Field(description="The paired test behind p_value: McNemar (0/1 scores) or sign test.")
    n_examples: int
    contaminated: bool
    thresholds: GateThresholds
    reason: str
    comparisons: dict[str, Comparison] = Field(default_factory=dict, description="Baseline name -> evidence.")
    regression: RegressionCheck | None = Field(default=None, description="The general-capability check.")

    @model_validator(mode="after")
    def _check(self) -> GateVerdict:
        if self.strongest_baseline not in self.baselines:
            raise ValueError(f"strongest_baseline {self.strongest_baseline!r} is not among the baselines")
        return self

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def _fmt_p(p: float, p_log10: float | None = None) -> str:
    """Two significant digits; from log10 p where the float underflowed (p=0 would claim certainty)."""
    if p > 0.0 or p_log10 is None or p_log10 == float("-inf"):
        return f"{p:.2g}"
    exponent = math.floor(p_log10)
    mantissa = 10 ** (p_log10 - exponent)
    if round(mantissa, 1) >= 10.0:
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.1f}e{exponent}"


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
    regression: RegressionCheck | None = None,
    baseline_adapters: Mapping[str, str] | None = None,
) -> GateVerdict:
    """Compare per-example adapter scores with each baseline's on the same examples, in the same order.

    ``regression`` is the general-capability check (a ``fail`` fails the verdict; ``skipped`` is stated in
    the reason); ``baseline_adapters`` names the adapter behind an adapter baseline (the champion).
    """
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
    comparisons = {
        name: _compare(adapter, name, scores, thresholds, (baseline_adapters or {}).get(name))
        for name, scores in baselines.items()
    }
    best = comparisons[strongest]
    ci_low, ci_high, p_value, test, diff = best.ci_low, best.ci_high, best.p_value, best.test, best.diff
    p_log10 = best.p_log10

    level = f"{thresholds.confidence:.0%}"
    evidence = f"({level} CI {ci_low:.2f} to {ci_high:.2f}, {test} p={_fmt_p(p_value, p_log10)}, n={n})"
    head = f"adapter {adapter_score:.2f} vs the strongest baseline {strongest} {baseline_scores[strongest]:.2f}"
    failures: list[str] = []
    if contaminated:
        failures.append("the eval set overlaps the training data (contaminated), so no score can be trusted")
    if not diff > thresholds.min_gain:
        failures.append(f"the difference {diff:+.2f} is not above the minimum gain {thresholds.min_gain:.2f}")
    if not ci_low > 0.0:
        failures.append(f"the {level} CI of the difference reaches {ci_low:.2f}, not above 0")
    if not p_value < thresholds.alpha:
        failures.append(f"{test} p={_fmt_p(p_value, p_log10)} is not below alpha {thresholds.alpha:g}")
    if regression is not None and regression.status == "fail":
        failures.append(f"general-capability regression: {regression.reason}")

    if failures:
        verdict: Literal["pass", "fail"] = "fail"
        reason = f"fail: {head} {evidence}: " + "; ".join(failures)
    else:
        verdict = "pass"
        reason = (
            f"adapter {adapter_score:.2f} beats the strongest baseline {strongest} "
            f"{baseline_scores[strongest]:.2f} by {diff:.2f} {evidence}"
        )
        if regression is not None and regression.status == "pass":
            reason += f"; general-capability check pass: {regression.reason}"
    if regression is None:
        reason += "; general-capability check not run"
    elif regression.status == "skipped":  # said in every verdict, pass or fail: a skipped check is not a pass
        reason += f"; general-capability check skipped: {regression.reason}"
    return GateVerdict(
        verdict=verdict,
        metric=metric,
        adapter_score=adapter_score,
        baselines=baseline_scores,
        strongest_baseline=strongest,
        diff=diff,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=thresholds.confidence,
        p_value=p_value,
        p_log10=p_log10,
        test=test,
        n_examples=n,
        contaminated=contaminated,
        thresholds=thresholds,
        reason=reason,
        comparisons=comparisons,
        regression=regression,
    )


def _compare(
    adapter: Sequence[bool | float],
    name: str,
    baseline: Sequence[bool | float],
    thresholds: GateThresholds,
    adapter_id: str | None,
) -> Comparison:
    """Paired evidence against one baseline: bootstrap CI of the difference and the exact paired test."""
    ci = paired_bootstrap_ci(adapter, baseline, thresholds.n_resamples, thresholds.confidence, thresholds.seed)
    binary = is_binary(adapter) and is_binary(baseline)
    return Comparison(
        baseline=name,
        baseline_score=sum(float(s) for s in baseline) / len(baseline),
        diff=ci.diff,
        ci_low=ci.low,
        ci_high=ci.high,
        p_value=mcnemar_exact(adapter, baseline) if binary else sign_test(adapter, baseline),
        p_log10=paired_test_log10_p(adapter, baseline),
        test="McNemar" if binary else "sign test",
        adapter_id=adapter_id,
    )
