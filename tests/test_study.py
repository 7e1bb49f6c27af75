"""`llm4seg study`: statistics on known differences, and the whole machinery end to end on tiny synthetic data."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_llm4seg import cli
from nnunetv2_llm4seg.metrics import METRICS
from nnunetv2_llm4seg.evidence import CaseRecord, baseline_of, read_per_case, render_table, summary_rows
from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def record(row: str, case: str, dice: float, fold: int = 0, seed: int = 0, patient: str = "") -> CaseRecord:
    return CaseRecord("Dataset001_X", row, row, fold, seed, case, patient, "", {key: dice for key in METRICS})


def test_cmunext_booster_rows_are_compared_with_plain_cmunext_and_others_with_the_baseline():
    rows = ("stock", "frozen", "cmunext", "cmunext-frozen")
    base = {"stock": 0.5, "frozen": 0.6, "cmunext": 0.7, "cmunext-frozen": 0.7}
    records = [record(row, f"c{i}", base[row] + 0.01 * i) for row in rows for i in range(6)]
    summary = summary_rows(records, lambda row: baseline_of(row, rows, "stock"), {})
    assert {r["row"]: r["baseline"] for r in summary} == {"stock": "", "frozen": "stock", "cmunext": "stock",
                                                          "cmunext-frozen": "cmunext"}
    deltas = {r["row"]: r["case_delta"] for r in summary}
    assert deltas["cmunext-frozen"] == pytest.approx(0.0) and deltas["cmunext"] == pytest.approx(0.2)
    assert [r["comparisons"] for r in summary] == [0, 3, 3, 3]  # Holm over the dataset's 3 comparisons
    assert summary[0]["verdict"] == "baseline"


def test_seeds_are_averaged_per_case_and_runs_pair_fold_and_seed():
    records = [record("stock", c, 0.5, fold, seed, patient=f"p{c[-1]}") for fold, c in ((0, "a1"), (0, "a2"), (1, "b1"))
               for seed in (0, 1, 2)]
    gain = {0: 0.03, 1: 0.01, 2: 0.02}  # per seed; case b1 gains twice as much
    records += [record("frozen", c, 0.5 + gain[seed] * (2 if c == "b1" else 1), fold, seed, patient=f"p{c[-1]}")
                for fold, c in ((0, "a1"), (0, "a2"), (1, "b1")) for seed in (0, 1, 2)]
    row = summary_rows(records, {"frozen": "stock"}.get, {})[1]
    assert row["runs"] == 6 and row["cases"] == 3 and row["run_n"] == 6
    assert row["case_units"] == "patients" and row["case_n"] == 2  # a1, b1 (p1) and a2 (p2)
    assert row["case_delta"] == pytest.approx((0.02 + 0.02 + 0.04) / 3)  # per case: mean over its 3 seeds
    assert row["run_delta"] == pytest.approx(np.mean([0.03, 0.01, 0.02, 0.06, 0.02, 0.04]))
    assert row["level"] == "run" and row["verdict"].endswith("(run level)")
    assert render_table([row]).count("\n") == 2  # header, rule, one row


@pytest.mark.slow
def test_study_end_to_end_with_seeds_and_a_held_out_split_is_resumable(tmp_path, monkeypatch, capsys):
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    for variable, value in (("nnUNet_n_proc_DA", "1"), ("nnUNet_def_n_proc", "1"), ("nnUNet_compile", "f")):
        monkeypatch.setenv(variable, value)
    make_ultrasound_dataset(tmp_path / "raw", 652, cases=6, size=32, seed=2, name="Tiny2")
    devices = ["A", "A", "A", "B", "B", "C"]
    (tmp_path / "raw" / "Dataset652_Tiny2" / "case_metadata.csv").write_text(
        "case,patient,device\n" + "".join(f"us_tr_{i:03d},p{i // 2},{d}\n" for i, d in enumerate(devices)))
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps({
        "datasets": [{"dataset": "Dataset652_Tiny2", "split": {"by": "device", "train": ["A"]}}],
        "rows": ["stock", "adapters"], "preset": "minilm-l6", "folds": [0], "epochs": 1, "iterations": 2,
        "caps": [32, 32, 2], "device": "cpu", "seeds": [0, 3], "output": "out"}))
    assert cli.main(["study", str(study_file), "--no-progress"]) == 0
    first = capsys.readouterr().out
    output = tmp_path / "out"
    table = (output / "study.md").read_text()
    assert "| Dataset652_Tiny2 | device = C | adapters | 1 | 2 |" in table  # held out: B (2 cases) and C (1); 2 seeds
    assert "held-out split fold 5: train device = A" in table and "Holm" in table and "paper protocol" in table
    rows = read_csv(output / "study.csv")
    assert [(r["subset"], r["row"]) for r in rows] == [("device = B", "stock"), ("device = B", "adapters"),
                                                       ("device = C", "stock"), ("device = C", "adapters")]
    assert [r["comparisons"] for r in rows] == ["0", "2", "0", "2"]  # one Holm family per dataset
    adapters = rows[1]
    assert adapters["baseline"] == "stock" and adapters["run_n"] == "2" and adapters["cases"] == "2"
    assert adapters["level"] == "case" and "(case level" in adapters["verdict"]  # 2 runs: too few for the run level
    assert adapters["case_units"] == "patients" and adapters["case_n"] == "2"  # us_tr_003 (p1), us_tr_004 (p2)
    assert rows[0]["verdict"] == "baseline"
    per_case = read_csv(output / "study_per_case.csv")
    assert len(per_case) == 2 * 2 * 3 and {r["seed"] for r in per_case} == {"0", "3"}
    assert {(r["case"], r["patient"], r["device"]) for r in per_case} == \
        {("us_tr_003", "p1", "B"), ("us_tr_004", "p2", "B"), ("us_tr_005", "p2", "C")}
    records = read_per_case(output / "study_per_case.csv")  # the CSV reproduces the summary
    recomputed = summary_rows(records, {"adapters": "stock"}.get, {}, subset_by={"Dataset652_Tiny2": "device"})
    assert [r["verdict"] for r in recomputed] == [r["verdict"] for r in rows]
    assert [f"{r['case_delta']:.6g}" for r in recomputed] == [f"{float(r['case_delta']):.6g}" for r in rows]
    splits = json.loads((tmp_path / "preprocessed" / "Dataset652_Tiny2" / "splits_final.json").read_text())
    assert len(splits) == 6 and splits[5] == {"train": ["us_tr_000", "us_tr_001", "us_tr_002"],
                                              "val": ["us_tr_003", "us_tr_004", "us_tr_005"]}
    curves = read_csv(output / "study_curves.csv")
    assert {(r["row"], r["fold"], r["seed"], r["epoch"]) for r in curves} == \
        {("stock", "5", "0", "1"), ("stock", "5", "3", "1"), ("adapters", "5", "0", "1"), ("adapters", "5", "3", "1")}
    for figure in ("study_dice.png", "study_differences.png", "study_curves.png"):
        assert (output / figure).stat().st_size > 1000
    plans = json.loads((tmp_path / "preprocessed" / "Dataset652_Tiny2" /
                        "nnUNetPlans_llm4seg-minilm-l6_1x2_cap32-32-2_seed3.json").read_text())
    assert plans["configurations"]["2d"]["batch_size"] == 2 and plans["configurations"]["2d"]["patch_size"] == [32, 32]

    results = tmp_path / "results" / "Dataset652_Tiny2"
    fold = results / "nnUNetTrainer__nnUNetPlans_llm4seg-minilm-l6_1x2_cap32-32-2_seed3__2d" / "fold_5"
    assert json.loads((fold / "llm4seg_schedule.json").read_text())["seed"] == 8  # seed 3 + fold 5
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")  # an interrupted run
    other = results / "nnUNetTrainerLLM4SegAdaptersOnly__nnUNetPlans_llm4seg-minilm-l6_1x2_cap32-32-2__2d"
    stamp = (other / "fold_5" / "checkpoint_final.pth").stat().st_mtime_ns
    assert cli.main(["study", str(study_file), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert (fold / "checkpoint_final.pth").is_file()  # continued and finished
    assert (other / "fold_5" / "checkpoint_final.pth").stat().st_mtime_ns == stamp  # finished: skipped
    assert first.split("wrote")[0] == again.split("wrote")[0]
