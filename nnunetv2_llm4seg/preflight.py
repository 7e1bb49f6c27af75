"""`llm4seg check`: the preflight to run on the training machine before a week-long job.

It builds the networks nnU-Net would build from the plans (the baseline trainer's and the given trainer's),
with nnU-Net's own initialize(): torch.compile where nnU-Net compiles, fp16 autocast with a GradScaler on CUDA
as nnU-Net's train_step uses them. Both run the same N batches from nnU-Net's own training data loader,
alternated step by step; it reports the booster's precision path, tokens, parameters, the step-time ratio, peak
memory, the grad scaler's health and a one-line verdict. Nothing is written where nnU-Net keeps results: the
trainers log into a temporary folder, and the split is taken in memory (every case), never written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from nnunetv2_llm4seg.errors import LLM4SegError
from nnunetv2_llm4seg.paths import dataset_name, find_dataset, plans_identifier

if TYPE_CHECKING:
    import torch

WARMUP_STEPS = 2  # compile (and cudnn autotuning) happen here, outside the timed steps
SLOW_RATIO = 1.25  # a booster step this much slower than the baseline's is worth a warning


class CheckError(LLM4SegError, RuntimeError):
    """The check cannot run: dataset, plans, configuration, trainer or device are not usable."""


@dataclass
class TrainerSteps:
    """What one trainer did in the check."""

    trainer: str
    compiled: bool
    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    scales: list[float] = field(default_factory=list)  # the grad scaler's scale after each step (CUDA)

    @property
    def skipped_steps(self) -> int:
        """Steps whose optimizer update GradScaler skipped (inf/NaN gradients): the scale went down."""
        return sum(after < before for before, after in zip(self.scales, self.scales[1:]))


@dataclass
class CheckReport:
    dataset: str
    configuration: str
    plans: str
    device: str
    steps: int
    trainer: str
    baseline: str
    precision: str | None
    tokens: int | None
    trainable_parameters: int
    frozen_parameters: int
    step_time_ratio: float
    peak_memory_difference_bytes: int | None
    runs: dict[str, TrainerSteps]
    verdict: str
    ok: bool


def resolve_dataset(reference: str) -> tuple[str, Path]:
    """The dataset's name and its folder in nnUNet_preprocessed, or a CheckError that says what to do."""
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise CheckError("nnUNet_preprocessed is not set: export nnU-Net's path variables (nnUNet_raw, "
                         "nnUNet_preprocessed, nnUNet_results) as for nnUNetv2_train.")
    name = find_dataset(reference)
    if name is None:
        raise CheckError(f"dataset {reference!r} was not found in nnUNet_raw/nnUNet_preprocessed; give its id or "
                         "DatasetXXX_Name as for nnUNetv2_train, after nnUNetv2_plan_and_preprocess.")
    folder = Path(root) / dataset_name(name, "dataset")
    if not folder.is_dir():
        raise CheckError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess -d {reference} first.")
    return name, folder


def read_plans(folder: Path, plans: str, configuration: str) -> dict[str, Any]:
    plans_file = folder / f"{plans_identifier(plans, '-p')}.json"
    if not plans_file.is_file():
        available = sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint"))
        raise CheckError(f"{plans_file} does not exist; plans in this dataset: {', '.join(available) or 'none'}.")
    plans_dict = json.loads(plans_file.read_text())
    if configuration not in plans_dict.get("configurations", {}):
        raise CheckError(f"configuration {configuration!r} is not in {plans_file.name}; it has: "
                         f"{', '.join(plans_dict.get('configurations', {}))}.")
    return plans_dict


def find_trainer(name: str) -> type:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunetv2_llm4seg.experiments import silenced

    with silenced():
        try:
            trainer = recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            trainer = None
    if trainer is None or not (isinstance(trainer, type) and issubclass(trainer, nnUNetTrainer)):
        raise CheckError(f"trainer {name!r} was not found by nnU-Net; `llm4seg trainers` lists this package's "
                         "trainers (or <trainer>_<N>epochs).")
    return trainer


