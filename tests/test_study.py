"""`llm4seg study`: statistics on known differences, and the whole machinery end to end on tiny synthetic data."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_llm4seg import cli
from nnunetv2_llm4seg.metrics import METRICS
from nnunetv2_llm4seg.study import RowResult, compare, paired_differences, summarise
from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset


def test_a_consistent_improvement_is_significant_and_noise_is_not():
    rng = np.random.default_rng(1)
    better = list(0.05 + rng.normal(0, 0.01, 30))
    result = compare(better, "stock", seed=0)
    assert result.verdict == "better than stock" and result.p_value < 1e-4
    assert result.ci_low < np.mean(better) < result.ci_high and result.ci_low > 0
    assert compare([-d for d in better], "stock", seed=0).verdict == "worse than stock"
    noise = list(rng.normal(0, 0.05, 30))
    assert compare(noise, "stock", seed=0).verdict == "no significant difference"
    assert compare(noise, "stock", seed=0) == compare(noise, "stock", seed=0)  # fixed bootstrap seed
    assert compare([0.1], "stock", seed=0).verdict == "too few paired cases to compare"
    assert compare([0.0] * 5, "stock", seed=0).verdict == "no significant difference"


def test_differences_pair_cases_and_skip_undefined_dice():
    baseline = {"a": {"Dice": 0.5}, "b": {"Dice": float("nan")}, "c": {"Dice": 0.7}, "d": {"Dice": 0.1}}
    other = {"a": {"Dice": 0.75}, "b": {"Dice": 0.0}, "c": {"Dice": 0.6}}
    assert paired_differences(baseline, other) == pytest.approx([0.25, -0.1])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_cmunext_booster_rows_are_compared_with_plain_cmunext_and_others_with_the_baseline():
    def row(name: str, dice: float) -> RowResult:
        cases = {f"c{i}": {**{key: dice + 0.01 * i for key in METRICS}, "fold": 0} for i in range(6)}
        return RowResult("Dataset001_X", name, name, cases, [dice])

    results = [row("stock", 0.5), row("frozen", 0.6), row("cmunext", 0.7), row("cmunext-frozen", 0.7)]
    markdown, csv_rows, differences = summarise(results, "stock", seed=0)
    versus = {r[1]: r[15] for r in csv_rows}
    assert versus == {"stock": "", "frozen": "stock", "cmunext": "stock", "cmunext-frozen": "cmunext"}
    assert differences["X: cmunext-frozen"] == pytest.approx([0.0] * 6)  # against cmunext, not stock (+0.2)
    assert differences["X: cmunext"] == pytest.approx([0.2] * 6)
    assert [r[9] for r in markdown] == ["-", "stock", "stock", "cmunext"]


@pytest.mark.slow
def test_study_end_to_end_on_two_tiny_datasets_is_resumable(tmp_path, monkeypatch, capsys):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    for variable, value in (("nnUNet_n_proc_DA", "1"), ("nnUNet_def_n_proc", "1"), ("nnUNet_compile", "f")):
        monkeypatch.setenv(variable, value)
    for dataset_id, seed in ((651, 1), (652, 2)):
        make_ultrasound_dataset(tmp_path / "raw", dataset_id, cases=6, size=32, seed=seed, name=f"Tiny{seed}")
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps({
        "datasets": ["651", {"dataset": "Dataset652_Tiny2", "folds": [1]}], "rows": ["stock", "adapters"],
        "preset": "minilm-l6", "folds": [0], "epochs": 1, "iterations": 2, "caps": [32, 32, 2],
        "device": "cpu", "seed": 3, "output": "out"}))
    assert cli.main(["study", str(study_file), "--no-progress"]) == 0
    first = capsys.readouterr().out
    output = tmp_path / "out"
    table = (output / "study.md").read_text()
    assert "| Dataset651_Tiny1 | stock | nnUNetTrainer | 2 |" in table  # fold 0 of 6 cases validates 2
    assert "| Dataset652_Tiny2 | adapters | nnUNetTrainerLLM4SegAdaptersOnly | 1 |" in table
    assert "paper protocol" in table and "Wilcoxon" in table and "baseline" in table
    rows = read_csv(output / "study.csv")
    assert [(r["dataset"], r["row"]) for r in rows] == [("Dataset651_Tiny1", "stock"), ("Dataset651_Tiny1", "adapters"),
                                                       ("Dataset652_Tiny2", "stock"), ("Dataset652_Tiny2", "adapters")]
    adapters = rows[1]
    assert adapters["baseline"] == "stock" and adapters["paired_cases"] == "2" and adapters["folds"] == "1"
    assert adapters["verdict"] in ("no significant difference", "better than stock", "worse than stock")
    assert float(adapters["delta_dice_ci_low"]) <= float(adapters["delta_dice_mean"]) <= \
        float(adapters["delta_dice_ci_high"])
    assert rows[0]["verdict"] == "baseline"
    per_case = read_csv(output / "study_per_case.csv")
    assert len(per_case) == 2 * 2 + 2 * 1 and {r["fold"] for r in per_case} == {"0", "1"}
    for row in per_case:
        assert 0 <= float(row["paper IoU"]) <= 1 and 0 <= float(row["paper F1"]) <= 1
    curves = read_csv(output / "study_curves.csv")
    assert len(curves) == 2 * 1 + 2 * 1  # rows x folds x 1 epoch
    assert {(r["row"], r["fold"], r["epoch"]) for r in curves if r["dataset"] == "Dataset652_Tiny2"} == \
        {("stock", "1", "1"), ("adapters", "1", "1")}
    assert all(0 <= float(r["ema_pseudo_dice"]) <= 1 and float(r["train_loss"]) == float(r["train_loss"])
               for r in curves)
    for figure in ("study_dice.png", "study_differences.png", "study_curves.png"):
        assert (output / figure).stat().st_size > 1000
    plans = json.loads((tmp_path / "preprocessed" / "Dataset651_Tiny1" /
                        "nnUNetPlans_llm4seg-minilm-l6_1x2_cap32-32-2.json").read_text())
    assert plans["configurations"]["2d"]["batch_size"] == 2 and plans["configurations"]["2d"]["patch_size"] == [32, 32]

    fold = tmp_path / "results" / "Dataset652_Tiny2" / \
        "nnUNetTrainer__nnUNetPlans_llm4seg-minilm-l6_1x2_cap32-32-2__2d" / "fold_1"
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")  # an interrupted fold
    other = tmp_path / "results" / "Dataset651_Tiny1" / \
        "nnUNetTrainerLLM4SegAdaptersOnly__nnUNetPlans_llm4seg-minilm-l6_1x2_cap32-32-2__2d"
    stamp = (other / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns
    assert cli.main(["study", str(study_file), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert (fold / "checkpoint_final.pth").is_file()  # continued and finished
    assert (other / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == stamp  # finished: skipped
    assert first.split("wrote")[0] == again.split("wrote")[0]
