from __future__ import annotations

import pytest

from eval.gate import GateThresholds, RegressionCheck, decide


def _vec(correct: int, n: int) -> list[bool]:
    return [True] * correct + [False] * (n - correct)


def test_pass_when_adapter_clearly_beats_every_baseline() -> None:
    adapter = _vec(91, 100)
    verdict = decide(adapter, {"base_zero_shot": _vec(3, 100), "base_few_shot": _vec(20, 100)})
    assert verdict.verdict == "pass" and verdict.passed
    assert verdict.strongest_baseline == "base_few_shot"
    assert verdict.adapter_score == pytest.approx(0.91)
    assert verdict.baselines == {"base_zero_shot": pytest.approx(0.03), "base_few_shot": pytest.approx(0.20)}
    assert verdict.diff == pytest.approx(0.71)
    assert 0 < verdict.ci_low < 0.71 < verdict.ci_high
    assert verdict.p_value < 1e-15
    assert verdict.test == "McNemar"
    assert verdict.reason.startswith("adapter 0.91 beats the strongest baseline base_few_shot 0.20 by 0.71")
    assert "95% CI" in verdict.reason and "McNemar p=" in verdict.reason


def test_fail_on_no_gain() -> None:
    same = _vec(50, 100)
    verdict = decide(same, {"base_few_shot": list(same)})
    assert verdict.verdict == "fail"
    assert verdict.diff == 0.0
    assert "not above the minimum gain" in verdict.reason
    assert verdict.p_value == 1.0


def test_fail_when_adapter_is_worse() -> None:
    verdict = decide(_vec(30, 100), {"base_few_shot": _vec(60, 100)})
    assert verdict.verdict == "fail" and verdict.diff < 0 and verdict.ci_high < 0


def test_fail_when_ci_crosses_zero_on_a_tiny_sample() -> None:
    adapter = [True, True, False, True, True]
    baseline = [True, False, False, True, True]
    verdict = decide(adapter, {"base_few_shot": baseline})
    assert verdict.diff == pytest.approx(0.2)
    assert verdict.ci_low <= 0
    assert verdict.verdict == "fail"
    assert "CI of the difference" in verdict.reason


def test_fail_on_contamination_even_with_a_large_gain() -> None:
    verdict = decide(_vec(95, 100), {"base_few_shot": _vec(10, 100)}, contaminated=True)
    assert verdict.verdict == "fail"
    assert verdict.contaminated
    assert "contaminated" in verdict.reason
    assert verdict.ci_low > 0  # the evidence is still reported


def test_min_gain_is_enforced() -> None:
    adapter, baseline = _vec(600, 1000), _vec(550, 1000)
    assert decide(adapter, {"b": baseline}).verdict == "pass"
    strict = decide(adapter, {"b": baseline}, GateThresholds(min_gain=0.10))
    assert strict.verdict == "fail" and "minimum gain 0.10" in strict.reason


def test_strongest_baseline_is_the_highest_scoring_one() -> None:
    baselines = {"base_zero_shot": _vec(10, 200), "base_label_ranking": _vec(120, 200), "base_few_shot": _vec(60, 200)}
    verdict = decide(_vec(190, 200), baselines)
    assert verdict.strongest_baseline == "base_label_ranking"
    assert verdict.diff == pytest.approx(0.95 - 0.60)


def test_graded_scores_use_the_sign_test() -> None:
    adapter = [0.9] * 40
    verdict = decide(adapter, {"b": [0.2] * 40})
    assert verdict.test == "sign test" and verdict.verdict == "pass"


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one baseline"):
        decide([True], {})
    with pytest.raises(ValueError, match="has 1 scores"):
        decide([True, False], {"b": [True]})
    with pytest.raises(ValueError):
        GateThresholds(alpha=1.5)


def _regression(status: str, change: float) -> RegressionCheck:
    return RegressionCheck(
        status=status,
        reason=f"mean token loss went from 1.000 (base) to {1 + change:.3f} (adapter), {change:+.1%}",
        base_loss=1.0,
        adapter_loss=1.0 + change,
        relative_change=change,
        max_regression=0.10,
    )


def test_every_baseline_gets_its_own_paired_comparison() -> None:
    baselines = {"base_zero_shot": _vec(10, 100), "champion": _vec(70, 100)}
    verdict = decide(_vec(90, 100), baselines, baseline_adapters={"champion": "adp_old"})
    assert set(verdict.comparisons) == {"base_zero_shot", "champion"}
    champ = verdict.comparisons["champion"]
    assert champ.adapter_id == "adp_old" and champ.diff == pytest.approx(0.20) and champ.test == "McNemar"
    zero = verdict.comparisons["base_zero_shot"]
    assert zero.adapter_id is None and zero.diff == pytest.approx(0.80) and zero.ci_low > champ.ci_low
    assert verdict.strongest_baseline == "champion" and verdict.ci_low == champ.ci_low


def test_fail_on_general_capability_regression_despite_a_gain() -> None:
    verdict = decide(_vec(90, 100), {"base_few_shot": _vec(20, 100)}, regression=_regression("fail", 0.35))
    assert verdict.verdict == "fail"
    assert "general-capability regression" in verdict.reason and "+35.0%" in verdict.reason
    assert verdict.regression is not None and verdict.regression.status == "fail"


def test_a_passing_or_skipped_regression_check_is_stated_not_failed() -> None:
    ok = decide(_vec(90, 100), {"b": _vec(20, 100)}, regression=_regression("pass", 0.02))
    assert ok.verdict == "pass" and "general-capability check pass" in ok.reason
    skipped = RegressionCheck(status="skipped", reason="no general set available")
    verdict = decide(_vec(90, 100), {"b": _vec(20, 100)}, regression=skipped)
    assert verdict.verdict == "pass" and "general-capability check skipped: no general set available" in verdict.reason
    assert "not run" in decide(_vec(90, 100), {"b": _vec(20, 100)}).reason


def test_graded_scores_compare_with_ci_and_sign_test() -> None:
    adapter = [0.8, 0.7, 0.9, 0.6, 0.75, 0.85] * 5
    baseline = [0.5, 0.4, 0.6, 0.6, 0.5, 0.55] * 5
    verdict = decide(adapter, {"base_zero_shot": baseline}, metric="chrf")
    assert verdict.metric == "chrf" and verdict.test == "sign test"
    assert verdict.diff == pytest.approx(sum(adapter) / 30 - sum(baseline) / 30)
    assert verdict.verdict == "pass" and verdict.ci_low > 0


def test_a_p_value_below_the_smallest_double_is_printed_from_its_log_not_as_zero() -> None:
    # 2,300 discordant pairs all for the adapter: p = 2 / 2**2300 ~ 1.0e-692, which a float rounds to 0
    n = 3000
    adapter = _vec(2900, n)
    baseline = [False] * 2300 + [True] * 600 + [False] * 100
    verdict = decide(adapter, {"base_label_ranking": baseline})
    assert verdict.verdict == "pass"
    assert verdict.p_value == 0.0
    assert verdict.p_log10 is not None and -693 < verdict.p_log10 < -691
    assert "McNemar p=" in verdict.reason and "p=0," not in verdict.reason
    assert "e-692" in verdict.reason or "e-693" in verdict.reason
    assert verdict.comparisons["base_label_ranking"].p_log10 == verdict.p_log10