def baseline_for(trainer: type) -> type:
    """What the trainer is compared with: plain CMUNeXt for CMUNeXt rows, stock nnU-Net otherwise."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_llm4seg.trainers.llm4seg_cmunext_trainers import CMUNeXtTraining, nnUNetTrainerCMUNeXt

    return nnUNetTrainerCMUNeXt if issubclass(trainer, CMUNeXtTraining) else nnUNetTrainer


def check_device(device: str) -> "torch.device":
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CheckError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); run the "
                         "check on the training machine, or use --device cpu.")
    return torch.device(device)


@contextlib.contextmanager
def scratch_results() -> Iterator[None]:
    """nnU-Net's trainers create their results folder and log at construction: point them at a temporary one,
    and use nnU-Net's single-process data loading for the few batches needed."""
    saved = {name: os.environ.get(name) for name in ("nnUNet_results", "nnUNet_n_proc_DA")}
    with tempfile.TemporaryDirectory(prefix="llm4seg-check-") as scratch:
        os.environ.update(nnUNet_results=scratch, nnUNet_n_proc_DA="0")
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def build_trainer(trainer_class: type, plans: dict, configuration: str, dataset_json: dict, device) -> Any:
    """nnU-Net's trainer, initialised as nnUNetv2_train does; its split is every case, kept in memory."""
    import copy

    from nnunetv2_llm4seg.experiments import silenced

    with silenced():
        trainer = trainer_class(copy.deepcopy({**plans, "continue_training": False}), configuration, 0,
                                dataset_json, device=device)
        trainer.do_split = lambda: (trainer_case_ids(trainer),) * 2
        trainer.initialize()
    return trainer


def trainer_case_ids(trainer: Any) -> list[str]:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset_class = infer_dataset_class(trainer.preprocessed_dataset_folder)
    identifiers = dataset_class.get_identifiers(trainer.preprocessed_dataset_folder)
    if not identifiers:
        raise CheckError(f"{trainer.preprocessed_dataset_folder} holds no preprocessed cases: run "
                         f"nnUNetv2_plan_and_preprocess -c {trainer.configuration_name} for this dataset.")
    return list(identifiers)


def training_batches(trainer: Any, count: int) -> list[dict]:
    """`count` batches from nnU-Net's own training pipeline (sampling, augmentation, deep-supervision targets)."""
    if not Path(trainer.preprocessed_dataset_folder).is_dir():
        raise CheckError(f"{trainer.preprocessed_dataset_folder} does not exist: run nnUNetv2_plan_and_preprocess "
                         f"-c {trainer.configuration_name} for this dataset (and plans) first.")
    from nnunetv2_llm4seg.experiments import silenced

    with silenced():
        loader, _ = trainer.get_dataloaders()
        return [next(loader) for _ in range(count)]


def timed_step(trainer: Any, batch: dict, run: TrainerSteps) -> None:
    """nnU-Net's train_step (autocast, GradScaler, clipping, SGD step) on one batch, timed, with its peak memory."""
    import torch

    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
    start = time.perf_counter()
    loss = float(trainer.train_step(batch)["loss"])
    if cuda:
        torch.cuda.synchronize(trainer.device)
    run.seconds.append(time.perf_counter() - start)
    run.losses.append(loss)
    if cuda:
        peak = torch.cuda.max_memory_allocated(trainer.device)
        run.peak_memory_bytes = max(run.peak_memory_bytes or 0, peak)
    if trainer.grad_scaler is not None:
        run.scales.append(float(trainer.grad_scaler.get_scale()))


def run_check(dataset: str, configuration: str, trainer_name: str, plans: str = "nnUNetPlans",
              device: str = "cuda", steps: int = 10) -> CheckReport:
    """Validate everything first, then train both networks `steps` steps on the same batches."""
    if steps < 1:
        raise CheckError(f"--steps {steps}: give at least 1 step (10 or more for a stable ratio).")
    torch_device = check_device(device)
    name, folder = resolve_dataset(dataset)
    plans_dict = read_plans(folder, plans, configuration)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer_class = find_trainer(trainer_name)
    baseline_class = baseline_for(trainer_class)

    from nnunetv2_llm4seg.network import tokens_at_stage
    from nnunetv2_llm4seg.parameters import trainable_and_frozen
    from nnunetv2_llm4seg.trainer import LLM4SegTrainer, unwrap

    with scratch_results():
        trainers = {cls.__name__: build_trainer(cls, plans_dict, configuration, dataset_json, torch_device)
                    for cls in (baseline_class, trainer_class)}
        batches = training_batches(trainers[trainer_class.__name__], WARMUP_STEPS + steps)
        runs = {key: TrainerSteps(key, compiled=hasattr(t.network, "_orig_mod")
                                  or hasattr(getattr(t.network, "module", None), "_orig_mod"))
                for key, t in trainers.items()}
        for index, batch in enumerate(batches):
            for key, trainer in trainers.items():  # alternated, step by step, on the same batch
                timed_step(trainer, batch, runs[key])
                if index < WARMUP_STEPS:
                    runs[key].seconds.pop()
        boosted = trainers[trainer_class.__name__]
        precision = tokens = None
        if isinstance(boosted, LLM4SegTrainer):
            precision = boosted.booster_precision.path
            tokens = tokens_at_stage(boosted.configuration_manager.patch_size,
                                     boosted.encoder_strides(boosted.configuration_manager),
                                     unwrap(boosted.network).booster_stage)
        trainable, frozen = trainable_and_frozen(unwrap(boosted.network))

    mine, base = runs[trainer_class.__name__], runs[baseline_class.__name__]
    ratio = statistics.median(b / a for a, b in zip(base.seconds, mine.seconds))
    memory = (mine.peak_memory_bytes - base.peak_memory_bytes
              if mine.peak_memory_bytes is not None and base.peak_memory_bytes is not None else None)
    verdict, ok = judge(mine, base, ratio)
    return CheckReport(name, configuration, plans, str(torch_device), steps, trainer_class.__name__,
                       baseline_class.__name__, precision, tokens, trainable, frozen, ratio, memory, runs, verdict, ok)


