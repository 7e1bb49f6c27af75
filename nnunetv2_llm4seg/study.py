"""`llm4seg study STUDY.json`: several datasets x rows x folds in one resumable run, with statistics.

Every row trains with the same schedule, caps and seed policy (torch, numpy and random seeded with seed + fold
before each fold) through nnU-Net's own trainer, validation and splits; finished folds are skipped and
interrupted ones continue from their latest checkpoint when the command is run again. Per row and dataset the
tables give both metric protocols (see metrics.py), mean ± sd over runs and over cases, and against the
baseline row the Dice difference at the case level (patients resampled where the dataset has patient ids) and
at the run level (fold x seed), Holm-adjusted within each dataset, with a verdict naming the level it rests on
(evidence.py, stats.py). `llm4seg ablate` is a study of one dataset.

A STUDY.json (paths relative to the file; only "datasets" and "rows" are required):

    {"datasets": ["Dataset120_KvasirSEG", {"dataset": "121", "folds": [0, 1, 2]},
                  {"dataset": "501", "split": {"by": "device", "train": ["GE Logiq 7 @10-14MHz"]}}],
     "rows": ["stock", "frozen", "nnUNetTrainerCMUNeXt"], "baseline": "stock", "preset": "minilm-l6",
     "configuration": "2d", "folds": [0, 1, 2, 3, 4], "epochs": 50, "iterations": 250, "caps": "auto",
     "device": "cuda", "seeds": [0, 1, 2], "plans": "nnUNetPlans", "output": "study_results"}

"seeds": one training run per fold and seed (default: [seed], seed defaulting to 0); seed 0 trains into nnU-Net's
usual results folder TRAINER__PLANS__CONFIGURATION, seed s > 0 into a plans copy named PLANS_seed{s}, so every
run has its own folder. A dataset entry's "split" replaces its folds by one held-out split (see held_out.py):
train on the cases whose case_metadata.csv column has the given values, validate on the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_llm4seg.case_metadata import read_case_metadata
from nnunetv2_llm4seg.evidence import CaseRecord, baseline_of, pair, summary_rows, write_summary
from nnunetv2_llm4seg.experiments import (CURVES, ExperimentError, Schedule, cpu_friendly_defaults,
                                          TrainingRun, plan_and_preprocess, train_fold, training_curves,
                                          write_plans_variant)
from nnunetv2_llm4seg.held_out import HeldOutSplit, held_out_fold, parse_split, write_held_out_fold
from nnunetv2_llm4seg.metrics import METRICS, case_metrics
from nnunetv2_llm4seg.paths import (check_output, claim_output, dataset_name, find_dataset, plans_identifier,
                                    relative_to_file)
from nnunetv2_llm4seg.report import plot_differences, plot_per_case, plot_training_curves, write_csv

ROWS = {
    "stock": "nnUNetTrainer",
    "frozen": "nnUNetTrainerLLM4Seg",
    "unfrozen": "nnUNetTrainerLLM4SegUnfrozen",
    "random": "nnUNetTrainerLLM4SegRandomInit",
    "adapters": "nnUNetTrainerLLM4SegAdaptersOnly",
    "causal": "nnUNetTrainerLLM4SegCausal",
    "lora": "nnUNetTrainerLLM4SegLoRA",
    "gated": "nnUNetTrainerLLM4SegGated",
    "paper": "nnUNetTrainerLLM4SegPaper",
    "paper-unfrozen": "nnUNetTrainerLLM4SegPaperUnfrozen",
    "paper-random": "nnUNetTrainerLLM4SegPaperRandomInit",
    "cmunext": "nnUNetTrainerCMUNeXt",
    "cmunext-frozen": "nnUNetTrainerCMUNeXtLLM4Seg",
    "cmunext-unfrozen": "nnUNetTrainerCMUNeXtLLM4SegUnfrozen",
    "cmunext-random": "nnUNetTrainerCMUNeXtLLM4SegRandomInit",
    "cmunext-adapters": "nnUNetTrainerCMUNeXtLLM4SegAdaptersOnly",
    "cmunext-lora": "nnUNetTrainerCMUNeXtLLM4SegLoRA",
    "cmunext-gated": "nnUNetTrainerCMUNeXtLLM4SegGated",
    "cmunext-paper": "nnUNetTrainerCMUNeXtLLM4SegPaper",
}
# Rows run the study's preset (the plans copy's llm4seg entry) with the row's own settings on top: with
# "preset": "minilm-l6", "frozen" is frozen MiniLM, "causal" frozen MiniLM with causal attention, "lora" MiniLM
# with LoRA; "paper" rows keep the official computation (a preset whose family has no rotary positions is refused).
BASELINES = ("stock", "cmunext")
DEVICES = ("cpu", "cuda", "mps")
OUTPUT_OPTION = {"study": "the study's \"output\"", "ablate": "--output"}
CPU_CAPS = (128, 256, 4)  # patch, features, batch: as the demo (nnU-Net plans batch 56 for small 2D images)
MIN_CAPS = (16, 4, 1)
STANDARD_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
IMAGE_2D_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
KEYS = {"datasets", "rows", "baseline", "preset", "configuration", "folds", "epochs", "iterations", "caps",
        "device", "seed", "seeds", "plans", "output"}
DATASET_KEYS = {"dataset", "configuration", "folds", "plans", "split"}


@dataclass(frozen=True)
class DatasetEntry:
    reference: str
    configuration: str = "2d"
    folds: tuple[int, ...] = (0,)
    plans: str = "nnUNetPlans"
    split: HeldOutSplit | None = None  # set: one held-out fold (its index is resolved at run time) replaces folds


@dataclass(frozen=True)
class Study:
    datasets: tuple[DatasetEntry, ...]
    rows: tuple[str, ...]
    output: Path | None  # None: nnUNet_results/DATASET/llm4seg_STEM__PLANS__CONFIGURATION (one dataset only)
    baseline: str | None = None
    preset: str = "llama3.2-1b-l15"
    epochs: int = 50
    iterations: int = 250
    caps: tuple[int, int, int] | None = None
    device: str = "cuda"
    seed: int = 0  # the bootstrap's seed, and the only training seed when `seeds` is empty
    seeds: tuple[int, ...] = ()
    stem: str = "study"
    progress: bool = True
    command: str = "study"  # the command whose output marker the output folder carries (study or ablate)

    @property
    def training_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)


@dataclass
class RowResult:
    dataset: str
    row: str
    trainer: str
    # (seed, case) -> fold, seed, patient, device and the METRICS of that case in that run
    cases: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    curves: dict[tuple[int, int], dict[str, list[float]]] = field(default_factory=dict)  # (fold, seed) -> per epoch
    trainable_params: int = 0
    frozen_params: int = 0
    seconds: float = 0.0


def trainer_name(row: str) -> str:
    return ROWS.get(row, row)


def default_baseline(rows: tuple[str, ...]) -> str | None:
    return next((row for row in rows if row in BASELINES), None)


# ---------------------------------------------------------------- validation (before anything is created)

def _positive(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExperimentError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_trainers(names: tuple[str, ...], where: str) -> None:
    """Every name is a trainer class nnU-Net can find (its own, this package's or nnUNet_extTrainer's)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for name in names:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                recursive_find_trainer_class_by_name(name)
        except (RuntimeError, AssertionError):
            raise ExperimentError(f"{where}: no nnU-Net trainer class named {name!r} (check the spelling; "
                                  "`llm4seg trainers` lists this package's trainers, and nnUNet_extTrainer can "
                                  "point at folders with your own).") from None


