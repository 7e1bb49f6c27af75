"""`llm4seg ablate`: the paper's ablation rows on an nnU-Net dataset, over chosen folds, as one table.

Rows: stock nnU-Net, LLM4Seg frozen, Unfrozen, RandomInit, AdaptersOnly (any subset, any preset; or any
trainer class name, e.g. the CMUNeXt trainers). Every row trains with the same schedule on the same folds
through nnU-Net's own trainer and validation; per-case metrics come from nnU-Net's validation summaries.
The rows share one plans copy named after the preset and schedule, so results of different presets or
schedules never mix, and folds that are already finished are skipped when the command is run again.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_llm4seg.experiments import (ExperimentError, Schedule, case_metrics, cpu_friendly_defaults,
                                          plan_and_preprocess, pooled_f1, train_fold, write_plans_variant)
from nnunetv2_llm4seg.report import markdown_table, mean_std, plot_per_case, write_csv

ROWS = {
    "stock": "nnUNetTrainer",
    "frozen": "nnUNetTrainerLLM4Seg",
    "unfrozen": "nnUNetTrainerLLM4SegUnfrozen",
    "random": "nnUNetTrainerLLM4SegRandomInit",
    "adapters": "nnUNetTrainerLLM4SegAdaptersOnly",
    "cmunext": "nnUNetTrainerCMUNeXt",
    "cmunext-frozen": "nnUNetTrainerCMUNeXtLLM4Seg",
    "cmunext-unfrozen": "nnUNetTrainerCMUNeXtLLM4SegUnfrozen",
    "cmunext-random": "nnUNetTrainerCMUNeXtLLM4SegRandomInit",
    "cmunext-adapters": "nnUNetTrainerCMUNeXtLLM4SegAdaptersOnly",
}
BASELINES = {"stock", "cmunext"}


@dataclass(frozen=True)
class AblationOptions:
    dataset: str
    configuration: str = "2d"
    folds: tuple[int, ...] = (0,)
    rows: tuple[str, ...] = ("stock", "frozen", "unfrozen", "random", "adapters")
    preset: str = "llama3.2-1b-l15"
    epochs: int = 50
    iterations: int = 250
    plans: str = "nnUNetPlans"
    device: str = "cuda"
    output: Path | None = None
    progress: bool = True


@dataclass
class RowResult:
    row: str
    trainer: str
    cases: dict[str, dict[str, float]]
    fold_f1: list[float]
    trainable_params: int
    frozen_params: int
    seconds: float


def _dataset_name(reference: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(reference) if reference.isdigit() else reference)
    except RuntimeError as error:
        raise ExperimentError(f"dataset {reference!r} not found in nnUNet_raw/nnUNet_preprocessed/nnUNet_results: "
                              f"{error}. Convert it first (llm4seg convert) and set the nnU-Net path "
                              "variables.") from None


def _plans_entry(preset: str):
    """The llm4seg plans entry: a preset name, or the spec object of a JSON file (stored, so the file can go)."""
    from nnunetv2_llm4seg.presets import load_spec

    spec = load_spec(preset, where="--preset")
    return preset if spec.name == preset else spec.to_dict()


def _plans_name(options: AblationOptions) -> str:
    preset = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(options.preset).stem if options.preset.endswith(".json")
                    else options.preset)
    return f"{options.plans}_llm4seg-{preset}_{options.epochs}x{options.iterations}"


def _trainer(row: str) -> str:
    return ROWS.get(row, row)


def _paired_p_value(baseline: dict[str, dict], other: dict[str, dict]) -> float:
    """Two-sided Wilcoxon signed-rank test on per-case Dice, paired by case (nan when undefined)."""
    from scipy.stats import wilcoxon

    shared = sorted(set(baseline) & set(other))
    pairs = [(baseline[c]["Dice"], other[c]["Dice"]) for c in shared
             if not (math.isnan(baseline[c]["Dice"]) or math.isnan(other[c]["Dice"]))]
    if len(pairs) < 2 or all(a == b for a, b in pairs):
        return float("nan")
    return float(wilcoxon([a for a, _ in pairs], [b for _, b in pairs]).pvalue)


def run_row(options: AblationOptions, dataset: str, plans: str, row: str, log: Path) -> RowResult:
    schedule = Schedule(options.epochs, options.iterations, val_iterations=max(1, options.iterations // 5))
    result = RowResult(row, _trainer(row), {}, [], 0, 0, 0.0)
    for fold in options.folds:
        run = train_fold(dataset, options.configuration, fold, result.trainer, plans, schedule, options.device, log,
                         validate=True, progress=options.progress)
        summary = json.loads((run.fold_folder / "validation" / "summary.json").read_text())
        cases = case_metrics(summary)
        result.cases.update(cases)
        result.fold_f1.append(pooled_f1(cases))
        result.trainable_params, result.frozen_params = run.trainable_params, run.frozen_params
        schedule_file = run.fold_folder / "llm4seg_schedule.json"
        if schedule_file.is_file():
            result.seconds += json.loads(schedule_file.read_text())["seconds"]
    return result


def _table(results: list[RowResult]) -> tuple[list[str], list[list[str]], list[list[object]]]:
    baseline = next((r for r in results if r.row in BASELINES), None)
    header = ["row", "trainer", "cases", "Dice", "IoU", "F1 (pooled per fold)", "ΔDice vs baseline",
              "p (Wilcoxon)", "trainable params", "frozen params", "train time (s)"]
    markdown, csv_rows = [], []
    for result in results:
        dice = mean_std([c["Dice"] for c in result.cases.values()])
        iou = mean_std([c["IoU"] for c in result.cases.values()])
        f1 = mean_std(result.fold_f1)
        is_other = baseline is not None and result is not baseline
        delta = dice[0] - mean_std([c["Dice"] for c in baseline.cases.values()])[0] if is_other else float("nan")
        p_value = _paired_p_value(baseline.cases, result.cases) if is_other else float("nan")
        markdown.append([result.row, result.trainer, str(len(result.cases)), f"{dice[0]:.4f} ± {dice[1]:.4f}",
                         f"{iou[0]:.4f} ± {iou[1]:.4f}", f"{f1[0]:.4f} ± {f1[1]:.4f}",
                         f"{delta:+.4f}" if is_other else "-", f"{p_value:.3g}" if is_other else "-",
                         f"{result.trainable_params:,}", f"{result.frozen_params:,}", f"{result.seconds:.0f}"])
        csv_rows.append([result.row, result.trainer, len(result.cases), dice[0], dice[1], iou[0], iou[1], f1[0], f1[1],
                         delta, p_value, result.trainable_params, result.frozen_params, round(result.seconds, 1)])
    csv_header = ["row", "trainer", "cases", "dice_mean", "dice_std", "iou_mean", "iou_std", "f1_mean", "f1_std",
                  "delta_dice_vs_baseline", "p_wilcoxon", "trainable_params", "frozen_params", "train_seconds"]
    return header, markdown, [csv_header, *csv_rows]


def _ensure_preprocessed(dataset: str, folder: Path, options: AblationOptions, log: Path) -> None:
    """Plan and preprocess with nnU-Net's defaults when nothing is there; refuse other half-prepared states."""
    plans_file = folder / f"{options.plans}.json"
    if not plans_file.is_file():
        if options.plans != "nnUNetPlans":
            raise ExperimentError(f"{plans_file} does not exist: plan and preprocess first, e.g. "
                                  f"nnUNetv2_plan_and_preprocess -d {dataset[7:10]} -pl <planner> -c "
                                  f"{options.configuration}.")
        plan_and_preprocess(int(dataset[7:10]), options.configuration, log)
    configurations = json.loads(plans_file.read_text())["configurations"]
    if options.configuration not in configurations:
        raise ExperimentError(f"{plans_file} has no configuration {options.configuration!r}; available: "
                              f"{', '.join(configurations)}.")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    data = PlansManager(str(plans_file)).get_configuration(options.configuration).data_identifier
    if not (folder / data).is_dir():
        raise ExperimentError(f"configuration {options.configuration!r} of {options.plans} is not preprocessed "
                              f"({folder / data} is missing): run nnUNetv2_preprocess -d {dataset[7:10]} -plans_name "
                              f"{options.plans} -c {options.configuration}.")


