"""Statistics for paired comparisons of segmentation methods: case level, run level, multiplicity, verdicts.

Two levels, each with an estimate, a confidence interval and a test of "no difference":
- case level: the per-case differences (other - baseline on the same case, averaged over the runs that share
  the case, i.e. over seeds). CI: percentile bootstrap of the mean; when the cases carry patient ids, whole
  patients are resampled (a grouped, or cluster, bootstrap: images of one patient are correlated). Test: paired
  two-sided Wilcoxon signed-rank test on the per-unit mean differences (unit = patient, or case without ids).
- run level: one value per training run (fold x seed): the mean per-case difference of that run against the
  baseline's run of the same fold and seed. CI: Student's t interval; test: one-sample two-sided t-test. This
  level carries the run-to-run (seed) variance the case level ignores.

Multiplicity: within one dataset, the p-values of its m comparisons are Holm-adjusted (family-wise error rate
alpha; scipy.stats.false_discovery_control is Benjamini-Hochberg, which controls the false discovery rate, not the
family-wise rate, so Holm's step-down is written out below), and every CI is a Bonferroni interval at level
1 - alpha/m, which covers all m differences simultaneously with probability >= 1 - alpha. Holm rejects whatever
Bonferroni rejects and sometimes more, so an adjusted p below alpha can meet an adjusted CI that contains 0.

Verdict (the AND rule): better / worse only when the adjusted CI excludes 0 and the adjusted p < alpha with the
test pointing the same way (a Wilcoxon test can reject in the direction opposite to the mean's: many small
losses, a few large gains); neither: no significant difference; otherwise: inconclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ALPHA = 0.05
RESAMPLES = 10_000


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down): the i-th smallest of m becomes max over j <= i of (m - j + 1) p_(j),
    capped at 1. NaN entries (no test) stay NaN and do not count towards m."""
    finite = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, index) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[index] = running
    return adjusted


def bootstrap_ci(values: Sequence[float], groups: Sequence[str] | None = None, level: float = 0.95,
                 resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`; with `groups`, whole groups are drawn with replacement
    and the mean is taken over all values of the drawn groups."""
    sums, counts = _group_sums(np.asarray(values, dtype=float), groups)
    drawn = np.random.default_rng(seed).integers(0, len(sums), (resamples, len(sums)))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class LevelResult:
    """One level's estimate: n values (units: cases, patients or runs), mean, CI at `level`, raw p, and the
    direction the test points to (+1, -1, 0: the sign of W+ - W- for Wilcoxon, of the mean for the t-test)."""

    n: int
    mean: float
    low: float
    high: float
    p_value: float
    level: float
    test_sign: int = 0


def _group_sums(values: np.ndarray, groups: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the values per group (each value its own group without `groups`)."""
    labels = np.arange(len(values)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    return np.bincount(labels, weights=values), np.bincount(labels).astype(float)


def _unit_means(values: np.ndarray, groups: Sequence[str] | None) -> np.ndarray:
    if groups is None:
        return values
    sums, counts = _group_sums(values, groups)
    return sums / counts


def wilcoxon_p(values: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p; 1 when every difference is 0 (nothing to rank)."""
    from scipy.stats import wilcoxon

    return 1.0 if not np.any(values) else float(wilcoxon(values).pvalue)


def signed_rank_direction(values: np.ndarray) -> int:
    """+1 when the positive differences carry the larger rank sum (W+ > W-), -1 when the negative ones do, else 0
    (zeros dropped, ties given average ranks, as the Wilcoxon test ranks them)."""
    from scipy.stats import rankdata

    nonzero = values[values != 0]
    ranks = rankdata(np.abs(nonzero))
    return int(np.sign(ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()))


def case_level(differences: Sequence[float], groups: Sequence[str] | None = None, level: float = 0.95,
               seed: int = 0) -> LevelResult:
    """Bootstrap CI (grouped when `groups`) of the mean difference and Wilcoxon p over units (groups or cases)."""
    values = np.asarray(differences, dtype=float)
    units = _unit_means(values, groups)
    if len(units) < 2:
        return LevelResult(len(units), float(values.mean()) if len(values) else math.nan, math.nan, math.nan,
                           math.nan, level)
    low, high = bootstrap_ci(values, groups, level, seed=seed)
    return LevelResult(len(units), float(values.mean()), low, high, wilcoxon_p(units), level,
                       signed_rank_direction(units))


def run_level(run_differences: Sequence[float], level: float = 0.95) -> LevelResult:
    """Student's t CI of the mean of per-run differences and the one-sample two-sided t-test's p."""
    from scipy.stats import ttest_1samp

    values = np.asarray(run_differences, dtype=float)
    if len(values) < 2:
        return LevelResult(len(values), float(values.mean()) if len(values) else math.nan, math.nan, math.nan,
                           math.nan, level)
    if np.all(values == values[0]):  # no spread: the t statistic is undefined
        return LevelResult(len(values), float(values[0]), float(values[0]), float(values[0]),
                           1.0 if values[0] == 0 else 0.0, level, int(np.sign(values[0])))
    test = ttest_1samp(values, 0.0)
    interval = test.confidence_interval(level)
    return LevelResult(len(values), float(values.mean()), float(interval.low), float(interval.high),
                       float(test.pvalue), level, int(np.sign(values.mean())))


def decide(low: float, high: float, p_adjusted: float, test_sign: int, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (the CI excludes 0 and p < alpha, the test pointing the CI's way), 'no significant
    difference' (neither), 'inconclusive' (CI and test disagree), or 'too few to compare' (no CI or p)."""
    if math.isnan(low) or math.isnan(p_adjusted):
        return "too few to compare"
    ci_sign = 1 if low > 0 else -1 if high < 0 else 0
    p_rejects = p_adjusted < alpha
    if ci_sign and p_rejects and test_sign == ci_sign:
        return "better" if ci_sign > 0 else "worse"
    return "inconclusive" if ci_sign or p_rejects else "no significant difference"