def check_rows(rows: tuple[str, ...], baseline: str | None) -> None:
    if not rows:
        raise ExperimentError("no rows given: name at least one of " + ", ".join(ROWS) + " or a trainer class.")
    unknown = [row for row in rows if row not in ROWS and not row.startswith("nnUNetTrainer")]
    if unknown:
        raise ExperimentError(f"unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)} or trainer class "
                              "names (nnUNetTrainer...).")
    repeated = sorted({row for row in rows if rows.count(row) > 1})
    if repeated:
        raise ExperimentError(f"row(s) {', '.join(repeated)} given twice: name each row once.")
    if baseline is not None and baseline not in rows:
        raise ExperimentError(f"baseline {baseline!r} is not one of the rows ({', '.join(rows)}).")
    check_trainers(tuple(trainer_name(row) for row in rows), "rows")


def resolve_caps(caps: Any, device: str) -> tuple[int, int, int] | None:
    """'auto': the CPU caps on a CPU, none on a GPU; None/'none': no caps; else (patch, features, batch)."""
    if caps == "auto":
        return CPU_CAPS if device == "cpu" else None
    if caps in (None, "none"):
        return None
    if not isinstance(caps, (list, tuple)) or len(caps) != 3:
        raise ExperimentError(f"caps must be 'auto', 'none' or three integers PATCH,FEATURES,BATCH, got {caps!r}.")
    for value, name, minimum in zip(caps, ("patch", "features", "batch"), MIN_CAPS):
        _positive(value, f"caps: the {name} cap", minimum)
    return tuple(caps)