def judge(mine: TrainerSteps, base: TrainerSteps, ratio: float) -> tuple[str, bool]:
    """One line: FAIL for non-finite losses or a scaler that skipped every step, WARN for more skipped steps
    than the baseline or a slow step, OK otherwise."""
    steps = len(mine.losses)
    if not all(math.isfinite(loss) for loss in mine.losses):
        return (f"FAIL: non-finite training loss in {sum(not math.isfinite(x) for x in mine.losses)} of {steps} "
                "steps; do not start the long run (see the precision line).", False)
    if mine.scales and mine.skipped_steps >= steps - 1:
        return (f"FAIL: the grad scaler skipped {mine.skipped_steps} of {steps} steps (scale now "
                f"{mine.scales[-1]:g}): gradients overflow fp16.", False)
    if mine.skipped_steps > base.skipped_steps:
        return (f"WARN: the grad scaler skipped {mine.skipped_steps} steps against {base.skipped_steps} for "
                f"{base.trainer}; watch the training log's loss.", True)
    if ratio > SLOW_RATIO:
        return (f"WARN: a step takes {ratio:.2f}x {base.trainer}'s; check the token count and the precision line.",
                True)
    return f"OK: losses finite, {mine.skipped_steps} skipped steps, step time {ratio:.2f}x {base.trainer}.", True


def format_report(report: CheckReport) -> str:
    mine, base = report.runs[report.trainer], report.runs[report.baseline]

    def memory(value: int | None) -> str:
        return "n/a (measured on CUDA only)" if value is None else f"{value / 2**20:+,.0f} MiB"

    def scaler(run: TrainerSteps) -> str:
        if not run.scales:
            return "none (nnU-Net uses a GradScaler on CUDA only)"
        return f"{run.skipped_steps} skipped of {len(run.scales)}, final scale {run.scales[-1]:g}"

    rows = [
        ("dataset / configuration", f"{report.dataset}, {report.configuration}, plans {report.plans}"),
        ("device", f"{report.device}; torch.compile {'on' if mine.compiled else 'off'} (as nnU-Net decides)"),
        ("trainer vs baseline", f"{report.trainer} vs {report.baseline}"),
        ("booster precision", report.precision or "no booster in this trainer"),
        ("tokens per patch", report.tokens if report.tokens is not None else "-"),
        ("trainable / frozen", f"{report.trainable_parameters:,} / {report.frozen_parameters:,}"),
        ("step time", f"{statistics.median(mine.seconds):.3f} s vs {statistics.median(base.seconds):.3f} s "
                      f"(median of {report.steps} steps after {WARMUP_STEPS} warm-up)"),
        ("step-time ratio", f"{report.step_time_ratio:.2f}x"),
        ("peak memory difference", memory(report.peak_memory_difference_bytes)),
        ("grad scaler (trainer)", scaler(mine)),
        ("grad scaler (baseline)", scaler(base)),
        ("final loss", f"{mine.losses[-1]:.4f} vs {base.losses[-1]:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([*(f"{name:<{width}}  {value}" for name, value in rows), "", report.verdict])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 step, got {value}")
    return value


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check", help="preflight: a few nnU-Net training steps of the trainer and its "
                                   "baseline on this machine (precision, speed, memory, grad scaler)")
    parser.add_argument("dataset", help="dataset id or DatasetXXX_Name, as for nnUNetv2_train")
    parser.add_argument("-c", "--configuration", required=True, help="e.g. 2d or 3d_fullres")
    parser.add_argument("-tr", "--trainer", required=True, help="the trainer you will train with")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=_positive_int, default=10, help="timed steps per trainer (default 10)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    report = run_check(args.dataset, args.configuration, args.trainer, args.plans, args.device, args.steps)
    if args.json:
        print(json.dumps({**asdict(report), "skipped_steps": {k: r.skipped_steps for k, r in report.runs.items()}},
                         indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1
