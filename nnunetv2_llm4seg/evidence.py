"""A study's summary table from its per-case CSV: metrics per row, and each row against its baseline at the case
and the run level (statistics in stats.py), Holm-adjusted within each dataset, with a verdict naming its level.

The study writes STEM_per_case.csv, then this module turns it into STEM.csv (summary_rows) and that into the
markdown table (render_table); the published tables are rebuilt from the committed CSVs the same way. A held-out
study (train on some devices, validate on the others) is summarised per held-out value of its split column.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunetv2_llm4seg.metrics import METRICS, NNUNET_LABEL, PAPER_LABEL
from nnunetv2_llm4seg.stats import ALPHA, LevelResult, case_level, decide, holm, run_level

MIN_RUNS = 3  # fewer paired runs than this: the verdict rests on the case level
ALL = "all"
SUMMARY_HEADER = [
    "dataset", "subset", "row", "trainer", "cases", "runs", "dice_run_mean", "dice_run_std", "dice_mean", "dice_std",
    "iou_mean", "iou_std", "paper_iou_mean", "paper_iou_std", "paper_f1_mean", "paper_f1_std", "baseline",
    "comparisons", "ci_level", "case_units", "case_n", "case_delta", "case_ci_low", "case_ci_high",
    "case_p_wilcoxon", "case_p_holm", "run_n", "run_delta", "run_ci_low", "run_ci_high", "run_p_ttest",
    "run_p_holm", "level", "verdict", "trainable_params", "frozen_params", "train_seconds"]
TABLE_HEADER = ["dataset", "subset", "row", "cases", "runs", "Dice (runs)", "Dice (cases)", "IoU (cases)",
                "paper IoU", "paper F1", "vs", "ΔDice case level [adj. CI] (n)", "p case (Holm)",
                "ΔDice run level [adj. CI] (n runs)", "p run (Holm)", "verdict", "trainable params", "frozen params",
                "train time (s)"]
METRIC_COLUMNS = {"Dice": "dice", "IoU": "iou", "paper IoU": "paper_iou", "paper F1": "paper_f1"}


@dataclass(frozen=True)
class CaseRecord:
    """One validation case of one training run (fold, seed) of one row, as in STEM_per_case.csv."""

    dataset: str
    row: str
    trainer: str
    fold: int
    seed: int
    case: str
    patient: str
    device: str
    metrics: dict[str, float]

    def value(self, column: str) -> str:
        return {"patient": self.patient, "device": self.device}[column]


def baseline_of(row: str, rows: tuple[str, ...], baseline: str | None) -> str | None:
    """The row a row is compared with: CMUNeXt booster rows with plain CMUNeXt when it is a row (the booster's
    effect on its own backbone), every other row with the study's baseline."""
    if row.startswith("cmunext-") and "cmunext" in rows:
        return "cmunext"
    return baseline


def read_per_case(path: Path) -> list[CaseRecord]:
    """The records of a STEM_per_case.csv."""
    with open(path, newline="") as handle:
        return [CaseRecord(r["dataset"], r["row"], r["trainer"], int(r["fold"]), int(r["seed"]), r["case"],
                           r["patient"], r["device"], {key: float(r[key]) for key in METRICS})
                for r in csv.DictReader(handle)]