def _dataset_name(reference: str) -> str:
    name = find_dataset(reference)
    if name is None:
        raise ExperimentError(f"dataset {reference!r} not found in nnUNet_raw/nnUNet_preprocessed/nnUNet_results "
                              f"(nnUNet_raw={os.environ.get('nnUNet_raw')}): convert it first (llm4seg convert) "
                              "and set the nnU-Net path variables.")
    return dataset_name(name, f"dataset {reference!r}")


def _available_folds(dataset: str) -> tuple[str, int]:
    """Where the folds come from and how many there are: splits_final.json, else nnU-Net's own 5-fold split."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    for folder in (Path(str(nnUNet_preprocessed)) / dataset, Path(str(nnUNet_raw)) / dataset):
        splits = folder / "splits_final.json"
        if splits.is_file():
            return str(splits), len(json.loads(splits.read_text()))
    raw_json = Path(str(nnUNet_raw)) / dataset / "dataset.json"
    cases = json.loads(raw_json.read_text()).get("numTraining", 0) if raw_json.is_file() else 5
    if cases < 5:
        raise ExperimentError(f"{dataset} has {cases} training case(s); nnU-Net's 5-fold split needs at least 5 "
                              "(add cases or write your own splits_final.json into its preprocessed folder).")
    return "nnU-Net's 5-fold split (no splits_final.json yet)", 5


def check_dataset(entry: DatasetEntry) -> str:
    """The dataset's name after checking its folds (or held-out split), configuration and plans; nothing is
    written."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    plans_identifier(entry.plans, f"plans of {entry.reference}")
    dataset = _dataset_name(entry.reference)
    if entry.split is not None:
        held_out_fold(entry.split, Path(str(nnUNet_raw)) / dataset, Path(str(nnUNet_preprocessed)) / dataset)
    elif not entry.folds:
        raise ExperimentError(f"{dataset}: no folds given.")
    for fold in entry.folds:
        _positive(fold, f"{dataset}: fold", minimum=0)
    if len(set(entry.folds)) != len(entry.folds):
        raise ExperimentError(f"{dataset}: folds {list(entry.folds)} repeat a fold; name each fold once.")
    source, count = _available_folds(dataset)
    missing = [fold for fold in entry.folds if fold >= count and entry.split is None]
    if missing:
        raise ExperimentError(f"{dataset}: fold(s) {', '.join(map(str, missing))} do not exist in {source}, which "
                              f"has folds 0-{count - 1}; nnU-Net would silently train on a random 80:20 split "
                              "instead. Choose folds from that range.")
    plans_file = Path(str(nnUNet_preprocessed)) / dataset / f"{entry.plans}.json"
    if plans_file.is_file():
        configurations = json.loads(plans_file.read_text())["configurations"]
        if entry.configuration not in configurations:
            raise ExperimentError(f"{plans_file} has no configuration {entry.configuration!r}; available: "
                                  f"{', '.join(configurations)}.")
    elif entry.plans != "nnUNetPlans":
        raise ExperimentError(f"{plans_file} does not exist: plan and preprocess first, e.g. "
                              f"nnUNetv2_plan_and_preprocess -d {dataset[7:10]} -pl <planner> -c "
                              f"{entry.configuration}.")
    else:
        ending = json.loads((Path(str(nnUNet_raw)) / dataset / "dataset.json").read_text())["file_ending"]
        allowed = ("2d",) if ending.lower() in IMAGE_2D_ENDINGS else STANDARD_CONFIGURATIONS
        if entry.configuration not in allowed:
            raise ExperimentError(f"configuration {entry.configuration!r} is not available for {dataset} "
                                  f"({ending} images): use {' or '.join(allowed)}.")
    return dataset