def run_ablation(options: AblationOptions) -> Path:
    """Train what is missing, then write ablation.md, ablation.csv, ablation_per_case.csv and ablation_dice.png."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results

    unknown = [row for row in options.rows if row not in ROWS and not row.startswith("nnUNetTrainer")]
    if unknown:
        raise ExperimentError(f"unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)} or trainer class "
                              "names (nnUNetTrainer...).")
    cpu_friendly_defaults(options.device)
    dataset = _dataset_name(options.dataset)
    folder = Path(str(nnUNet_preprocessed)) / dataset
    output = options.output or (Path(str(nnUNet_results)) / dataset /
                                f"llm4seg_ablation__{_plans_name(options)}__{options.configuration}")
    output.mkdir(parents=True, exist_ok=True)
    log = output / "nnunet.log"
    _ensure_preprocessed(dataset, folder, options, log)
    plans = write_plans_variant(folder, options.plans, _plans_name(options), options.configuration,
                                llm4seg_entry=_plans_entry(options.preset))
    results = [run_row(options, dataset, plans, row, log) for row in options.rows]
    header, markdown, csv_rows = _table(results)
    title = (f"LLM4Seg ablation on {dataset} ({options.configuration}), preset {options.preset}, folds "
             f"{', '.join(map(str, options.folds))}, {options.epochs} epochs x {options.iterations} iterations. "
             "Dice and IoU: mean ± std over cases (nnU-Net validation of each fold); F1: pixels pooled per fold, "
             "mean ± std over folds; p: two-sided Wilcoxon signed-rank test on per-case Dice against the baseline.")
    (output / "ablation.md").write_text(f"{title}\n\n{markdown_table(header, markdown)}\n")
    write_csv(output / "ablation.csv", csv_rows[0], csv_rows[1:])
    write_csv(output / "ablation_per_case.csv", ["row", "case", "Dice", "IoU"],
              [[r.row, case, m["Dice"], m["IoU"]] for r in results for case, m in sorted(r.cases.items())])
    plot_per_case({r.row: [c["Dice"] for c in r.cases.values()] for r in results}, "Dice", output / "ablation_dice.png")
    return output


def add_ablate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ablate", help="the paper's ablation rows on an nnU-Net dataset",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = AblationOptions(dataset="")
    parser.add_argument("dataset", help="dataset id or name (converted into $nnUNet_raw)")
    parser.add_argument("-c", "--configuration", default=defaults.configuration)
    parser.add_argument("--folds", type=int, nargs="+", default=list(defaults.folds))
    parser.add_argument("--rows", default=",".join(defaults.rows),
                        help=f"comma-separated: {', '.join(ROWS)} or trainer class names")
    parser.add_argument("--preset", default=defaults.preset, help="preset name or spec JSON for the LLM rows")
    parser.add_argument("--source", help="read the LLM layer from here (local model folder or hub id), as "
                                         "nnUNet_llm4seg_source does")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="training iterations per epoch")
    parser.add_argument("-p", "--plans", default=defaults.plans, help="nnU-Net plans identifier to start from")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--output", type=Path, help="where to write the table (default: in nnUNet_results)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_cmd_ablate)


def _cmd_ablate(args: argparse.Namespace) -> int:
    import os

    import torch

    if args.source:
        os.environ["nnUNet_llm4seg_source"] = args.source
    options = AblationOptions(dataset=args.dataset, configuration=args.configuration, folds=tuple(args.folds),
                              rows=tuple(r.strip() for r in args.rows.split(",") if r.strip()), preset=args.preset,
                              epochs=args.epochs, iterations=args.iterations, plans=args.plans,
                              device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                              output=args.output, progress=not args.no_progress)
    output = run_ablation(options)
    print((output / "ablation.md").read_text())
    print(f"wrote {output / 'ablation.md'}, {output / 'ablation.csv'}, {output / 'ablation_per_case.csv'}, "
          f"{output / 'ablation_dice.png'}")
    return 0
