"""Running nnU-Net experiments from Python for `llm4seg demo` and `llm4seg ablate`.

Everything goes through nnU-Net's own planner, preprocessor, trainers, predictor and evaluator; the results
land in ordinary nnU-Net folders (usable by nnUNetv2_predict afterwards). What this adds: its own nnU-Net
folders when none are set, CPU-friendly caps on a plans copy, a chosen schedule (epochs x iterations), quiet
logs with a progress bar, and skipping folds that are already finished.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nnunetv2_llm4seg.errors import LLM4SegError
from nnunetv2_llm4seg.parameters import trainable_and_frozen
from nnunetv2_llm4seg.plans_variants import plans_variant
from nnunetv2_llm4seg.run_spec import check_plans_of_checkpoint, read_checkpoint

PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class ExperimentError(LLM4SegError, RuntimeError):
    """A demo or ablation step cannot run (folders, datasets, missing results)."""


@dataclass(frozen=True)
class NnUNetFolders:
    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def choose(cls, output: Path) -> "NnUNetFolders":
        """The user's nnU-Net folders when all three variables are set, else fresh ones under `output`."""
        if all(os.environ.get(name) for name in PATH_VARIABLES):
            return cls(*(Path(os.environ[name]) for name in PATH_VARIABLES))
        return cls(output / "nnUNet_raw", output / "nnUNet_preprocessed", output / "nnUNet_results")

    def activate(self) -> None:
        """Point nnU-Net (which reads these variables lazily) at the folders, creating them."""
        for name, folder in zip(PATH_VARIABLES, (self.raw, self.preprocessed, self.results)):
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[name] = str(folder)

    def dataset_ids_in_use(self) -> set[int]:
        used = set()
        for folder in (self.raw, self.preprocessed, self.results):
            for entry in folder.glob("Dataset[0-9][0-9][0-9]_*") if folder.is_dir() else ():
                used.add(int(entry.name[7:10]))
        return used

    def free_dataset_id(self) -> int:
        """The highest dataset id (999 downwards) used nowhere, so a user's datasets are never touched."""
        used = self.dataset_ids_in_use()
        for candidate in range(999, 0, -1):
            if candidate not in used:
                return candidate
        raise ExperimentError("every dataset id 1..999 is in use in the nnU-Net folders")


def cpu_friendly_defaults(device: str) -> None:
    """Few data-augmentation and export processes on CPU (nnU-Net's defaults assume a GPU server)."""
    if device == "cpu":
        os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_def_n_proc", "1" if device == "cpu" else "4")
    os.environ.setdefault("nnUNet_compile", "f" if device == "cpu" else "t")


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[None]:
    """Send nnU-Net's console chatter to a log file (progress bars write to stderr and stay visible)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log, contextlib.redirect_stdout(log):
        yield


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Drop nnU-Net's console chatter (trainer construction, class lookup, predictor progress) altogether."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def plan_and_preprocess(dataset_id: int, configuration: str, log_file: Path) -> None:
    """nnU-Net's fingerprint, planning and preprocessing for one configuration, single process."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    with quiet(log_file):
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=(configuration,), num_processes=(1,))


def write_plans_variant(dataset_folder: Path, base: str, name: str, configuration: str,
                        caps: tuple[int, int, int] | None = None, llm4seg_entry: Any = None) -> str:
    """Write plans `name` (own results folders): plans `base` with caps and/or an llm4seg plans entry."""
    plans = json.loads((dataset_folder / f"{base}.json").read_text())
    text = json.dumps(plans_variant(plans, name, llm4seg_entry, [configuration], caps=caps), indent=2)
    target = dataset_folder / f"{name}.json"
    if target.is_file() and target.read_text() != text:
        raise ExperimentError(f"{target} already exists with other content (models trained with it depend on it; "
                              "was the preset's spec file or the base plans changed?). Nothing was changed: restore "
                              "what it was written from, or move it and its results folders away.")
    target.write_text(text)
    return name


@dataclass(frozen=True)
class Schedule:
    """A short nnU-Net schedule; an interrupted run resumes from the checkpoint_latest.pth written every
    `checkpoint_every` epochs (nnU-Net's own 50 would lose a whole 50-epoch run)."""

    epochs: int
    iterations: int
    val_iterations: int
    checkpoint_every: int = 5

    def label(self) -> str:
        return f"{self.epochs}x{self.iterations}"


@dataclass(frozen=True)
class TrainingRun:
    """One trained fold: where it is, what it cost and how many parameters it trains."""

    trainer: str
    fold_folder: Path
    seconds: float
    trainable_params: int
    frozen_params: int
    skipped: bool

    @property
    def model_folder(self) -> Path:
        return self.fold_folder.parent


def _check_existing_model(trainer: Any, model_folder: Path) -> None:
    """Finished folds are only reused when the model folder holds the network this run asks for."""
    if not hasattr(trainer, "llm4seg_spec"):
        return
    from nnunetv2_llm4seg.run_spec import check_same_model, spec_in_results_plans

    stored = spec_in_results_plans(model_folder / "plans.json", trainer.configuration_name)
    if stored is not None:
        check_same_model(trainer.llm4seg_spec, stored, str(model_folder))