def _plans_entry(preset: str) -> Any:
    """The llm4seg plans entry: a preset name, or the spec object of a JSON file (stored, so the file can go)."""
    from nnunetv2_llm4seg.errors import SpecError
    from nnunetv2_llm4seg.presets import load_spec

    try:
        spec = load_spec(preset, where="preset")
    except SpecError as error:
        raise ExperimentError(f"{error} (`llm4seg presets` lists the presets).") from None
    return preset if spec.name == preset else spec.to_dict()


def plans_name(study: Study, plans: str, seed: int = 0) -> str:
    """One plans copy per preset, schedule, caps and training seed (seed 0 unmarked), so results of different
    settings never mix."""
    preset = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(study.preset).stem if study.preset.endswith(".json")
                    else study.preset)
    caps = f"_cap{'-'.join(map(str, study.caps))}" if study.caps else ""
    return f"{plans}_llm4seg-{preset}_{study.epochs}x{study.iterations}{caps}{f'_seed{seed}' if seed else ''}"


def validate(study: Study) -> tuple[list[str], Any]:
    """All checks that need no writing: datasets, folds, configurations, rows, preset, schedule, caps."""
    _positive(study.epochs, "epochs")
    _positive(study.iterations, "iterations (training iterations per epoch)")
    _positive(study.seed, "seed", minimum=0)
    for seed in study.seeds:
        _positive(seed, "seeds: each seed", minimum=0)
    if len(set(study.seeds)) != len(study.seeds):
        raise ExperimentError(f"seeds {list(study.seeds)} repeat a seed; name each seed once.")
    if study.caps is not None:
        resolve_caps(list(study.caps), study.device)
    if not study.datasets:
        raise ExperimentError("no datasets given.")
    check_rows(study.rows, study.baseline)
    entry = _plans_entry(study.preset)
    names = [check_dataset(d) for d in study.datasets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ExperimentError(f"dataset(s) {', '.join(repeated)} given twice: name each dataset once (a held-out "
                              "split and cross-validation folds of one dataset go into two studies).")
    return names, entry


# ---------------------------------------------------------------- running

def _ensure_preprocessed(dataset: str, entry: DatasetEntry, log: Path) -> None:
    """Plan and preprocess with nnU-Net's defaults when nothing is there; refuse other half-prepared states."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(str(nnUNet_preprocessed)) / dataset
    plans_file = folder / f"{entry.plans}.json"
    if not plans_file.is_file():
        plan_and_preprocess(int(dataset[7:10]), entry.configuration, log)
    configurations = json.loads(plans_file.read_text())["configurations"]
    if entry.configuration not in configurations:
        raise ExperimentError(f"nnU-Net planned no configuration {entry.configuration!r} for {dataset}; "
                              f"available: {', '.join(configurations)}.")
    data = PlansManager(str(plans_file)).get_configuration(entry.configuration).data_identifier
    if not (folder / data).is_dir():
        raise ExperimentError(f"configuration {entry.configuration!r} of {entry.plans} is not preprocessed "
                              f"({folder / data} is missing): run nnUNetv2_preprocess -d {dataset[7:10]} -plans_name "
                              f"{entry.plans} -c {entry.configuration}.")


def _check_run_seed(fold_folder: Path, seed: int) -> None:
    """A reused run must have been trained with the seed asked for (runs from before seeds were recorded pass)."""
    schedule_file = fold_folder / "llm4seg_schedule.json"
    recorded = json.loads(schedule_file.read_text()).get("seed") if schedule_file.is_file() else None
    if recorded is not None and recorded != seed:
        raise ExperimentError(f"{fold_folder} was trained with seed {recorded}, this study asks for seed {seed}: "
                              "move that folder away or change the study's seeds.")


def run_row(study: Study, dataset: str, entry: DatasetEntry, plans: dict[int, str], folds: tuple[int, ...],
            row: str, metadata: dict[str, dict[str, str]], log: Path) -> RowResult:
    """Train (or reuse) every fold x seed run of one row (plans: seed -> plans name) and collect both protocols'
    per-case metrics with the cases' metadata."""
    schedule = Schedule(study.epochs, study.iterations, val_iterations=max(1, study.iterations // 5))
    result = RowResult(dataset, row, trainer_name(row))
    for seed in study.training_seeds:
        for fold in folds:
            run = train_fold(dataset, entry.configuration, fold, result.trainer, plans[seed], schedule, study.device,
                             log, validate=True, progress=study.progress, seed=seed + fold)
            _check_run_seed(run.fold_folder, seed + fold)
            _collect_run(result, run, fold, seed, metadata)
    return result


def _collect_run(result: RowResult, run: TrainingRun, fold: int, seed: int,
                 metadata: dict[str, dict[str, str]]) -> None:
    """Add one trained run's per-case metrics (with each case's patient and device), curves, parameter counts and
    training time to the row."""
    summary = json.loads((run.fold_folder / "validation" / "summary.json").read_text())
    dataset_json = json.loads((run.model_folder / "dataset.json").read_text())
    cases = {(seed, case): {**metrics, "fold": fold, "seed": seed, "patient": metadata.get(case, {}).get("patient", ""),
                            "device": metadata.get(case, {}).get("device", "")}
             for case, metrics in case_metrics(summary, dataset_json).items()}
    result.cases.update(cases)
    result.curves[fold, seed] = training_curves(run.fold_folder)
    result.trainable_params, result.frozen_params = run.trainable_params, run.frozen_params
    schedule_file = run.fold_folder / "llm4seg_schedule.json"
    if schedule_file.is_file():
        result.seconds += json.loads(schedule_file.read_text())["seconds"]


# ---------------------------------------------------------------- tables and figures

def mean_curves(result: RowResult) -> dict[str, list[float]]:
    """Each per-epoch curve averaged over the row's runs (fold x seed; epochs all runs reached)."""
    runs = list(result.curves.values())
    return {key: [float(np.mean(values)) for values in zip(*(run[key] for run in runs))] for key in CURVES}


CURVES_HEADER = ["dataset", "row", "fold", "seed", "epoch", "train_loss", "val_loss", "pseudo_dice",
                 "ema_pseudo_dice"]
PER_CASE_HEADER = ["dataset", "row", "trainer", "fold", "seed", "case", "patient", "device", *METRICS]


def curve_rows(results: list[RowResult]) -> list[list[object]]:
    """One CSV row per dataset, row, fold, seed and epoch."""
    return [[r.dataset, r.row, fold, seed, epoch + 1, *(curves[key][epoch] for key in CURVES)]
            for r in results for (fold, seed), curves in sorted(r.curves.items())
            for epoch in range(len(curves["ema_fg_dice"]))]


def case_records(results: list[RowResult]) -> list[CaseRecord]:
    """One record per dataset, row, run (fold, seed) and case, with the case's patient and device."""
    return [CaseRecord(r.dataset, r.row, r.trainer, m["fold"], seed, case, m["patient"], m["device"],
                       {key: m[key] for key in METRICS})
            for r in results
            for (seed, case), m in sorted(r.cases.items(), key=lambda item: (item[1]["fold"], item[0]))]


def per_case_rows(records: list[CaseRecord]) -> list[list[object]]:
    """The STEM_per_case.csv rows (PER_CASE_HEADER) of the records."""
    return [[c.dataset, c.row, c.trainer, c.fold, c.seed, c.case, c.patient, c.device,
             *(c.metrics[key] for key in METRICS)] for c in records]


def write_outputs(study: Study, results: list[RowResult], title: str) -> list[Path]:
    """STEM.md, STEM.csv, STEM_per_case.csv, STEM_dice.png, STEM_differences.png, STEM_curves.csv and
    STEM_curves.png (per-epoch losses and pseudo Dice, mean over runs) in the output folder."""
    output, stem = study.output, study.stem
    records = case_records(results)
    rows = tuple(dict.fromkeys(r.row for r in results))
    versus = {row: baseline_of(row, rows, study.baseline) for row in rows}
    extras = {(r.dataset, r.row): (r.trainable_params, r.frozen_params, round(r.seconds, 1)) for r in results}
    subset_by = {dataset: entry.split.by if entry.split else None
                 for dataset, entry in zip(dict.fromkeys(r.dataset for r in results), study.datasets)}
    summary = summary_rows(records, versus.get, extras, study.seed, subset_by)
    differences = {f"{r.dataset[11:] or r.dataset}: {r.row}": pair(
        [c for c in records if c.dataset == r.dataset and c.row == versus[r.row]],
        [c for c in records if c.dataset == r.dataset and c.row == r.row]).case_differences
        for r in results if versus[r.row] not in (None, r.row)}
    paths = [output / f"{stem}{suffix}" for suffix in (".md", ".csv", "_per_case.csv", "_dice.png",
                                                        "_differences.png", "_curves.csv", "_curves.png")]
    try:
        write_summary(output, stem, title, study.baseline, study.seed, summary)
        write_csv(paths[2], PER_CASE_HEADER, per_case_rows(records))
        plot_per_case({f"{r.dataset[11:] or r.dataset}: {r.row}": [c["Dice"] for c in r.cases.values()]
                       for r in results}, "Dice", paths[3])
        plot_differences(differences, f"Dice - Dice of {study.baseline}", paths[4])
        write_csv(paths[5], CURVES_HEADER, curve_rows(results))
        plot_training_curves({f"{r.dataset[11:] or r.dataset}: {r.row}": mean_curves(r) for r in results}, paths[6])
    except OSError as error:
        raise ExperimentError(f"cannot write the tables into {output} ({error.strerror}): free some space or "
                              "choose another output folder; tables written there before are unchanged and "
                              "trained folds are kept (run again to only redo the tables).") from None
    return paths


def run_study(study: Study) -> list[Path]:
    """Validate everything, then train what is missing and write the tables; returns the written files."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    cpu_friendly_defaults(study.device)  # before nnU-Net's modules read them at import
    study = replace(study, baseline=study.baseline or default_baseline(study.rows))
    datasets, llm4seg_entry = validate(study)
    if study.output is None:
        from nnunetv2.paths import nnUNet_results

        entry = study.datasets[0]
        study = replace(study, output=Path(str(nnUNet_results)) / datasets[0] /
                        f"llm4seg_{study.stem}__{plans_name(study, entry.plans)}__{entry.configuration}")
    check_output(study.output, study.command, OUTPUT_OPTION[study.command])
    claim_output(study.output, study.command, OUTPUT_OPTION[study.command])
    log = study.output / "nnunet.log"
    results, described = [], []
    for dataset, entry in zip(datasets, study.datasets):
        raw, preprocessed = Path(str(nnUNet_raw)) / dataset, Path(str(nnUNet_preprocessed)) / dataset
        _ensure_preprocessed(dataset, entry, log)
        folds = (write_held_out_fold(entry.split, raw, preprocessed),) if entry.split else entry.folds
        plans = {seed: write_plans_variant(preprocessed, entry.plans, plans_name(study, entry.plans, seed),
                                           entry.configuration, caps=study.caps, llm4seg_entry=llm4seg_entry)
                 for seed in study.training_seeds}
        metadata = read_case_metadata(raw)
        results += [run_row(study, dataset, entry, plans, folds, row, metadata, log) for row in study.rows]
        described.append(f"{dataset} ({entry.configuration}) " + (
            f"held-out split fold {folds[0]}: {entry.split.label()}, validated on the rest" if entry.split
            else f"folds {', '.join(map(str, folds))}"))
    caps = f"caps patch/features/batch {'/'.join(map(str, study.caps))}" if study.caps else "no caps"
    title = (f"LLM4Seg {study.stem}: {'; '.join(described)}; preset {study.preset}; {study.epochs} epochs x "
             f"{study.iterations} iterations, {caps}, device {study.device}, seed(s) "
             f"{', '.join(map(str, study.training_seeds))} + fold.")
    return write_outputs(study, results, title)


# ---------------------------------------------------------------- STUDY.json and the command

def _dataset_entry(item: Any, defaults: dict[str, Any]) -> DatasetEntry:
    if isinstance(item, (str, int)) and not isinstance(item, bool):
        item = {"dataset": str(item)}
    if not isinstance(item, dict) or "dataset" not in item:
        raise ExperimentError(f"datasets: each entry is a dataset id/name or an object with a \"dataset\" key, "
                              f"got {item!r}.")
    unknown = sorted(set(item) - DATASET_KEYS)
    if unknown:
        raise ExperimentError(f"datasets: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(DATASET_KEYS))}.")
    merged = {**defaults, **item}
    folds = merged["folds"]
    if not isinstance(folds, list):
        raise ExperimentError(f"folds must be a list of fold numbers, got {folds!r}.")
    split = None
    if "split" in item:
        if "folds" in item:
            raise ExperimentError(f"datasets: {item['dataset']!r} gives both \"folds\" and \"split\"; a held-out "
                                  "split is one fold of its own: keep one of the two.")
        split, folds = parse_split(item["split"], f"datasets: {item['dataset']!r}"), []
    return DatasetEntry(str(merged["dataset"]), str(merged["configuration"]), tuple(folds), str(merged["plans"]),
                        split)


def load_study(path: Path, device: str | None = None, progress: bool = True) -> Study:
    """Read and check STUDY.json's structure (values are checked by validate)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"study file {path} does not exist.") from None
    except (OSError, ValueError) as error:
        raise ExperimentError(f"study file {path} cannot be read as JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"study file {path}: expected a JSON object with \"datasets\" and \"rows\".")
    unknown = sorted(set(data) - KEYS)
    missing = sorted({"datasets", "rows"} - set(data))
    if unknown or missing:
        raise ExperimentError(f"study file {path}: " + "; ".join(
            ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) +
            ([f"missing key(s) {', '.join(missing)}"] if missing else [])) + f". Keys: {', '.join(sorted(KEYS))}.")
    if not isinstance(data["datasets"], list) or not isinstance(data["rows"], list):
        raise ExperimentError(f"study file {path}: \"datasets\" and \"rows\" must be lists.")
    defaults = {"configuration": data.get("configuration", "2d"), "folds": data.get("folds", [0]),
                "plans": data.get("plans", "nnUNetPlans")}
    device = device or data.get("device") or _default_device()
    if device not in DEVICES:
        raise ExperimentError(f"study file {path}: device {device!r} is not one of {', '.join(DEVICES)}.")
    output = relative_to_file(data.get("output", f"{path.stem}_results"), path, '"output"')
    preset = str(data.get("preset", Study.preset))
    if preset.endswith(".json"):  # a spec file next to the study, never one in the current directory
        preset = str(relative_to_file(preset, path, '"preset"'))
    return Study(datasets=tuple(_dataset_entry(item, defaults) for item in data["datasets"]),
                 rows=tuple(str(row) for row in data["rows"]), output=output,
                 baseline=data.get("baseline"), preset=preset,
                 epochs=data.get("epochs", Study.epochs), iterations=data.get("iterations", Study.iterations),
                 caps=resolve_caps(data.get("caps", "auto"), device), device=device,
                 seed=data.get("seed", Study.seed), seeds=_seeds(data.get("seeds", [])), progress=progress)


def _seeds(value: Any) -> tuple[int, ...]:
    """The "seeds" list (values are checked by validate)."""
    if not isinstance(value, list):
        raise ExperimentError(f"seeds must be a list of integers >= 0, e.g. [0, 1, 2], got {value!r}.")
    return tuple(value)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_study_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="several datasets and rows in one resumable run, with statistics",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="the study's JSON file")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="overrides the file's device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_cmd_study)


def _cmd_study(args: argparse.Namespace) -> int:
    paths = run_study(load_study(args.study, args.device, progress=not args.no_progress))
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0