def read_summary(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def _runs(records: list[CaseRecord]) -> dict[tuple[int, int], list[CaseRecord]]:
    runs: dict[tuple[int, int], list[CaseRecord]] = defaultdict(list)
    for record in records:
        runs[record.fold, record.seed].append(record)
    return runs


@dataclass(frozen=True)
class Pairing:
    """The paired Dice differences of a row against its baseline, at both levels' granularity."""

    case_differences: list[float]  # per case, mean over the runs (seeds) that share it
    case_groups: list[str] | None  # patient of each case, when every case has one
    run_differences: list[float]  # per run (fold, seed), mean over its paired cases


def pair(baseline: list[CaseRecord], other: list[CaseRecord]) -> Pairing:
    """Pair the cases of the same fold, seed and case id whose Dice is defined in both rows."""
    reference = {(r.fold, r.seed, r.case): r for r in baseline}
    by_case: dict[str, list[float]] = defaultdict(list)
    by_run: dict[tuple[int, int], list[float]] = defaultdict(list)
    patients: dict[str, str] = {}
    for record in other:
        base = reference.get((record.fold, record.seed, record.case))
        if base is None or math.isnan(base.metrics["Dice"]) or math.isnan(record.metrics["Dice"]):
            continue
        difference = record.metrics["Dice"] - base.metrics["Dice"]
        by_case[record.case].append(difference)
        by_run[record.fold, record.seed].append(difference)
        patients[record.case] = record.patient
    cases = sorted(by_case)
    groups = [patients[c] for c in cases] if cases and all(patients[c] for c in cases) else None
    return Pairing([float(np.mean(by_case[c])) for c in cases], groups,
                   [float(np.mean(by_run[run])) for run in sorted(by_run)])


def _subsets(records: list[CaseRecord], subset_by: str | None) -> list[tuple[str, list[CaseRecord]]]:
    if subset_by is None:
        return [(ALL, records)]
    values = sorted({r.value(subset_by) for r in records})
    return [(f"{subset_by} = {value}", [r for r in records if r.value(subset_by) == value]) for value in values]


def _verdict(level: str, result: LevelResult, p_holm: float, versus: str) -> str:
    decision = decide(result.low, result.high, p_holm, result.test_sign)
    if decision in ("better", "worse"):
        return f"{decision} than {versus} ({level} level)"
    if decision == "inconclusive":
        return f"inconclusive ({level} level: CI and p disagree)"
    return f"{decision} ({level} level)"


@dataclass(frozen=True)
class Entry:
    """One row of one subset of a dataset, and its pairing with the row it is compared with (if any)."""

    subset: str
    row: str
    records: list[CaseRecord]
    versus: str | None
    pairing: Pairing | None


def summary_rows(records: list[CaseRecord], versus_of: Callable[[str], str | None],
                 extras: dict[tuple[str, str], tuple[int, int, float]], seed: int = 0,
                 subset_by: dict[str, str | None] | None = None) -> list[dict[str, object]]:
    """One summary row per dataset, subset and row (in the records' order). `versus_of(row)` names the row it is
    compared with; `extras[dataset, row]` = (trainable params, frozen params, train seconds); `subset_by[dataset]`
    = the metadata column whose values split a held-out study's cases into subsets (None: one subset)."""
    output = []
    by_dataset: dict[str, list[CaseRecord]] = defaultdict(list)
    for record in records:
        by_dataset[record.dataset].append(record)
    for dataset, dataset_records in by_dataset.items():
        rows = list(dict.fromkeys(r.row for r in dataset_records))
        entries = []
        for subset, subset_records in _subsets(dataset_records, (subset_by or {}).get(dataset)):
            of_row = {row: [r for r in subset_records if r.row == row] for row in rows}
            for row in rows:
                versus = versus_of(row)
                compared = versus is not None and versus != row and bool(of_row.get(versus))
                entries.append(Entry(subset, row, of_row[row], versus if compared else None,
                                     pair(of_row[versus], of_row[row]) if compared else None))
        output += _dataset_rows(dataset, entries, extras, seed)
    return output


def _dataset_rows(dataset: str, entries: list[Entry], extras: dict[tuple[str, str], tuple[int, int, float]],
                  seed: int) -> list[dict[str, object]]:
    """The summary rows of one dataset: Holm over its comparisons, Bonferroni CIs at 1 - alpha/m."""
    compared = [entry for entry in entries if entry.pairing is not None]
    m = len(compared)
    level = 1 - ALPHA / m if m else 1 - ALPHA
    case = {id(e): case_level(e.pairing.case_differences, e.pairing.case_groups, level, seed) for e in compared}
    run = {id(e): run_level(e.pairing.run_differences, level) for e in compared}
    case_holm = dict(zip(case, holm([r.p_value for r in case.values()])))
    run_holm = dict(zip(run, holm([r.p_value for r in run.values()])))
    baselines = {entry.versus for entry in entries}
    rows = []
    for entry in entries:
        subset, row, records, versus, pairing = entry.subset, entry.row, entry.records, entry.versus, entry.pairing
        runs = _runs(records)
        metrics = {key: _mean_std([r.metrics[key] for r in records]) for key in METRICS}
        run_dice = _mean_std([_mean_std([r.metrics["Dice"] for r in run_records])[0] for run_records in runs.values()])
        trainable, frozen, seconds = extras.get((dataset, row), (0, 0, 0.0))
        summary: dict[str, object] = {
            "dataset": dataset, "subset": subset, "row": row, "trainer": records[0].trainer if records else "",
            "cases": len({r.case for r in records}), "runs": len(runs), "dice_run_mean": run_dice[0],
            "dice_run_std": run_dice[1],
            **{f"{METRIC_COLUMNS[key]}_{part}": value for key in METRICS
               for part, value in zip(("mean", "std"), metrics[key])},
            "baseline": versus or "", "comparisons": m if versus else 0, "ci_level": level if versus else math.nan,
            "trainable_params": trainable, "frozen_params": frozen, "train_seconds": seconds}
        if versus is None:
            summary.update({key: math.nan for key in SUMMARY_HEADER if key not in summary})
            summary.update(case_units="", level="", verdict="baseline" if row in baselines else "-")
        else:
            c, r = case[id(entry)], run[id(entry)]
            chosen = "run" if r.n >= MIN_RUNS else "case"
            summary.update(
                case_units="patients" if pairing.case_groups else "cases", case_n=c.n, case_delta=c.mean,
                case_ci_low=c.low, case_ci_high=c.high, case_p_wilcoxon=c.p_value, case_p_holm=case_holm[id(entry)],
                run_n=r.n, run_delta=r.mean, run_ci_low=r.low, run_ci_high=r.high, run_p_ttest=r.p_value,
                run_p_holm=run_holm[id(entry)], level=chosen,
                verdict=_verdict(chosen, r if chosen == "run" else c,
                                 run_holm[id(entry)] if chosen == "run" else case_holm[id(entry)], versus))
        rows.append({key: summary[key] for key in SUMMARY_HEADER})
    return rows


# ---------------------------------------------------------------- rendering (from CSV values)

def _number(value: object) -> float:
    return float(value) if value not in ("", None) else math.nan


def _pm(row: dict, prefix: str) -> str:
    mean, std = _number(row[f"{prefix}_mean"]), _number(row[f"{prefix}_std"])
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"  # no sd of a single run


def _delta(row: dict, level: str, n_label: str) -> str:
    low, high = _number(row[f"{level}_ci_low"]), _number(row[f"{level}_ci_high"])
    interval = "no CI" if math.isnan(low) else f"{low:+.4f}, {high:+.4f}"
    return f"{_number(row[f'{level}_delta']):+.4f} [{interval}] ({int(_number(row[f'{level}_n']))}{n_label})"


def _p(value: object) -> str:
    number = _number(value)
    return "-" if math.isnan(number) else f"{number:.3g}"


def table_cells(row: dict) -> list[str]:
    """The markdown cells of one summary row (as read back from STEM.csv or as computed)."""
    compared = bool(row["baseline"])
    units = f" {row['case_units']}" if compared else ""
    return [str(row["dataset"]), str(row["subset"]), str(row["row"]), str(row["cases"]), str(row["runs"]),
            _pm(row, "dice_run"), _pm(row, "dice"), _pm(row, "iou"), _pm(row, "paper_iou"), _pm(row, "paper_f1"),
            str(row["baseline"]) if compared else "-",
            _delta(row, "case", units) if compared else "-",
            f"{_p(row['case_p_wilcoxon'])} ({_p(row['case_p_holm'])})" if compared else "-",
            _delta(row, "run", "") if compared else "-",
            f"{_p(row['run_p_ttest'])} ({_p(row['run_p_holm'])})" if compared else "-",
            str(row["verdict"]), f"{int(_number(row['trainable_params'])):,}",
            f"{int(_number(row['frozen_params'])):,}", f"{_number(row['train_seconds']):.0f}"]


def render_table(rows: Sequence[dict]) -> str:
    """The markdown summary table of summary rows."""
    from nnunetv2_llm4seg.report import markdown_table

    return markdown_table(TABLE_HEADER, [table_cells(row) for row in rows])


def legend(baseline: str | None, seed: int) -> str:
    """What the summary table's columns mean, for the study's baseline and bootstrap seed."""
    return (f"{NNUNET_LABEL}; {PAPER_LABEL}. Baseline {baseline or 'none'} (CMUNeXt booster rows: plain CMUNeXt); "
            f"bootstrap seed {seed}. {LEGEND}")


def write_summary(folder: Path, stem: str, title: str, baseline: str | None, seed: int,
                  rows: Sequence[dict]) -> None:
    """STEM.md (title, legend, table) and STEM.csv (the summary rows) in `folder`, each written atomically."""
    from nnunetv2_llm4seg.report import write_csv, write_text

    write_text(folder / f"{stem}.md", f"{title}\n\n{legend(baseline, seed)}\n\n{render_table(rows)}\n")
    write_csv(folder / f"{stem}.csv", SUMMARY_HEADER, [[row[key] for key in SUMMARY_HEADER] for row in rows])


def rebuild(folder: Path, stem: str, baseline: str | None, seed: int = 0,
            subset_by: dict[str, str | None] | None = None) -> list[dict[str, object]]:
    """The summary rows recomputed from FOLDER/STEM_per_case.csv; parameter counts and train time (not per case)
    are taken from the existing FOLDER/STEM.csv."""
    records = read_per_case(folder / f"{stem}_per_case.csv")
    extras = {(r["dataset"], r["row"]): (int(r["trainable_params"]), int(r["frozen_params"]),
                                         float(r["train_seconds"])) for r in read_summary(folder / f"{stem}.csv")}
    rows = tuple(dict.fromkeys(r.row for r in records))
    return summary_rows(records, lambda row: baseline_of(row, rows, baseline), extras, seed, subset_by)


def headline_table(studies: Sequence[tuple[str, Sequence[dict]]]) -> str:
    """One line per row: for each (label, summary rows of one dataset) its Dice over runs, the difference to the
    row's baseline with the level and adjusted CI the verdict rests on, and the verdict."""
    from nnunetv2_llm4seg.report import markdown_table

    header = ["row"] + [cell for label, _ in studies for cell in (f"{label} Dice", f"{label} ΔDice [adj. CI]",
                                                                    f"{label} verdict")]
    rows = list(dict.fromkeys(str(r["row"]) for _, summary in studies for r in summary))
    lines = []
    for row in rows:
        cells = [row]
        for _, summary in studies:
            found = next((r for r in summary if r["row"] == row), None)
            if found is None:
                cells += ["not run", "", ""]
                continue
            level = str(found["level"])
            delta = (f"{_number(found[f'{level}_delta']):+.3f} [{_number(found[f'{level}_ci_low']):+.3f}, "
                     f"{_number(found[f'{level}_ci_high']):+.3f}] ({level}, vs {found['baseline']})"
                     if found["baseline"] else "-")
            cells += [f"{_number(found['dice_run_mean']):.3f}", delta, str(found["verdict"])]
        lines.append(cells)
    return markdown_table(header, lines)


LEGEND = ("Dice (runs): mean ± sd (ddof=1) over training runs (fold x seed) of each run's mean case Dice; other "
          "metrics: mean ± sd (ddof=1) over cases x runs. ΔDice: Dice minus the Dice of the row in 'vs' on the same "
          "cases and runs. Case level: mean per-case difference (averaged over seeds), percentile bootstrap CI "
          "(10,000 resamples; whole patients resampled where patient ids exist, n = patients), p: two-sided "
          "Wilcoxon signed-rank test over patients (or cases). Run level: mean of the per-run mean differences, "
          "Student's t CI, p: one-sample two-sided t-test over runs. Within each dataset: p Holm-adjusted (in "
          "parentheses; raw before them), CIs Bonferroni-adjusted to level 1 - 0.05/m (m comparisons). Verdict: "
          f"on the run level when there are at least {MIN_RUNS} paired runs, else on the case level; better/worse "
          "only when the adjusted CI excludes 0 and the Holm p < 0.05, inconclusive when only one of the two does.")


# ---------------------------------------------------------------- attention of two rows (llm4seg explain)

ATTENTION_HEADER = ["row", "case", "patient", "tokens", "mean_distance_tokens", "entropy", "uniform_entropy",
                    "foreground_share", "foreground_area_share", "reference_share", "reference_area_share"]
ATTENTION_METRICS = {"mean attention distance (tokens)": lambda r: float(r["mean_distance_tokens"]),
                     "entropy / log N": lambda r: float(r["entropy"]) / float(r["uniform_entropy"]),
                     "attention on the lesion": lambda r: float(r["reference_share"])}


def attention_table(records: Sequence[dict[str, str]], rows: tuple[str, str], seed: int = 0) -> str:
    """Per row of `rows` the mean ± sd (ddof=1) over cases of each ATTENTION_METRICS value and the lesion's share of
    the tile, then the paired difference rows[0] - rows[1] on the same cases: mean, 95% grouped bootstrap CI over
    patients (cases without ids: over cases), Wilcoxon p over patients and its Holm adjustment over the metrics."""
    from nnunetv2_llm4seg.report import markdown_table

    by_row = {row: {r["case"]: r for r in records if r["row"] == row} for row in rows}
    cases = sorted(set(by_row[rows[0]]) & set(by_row[rows[1]]))
    if not cases:
        raise ValueError(f"no case was explained for both {rows[0]} and {rows[1]}")
    lines = []
    for row in rows:
        cells = [row, str(len(by_row[row])), by_row[row][cases[0]]["tokens"]]
        for value in (*ATTENTION_METRICS.values(), lambda r: float(r["reference_area_share"])):
            mean, std = _mean_std([value(r) for r in by_row[row].values()])
            cells.append(f"{mean:.3f} ± {std:.3f}")
        lines.append(cells)
    patients = [by_row[rows[0]][case]["patient"] or case for case in cases]
    results = [case_level([value(by_row[rows[0]][case]) - value(by_row[rows[1]][case]) for case in cases],
                          patients, seed=seed) for value in ATTENTION_METRICS.values()]
    adjusted = holm([result.p_value for result in results])
    units = f"{len(set(patients))} patients" if any(by_row[rows[0]][case]["patient"] for case in cases) else "cases"
    lines.append([f"{rows[0]} - {rows[1]}", f"{len(cases)} ({units})", ""] +
                 [f"{r.mean:+.3f} [{r.low:+.3f}, {r.high:+.3f}] p {r.p_value:.2g} (Holm {p:.2g})"
                  for r, p in zip(results, adjusted)] + [""])
    return markdown_table(["row", "cases", "tokens", *ATTENTION_METRICS, "lesion's area share"], lines)


# ---------------------------------------------------------------- training curves

def curve_table(records: Sequence[dict[str, str]], epochs: Sequence[int], value: str = "ema_pseudo_dice",
                baseline: str | None = "stock") -> str:
    """`value` (a study_curves.csv column) at the given epochs, averaged over each row's runs, then per row with a
    baseline the row minus its baseline: whether a gap closes, holds or flips as training goes on."""
    from nnunetv2_llm4seg.report import markdown_table

    rows = tuple(dict.fromkeys(r["row"] for r in records))
    runs: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in records:
        runs[r["row"], int(r["epoch"])].append(float(r[value]))
    missing = [f"{row} epoch {epoch}" for row in rows for epoch in epochs if (row, epoch) not in runs]
    if missing:
        raise ValueError(f"no {value} for {', '.join(missing)}")
    means = {key: float(np.mean(values)) for key, values in runs.items()}
    lines = [[row] + [f"{means[row, epoch]:.3f}" for epoch in epochs] for row in rows]
    for row in rows:
        versus = baseline_of(row, rows, baseline)
        if versus not in (None, row):
            lines.append([f"{row} - {versus}"] + [f"{means[row, e] - means[versus, e]:+.3f}" for e in epochs])
    return markdown_table([f"{value} at epoch"] + [str(epoch) for epoch in epochs], lines)