def _network_on_meta(trainer: Any) -> Any:
    """The trainer's network built on the meta device: structure and requires_grad, no weights loaded."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager,
                                            trainer.dataset_json)
    with torch.device("meta"):
        return trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, channels,
                                                  trainer.label_manager.num_segmentation_heads, False)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (nnU-Net's augmentation workers draw their own seeds)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_fold(dataset: str, configuration: str, fold: int, trainer_name: str, plans: str, schedule: Schedule,
               device: str, log_file: Path, validate: bool, progress: bool = True,
               seed: int | None = None) -> TrainingRun:
    """Train one fold in this process with nnU-Net's trainer (skipped when its final checkpoint exists); with
    `seed`, the generators are seeded before the trainer is built."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from tqdm import tqdm

    with quiet(log_file):
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    folder = Path(str(nnUNet_preprocessed)) / dataset
    plans_dict = json.loads((folder / f"{plans}.json").read_text())
    plans_dict["continue_training"] = False
    dataset_json = json.loads((folder / "dataset.json").read_text())
    if seed is not None:
        seed_everything(seed)
    with quiet(log_file):
        trainer = trainer_class(plans_dict, configuration, fold, dataset_json, device=torch.device(device))
    fold_folder = Path(trainer.output_folder)
    _check_existing_model(trainer, fold_folder.parent)
    final, latest = fold_folder / "checkpoint_final.pth", fold_folder / "checkpoint_latest.pth"
    if final.is_file() and (not validate or (fold_folder / "validation" / "summary.json").is_file()):
        counts = trainable_and_frozen(_network_on_meta(trainer))
        return TrainingRun(trainer_name, fold_folder, 0.0, *counts, skipped=True)
    trainer.num_epochs = schedule.epochs
    trainer.num_iterations_per_epoch = schedule.iterations
    trainer.num_val_iterations_per_epoch = schedule.val_iterations
    trainer.save_every = schedule.checkpoint_every
    if final.is_file() or latest.is_file():  # validate a finished fold, or continue an interrupted one
        checkpoint = final if final.is_file() else latest
        read_checkpoint(checkpoint)  # any trainer (nnU-Net's own too) unpickles it only after this safe read
        with quiet(log_file):
            trainer.load_checkpoint(str(checkpoint))
    bar = tqdm(total=schedule.epochs, initial=min(trainer.current_epoch, schedule.epochs),
               desc=f"{trainer_name} fold {fold}", unit="epoch", disable=not progress)
    end_of_epoch = trainer.on_epoch_end

    def on_epoch_end() -> None:
        end_of_epoch()
        dice = trainer.logger.get_checkpoint()["ema_fg_dice"]
        bar.set_postfix(ema_dice=f"{dice[-1]:.3f}" if dice else "-")
        bar.update(1)

    trainer.on_epoch_end = on_epoch_end
    with quiet(log_file):
        if not final.is_file():
            trainer.run_training()
        if validate:
            trainer.perform_actual_validation()
    bar.close()
    seconds = _epoch_seconds(trainer.logger.get_checkpoint())
    (fold_folder / "llm4seg_schedule.json").write_text(json.dumps(
        {"epochs": schedule.epochs, "iterations_per_epoch": schedule.iterations, "device": device,
         "seconds": round(seconds, 1), "seed": seed}, indent=2))
    return TrainingRun(trainer_name, fold_folder, seconds, *trainable_and_frozen(trainer.network), skipped=False)


def _epoch_seconds(log: dict) -> float:
    """Time spent in the epochs themselves (training + per-epoch validation), without start-up and unpacking."""
    return float(sum(end - start for start, end in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])))


CURVES = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice")


def training_curves(fold_folder: Path) -> dict[str, list[float]]:
    """Per-epoch train loss, validation loss, pseudo Dice and its EMA from nnU-Net's checkpoint log."""
    log = read_checkpoint(fold_folder / "checkpoint_final.pth")["logging"]
    return {key: [float(v) for v in log[key]] for key in CURVES}


def predict_folder(model_folder: Path, fold: int, images: Path, output: Path, device: str, log_file: Path) -> None:
    """nnU-Net's predictor on a folder of images (sliding window, Gaussian weighting, mirroring as trained)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    checkpoint = model_folder / f"fold_{fold}" / "checkpoint_final.pth"
    check_plans_of_checkpoint(read_checkpoint(checkpoint), model_folder / "plans.json", str(checkpoint))
    with quiet(log_file):
        predictor = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,))
        predictor.predict_from_files(str(images), str(output), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)


def evaluate_folder(labels: Path, predictions: Path, dataset_json: Path, plans_json: Path,
                    log_file: Path) -> dict:
    """nnU-Net's evaluator: summary.json with per-case and mean metrics."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    with quiet(log_file):
        compute_metrics_on_folder2(str(labels), str(predictions), str(dataset_json), str(plans_json),
                                   str(predictions / "summary.json"), num_processes=1, chill=True)
    return json.loads((predictions / "summary.json").read_text())
