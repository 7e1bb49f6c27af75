"""stats.py against independent computations: Holm's textbook example, scipy's bootstrap, a hand-computed t
interval, the grouped bootstrap on correlated data, and the AND rule on inputs where the CI and the test disagree."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nnunetv2_llm4seg.stats import bootstrap_ci, case_level, decide, holm, run_level


def test_holm_reproduces_the_textbook_example():
    # Wikipedia, "Holm-Bonferroni method", example: p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05: H1 and H4 are
    # rejected (0.005 < 0.05/4, 0.01 < 0.05/3), H3 is not (0.03 > 0.05/2), so the procedure stops.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adjusted] == [True, False, False, True]
    assert holm([0.2, math.nan, 0.9]) == pytest.approx([0.4, math.nan, 0.9], nan_ok=True)  # NaN: no test, m = 2


def test_ungrouped_bootstrap_matches_scipy_percentile_bootstrap():
    values = np.random.default_rng(3).normal(0.02, 0.1, 200)
    ours = bootstrap_ci(values, seed=1)
    theirs = scipy_stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=10_000,
                                   method="percentile", random_state=np.random.default_rng(2)).confidence_interval
    width = theirs.high - theirs.low
    assert abs(ours[0] - theirs.low) < 0.05 * width and abs(ours[1] - theirs.high) < 0.05 * width


def test_grouped_bootstrap_is_wider_on_correlated_cases():
    rng = np.random.default_rng(0)
    patient_effect = rng.normal(0, 0.1, 40)
    values = np.repeat(patient_effect, 5) + rng.normal(0, 0.01, 200)  # 5 nearly identical images per patient
    groups = [f"p{i}" for i in np.repeat(np.arange(40), 5)]
    flat, grouped = bootstrap_ci(values), bootstrap_ci(values, groups)
    assert (grouped[1] - grouped[0]) > 1.8 * (flat[1] - flat[0])  # about sqrt(5) wider
    assert case_level(values, groups).n == 40 and case_level(values).n == 200


def test_run_level_is_students_t_by_hand():
    runs = [0.01, 0.02, 0.03, 0.04]
    result = run_level(runs, level=0.9)
    mean, se = 0.025, np.std(runs, ddof=1) / 2
    half = scipy_stats.t.ppf(0.95, 3) * se
    assert (result.mean, result.low, result.high) == pytest.approx((mean, mean - half, mean + half))
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(mean / se, 3))
    assert run_level([0.01]).p_value != run_level([0.01]).p_value  # one run: no test (NaN)


def test_and_rule_needs_the_ci_and_the_test_to_agree():
    # Many small losses, a few large gains: the mean (and its bootstrap CI) is positive, while the signed ranks
    # see mostly losses: the Wilcoxon test does not call it better.
    differences = [-0.01] * 22 + [0.2] * 8
    result = case_level(differences)
    assert result.low > 0 and result.p_value > 0.05 and result.test_sign == -1
    assert decide(result.low, result.high, result.p_value, result.test_sign) == "inconclusive"
    # ... and the other way round: a significant p with a CI that contains 0 (e.g. Holm vs a Bonferroni CI).
    assert decide(-0.001, 0.02, 0.01, +1) == "inconclusive"
    assert decide(0.001, 0.02, 0.01, -1) == "inconclusive"  # test pointing the other way
    assert decide(0.001, 0.02, 0.01, +1) == "better" and decide(-0.02, -0.001, 0.01, -1) == "worse"
    assert decide(-0.01, 0.02, 0.3, +1) == "no significant difference"
    assert decide(math.nan, math.nan, math.nan, 0) == "too few to compare"


def test_a_consistent_improvement_is_detected_at_both_levels():
    rng = np.random.default_rng(1)
    better = 0.05 + rng.normal(0, 0.01, 30)
    case = case_level(better)
    assert case.p_value < 1e-4 and case.low > 0 and case.test_sign == 1
    assert decide(case.low, case.high, case.p_value, case.test_sign) == "better"
    run = run_level(better[:5])
    assert decide(run.low, run.high, run.p_value, run.test_sign) == "better"
    noise = case_level(rng.normal(0, 0.05, 30))
    assert decide(noise.low, noise.high, noise.p_value, noise.test_sign) == "no significant difference"
    assert case_level(list(better)) == case_level(list(better))  # fixed bootstrap seed


def test_attention_table_of_two_rows_pairs_cases_and_resamples_patients():
    from nnunetv2_llm4seg.evidence import ATTENTION_HEADER, attention_table

    def record(row: str, case: str, patient: str, distance: float, share: float) -> dict[str, str]:
        values = {"row": row, "case": case, "patient": patient, "tokens": "48", "mean_distance_tokens": distance,
                  "entropy": 1.0, "uniform_entropy": 2.0, "foreground_share": 0.0, "foreground_area_share": 0.0,
                  "reference_share": share, "reference_area_share": 0.25}
        return {key: str(values[key]) for key in ATTENTION_HEADER}

    records = [record("a", f"c{i}", f"p{i // 2}", 3.0 + i, 0.5) for i in range(6)] + \
        [record("b", f"c{i}", f"p{i // 2}", 2.0 + i, 0.5) for i in range(6)] + [record("b", "extra", "p9", 0.0, 0.0)]
    table = attention_table(records, ("a", "b")).splitlines()
    assert table[2].startswith("| a | 6 | 48 | 5.500 ± 1.871 | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.250 ± 0.000 |")
    assert table[3].startswith("| b | 7 | 48 |")
    differences = table[4].split(" | ")
    assert differences[1] == "6 (3 patients)"  # the case only b has is not paired
    assert differences[3].startswith("+1.000 [+1.000, +1.000]") and differences[5].startswith("+0.000")
    anonymous = [{**r, "patient": ""} for r in records]  # no patient ids (Kvasir-SEG): cases are the units
    assert attention_table(anonymous, ("a", "b")).splitlines()[4].split(" | ")[1] == "6 (cases)"


def test_curve_table_averages_runs_and_shows_each_rows_gap_to_its_baseline():
    from nnunetv2_llm4seg.evidence import curve_table

    records = [{"row": row, "fold": "0", "seed": str(seed), "epoch": str(epoch), "ema_pseudo_dice": str(value)}
               for row, seed, values in (("stock", 0, (0.1, 0.5)), ("stock", 1, (0.3, 0.7)), ("frozen", 0, (0.1, 0.7)),
                                         ("cmunext", 0, (0.2, 0.2)), ("cmunext-frozen", 0, (0.4, 0.1)))
               for epoch, value in zip((1, 2), values)]
    lines = curve_table(records, [1, 2]).splitlines()
    assert lines[2:] == ["| stock | 0.200 | 0.600 |", "| frozen | 0.100 | 0.700 |", "| cmunext | 0.200 | 0.200 |",
                         "| cmunext-frozen | 0.400 | 0.100 |", "| frozen - stock | -0.100 | +0.100 |",
                         "| cmunext - stock | +0.000 | -0.400 |", "| cmunext-frozen - cmunext | +0.200 | -0.100 |"]
    with pytest.raises(ValueError, match="stock epoch 3"):
        curve_table(records, [3])
