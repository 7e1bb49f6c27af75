"""`llm4seg demo`: stock nnU-Net against LLM4Seg on a small 2D dataset, offline, in minutes on a CPU.

It makes a dataset (synthetic ultrasound-like by default, or BUS-BRA / Kvasir-SEG / an nnU-Net raw dataset),
runs nnU-Net's planning and preprocessing with CPU-friendly caps, trains each trainer on the same split with
the same short schedule, predicts held-out cases, evaluates them with nnU-Net's evaluator, and writes a table,
training curves and an overlay grid.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_llm4seg.experiments import (ExperimentError, NnUNetFolders, Schedule, cpu_friendly_defaults,
                                          evaluate_folder, plan_and_preprocess, predict_folder, train_fold,
                                          training_curves, write_plans_variant)
from nnunetv2_llm4seg.metrics import METRICS, NNUNET_LABEL, PAPER_LABEL, case_metrics
from nnunetv2_llm4seg.paths import check_output, claim_output, raw_dataset_folder
from nnunetv2_llm4seg.report import markdown_table, mean_std, plot_overlays, plot_training_curves, write_text

DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerLLM4SegMiniLM")
CONFIGURATION = "2d"
DEMO_PLANS = "nnUNetPlans_llm4seg_demo"
MIN_IMAGE_SIZE = 32
MIN_TRAIN_CASES = 5  # nnU-Net's 5-fold split needs one validation case per fold


@dataclass(frozen=True)
class DemoOptions:
    output: Path
    data: str = "synthetic"
    trainers: tuple[str, ...] = DEFAULT_TRAINERS
    epochs: int = 12
    iterations: int = 40
    device: str = "cpu"
    image_size: int = 96
    train_cases: int = 40
    test_cases: int = 12
    held_out_fraction: float = 0.2
    max_patch: int = 128
    max_features: int = 256
    max_batch: int = 4
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class DemoData:
    dataset: str
    test_images: Path
    test_labels: Path


def _positive(value: int, option: str, minimum: int) -> None:
    if value < minimum:
        raise ExperimentError(f"{option} must be at least {minimum}, got {value}.")


def validate(options: DemoOptions, user_raw: Path) -> None:
    """Every option, before anything is written: schedule, sizes, data source, trainers, output folder."""
    from nnunetv2_llm4seg.study import check_trainers

    _positive(options.epochs, "--epochs", 1)
    _positive(options.iterations, "--iterations", 1)
    _positive(options.image_size, "--image-size", MIN_IMAGE_SIZE)
    _positive(options.train_cases, "--train-cases (nnU-Net's 5-fold split)", MIN_TRAIN_CASES)
    _positive(options.test_cases, "--test-cases", 1)
    _positive(options.seed, "--seed", 0)
    kind, _, location = options.data.partition(":")
    if kind in ("busbra", "kvasir") and location:
        if not Path(location).expanduser().is_dir():
            raise ExperimentError(f"--data {options.data!r}: {location} is not a folder (give the dataset's "
                                  "downloaded folder).")
    elif kind == "nnunet" and location:
        _find_nnunet_dataset(location, user_raw)
    elif options.data != "synthetic":
        raise ExperimentError(f"--data {options.data!r}: use synthetic, busbra:PATH, kvasir:PATH or "
                              "nnunet:DatasetNNN (a dataset in $nnUNet_raw).")
    if not options.trainers:
        raise ExperimentError("--trainers: name at least one trainer class.")
    repeated = sorted({t for t in options.trainers if options.trainers.count(t) > 1})
    if repeated:
        raise ExperimentError(f"--trainers: {', '.join(repeated)} given twice; name each trainer once.")
    check_trainers(options.trainers, "--trainers")
    check_output(options.output, "demo", "--output")


def _case_ids(labels: Path, ending: str) -> list[str]:
    return sorted(p.name[: -len(ending)] for p in labels.glob(f"*{ending}"))


def _move_cases(folder: Path, cases: list[str], ending: str) -> None:
    """Move cases (all their channels) from imagesTr/labelsTr to imagesTs/labelsTs."""
    for kind in ("images", "labels"):
        (folder / f"{kind}Ts").mkdir(exist_ok=True)
    for case in cases:
        for image in (folder / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"):
            image.rename(folder / "imagesTs" / image.name)
        (folder / "labelsTr" / f"{case}{ending}").rename(folder / "labelsTs" / f"{case}{ending}")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["numTraining"] = len(_case_ids(folder / "labelsTr", ending))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


def _resize_pngs(folder: Path, size: int) -> None:
    """Shrink a copied dataset's PNG images (bilinear) and labels (nearest) so that their longer side is at most
    `size`, as `llm4seg convert --max-side` does; palette images keep their palette and are resized nearest."""
    from PIL import Image

    from nnunetv2_llm4seg.converters.output import shrunk

    for path in folder.glob("*s*/*.png"):
        with Image.open(path) as image:
            if max(image.size) <= size:
                continue
            palette = image.getpalette() if image.mode == "P" else None
            array = shrunk(np.asarray(image), size, label=path.parent.name.startswith("labels") or bool(palette))
        resized = Image.fromarray(array)
        if palette:
            resized.putpalette(palette)
        resized.save(path)


def _hold_out_randomly(folder: Path, fraction: float, seed: int, ending: str) -> None:
    cases = _case_ids(folder / "labelsTr", ending)
    held_out = random.Random(seed).sample(cases, max(1, round(fraction * len(cases))))
    _move_cases(folder, sorted(held_out), ending)


def _hold_out_patients(folder: Path) -> None:
    """BUS-BRA: hold out the patients of the converter's fold 0; validate on those of fold 1."""
    folds = json.loads((folder / "splits_final.json").read_text())
    held_out, validation = folds[0]["val"], folds[1]["val"]
    _move_cases(folder, held_out, ".png")
    training = sorted(set(_case_ids(folder / "labelsTr", ".png")) - set(validation))
    split = json.dumps([{"train": training, "val": validation}], indent=2)
    # the raw copy and the preprocessed one (the converter placed both; nnU-Net's planner wants them equal)
    for splits_file in (folder / "splits_final.json",
                        Path(os.environ["nnUNet_preprocessed"]) / folder.name / "splits_final.json"):
        if splits_file.is_file():
            splits_file.write_text(split)


def prepare_data(options: DemoOptions, folders: NnUNetFolders, dataset_id: int, user_raw: Path) -> DemoData:
    """Write the demo's raw dataset (never touching existing ones) with held-out cases in imagesTs/labelsTs."""
    from nnunetv2_llm4seg.converters import convert_dataset
    from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset

    kind, _, location = options.data.partition(":")
    if kind == "synthetic":
        folder = make_ultrasound_dataset(folders.raw, dataset_id, cases=options.train_cases, size=options.image_size,
                                         seed=options.seed, name="LLM4SegDemo", test_cases=options.test_cases)
    elif kind in ("busbra", "kvasir") and location:
        folder = convert_dataset(kind, Path(location).expanduser(), dataset_id, folders.raw,
                                 name=f"LLM4SegDemo_{kind}", max_side=options.image_size)
        if kind == "busbra":
            _hold_out_patients(folder)
        else:
            _hold_out_randomly(folder, options.held_out_fraction, options.seed, ".png")
    else:
        folder = _copy_nnunet_dataset(location, user_raw, folders, dataset_id)
        ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
        if ending == ".png":
            _resize_pngs(folder, options.image_size)
        _hold_out_randomly(folder, options.held_out_fraction, options.seed, ending)
    return DemoData(folder.name, folder / "imagesTs", folder / "labelsTs")


def _find_nnunet_dataset(name: str, raw: Path) -> Path:
    """A user's raw dataset folder by id (5, Dataset005) or full name."""
    number = re.fullmatch(r"(?:Dataset)?(\d{1,3})", name)
    if number:
        matches = sorted(raw.glob(f"Dataset{int(number.group(1)):03d}_*"))
    else:
        folder = raw_dataset_folder(name, raw, f"--data nnunet:{name}")
        matches = [folder] if folder.is_dir() else []
    if not matches:
        raise ExperimentError(f"--data nnunet:{name}: no such dataset in {raw} (set nnUNet_raw to the folder that "
                              "holds it).")
    return matches[0]


def _copy_nnunet_dataset(name: str, raw: Path, folders: NnUNetFolders, dataset_id: int) -> Path:
    """Copy a user's raw dataset (read only) to a new id; its own folder stays untouched."""
    source = _find_nnunet_dataset(name, raw)
    target = folders.raw / f"Dataset{dataset_id:03d}_LLM4SegDemo_{source.name[11:]}"
    try:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("imagesTs", "labelsTs", "splits_final.json"))
    except (OSError, shutil.Error) as error:
        shutil.rmtree(target, ignore_errors=True)  # the demo's own copy (a free id): nothing half-copied stays
        raise ExperimentError(f"--data nnunet:{name}: cannot copy {source} ({str(error)[:200]}); check that the "
                              "dataset is readable and that there is space for a copy.") from None
    return target


def _read_2d(path: Path) -> np.ndarray:
    """A 2D array for display: PNG as is; volumes at their middle slice."""
    if path.suffix == ".png":
        from PIL import Image

        return np.array(Image.open(path))
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if array.ndim == 2:
        return array
    return array[array.shape[0] // 2]


def _overlay_figure(data: DemoData, predictions: dict[str, Path], ending: str, path: Path, count: int = 4) -> None:
    cases = _case_ids(data.test_labels, ending)[:count]
    images = [_read_2d(next(data.test_images.glob(f"{case}_0000{ending}"))) for case in cases]
    truths = [_read_2d(data.test_labels / f"{case}{ending}") for case in cases]
    masks = {method: [_read_2d(folder / f"{case}{ending}") for case in cases] for method, folder in predictions.items()}
    plot_overlays(images, truths, masks, cases, path)


def run_demo(options: DemoOptions) -> str:
    """Run the whole demo; returns the Markdown table (also written to OUTPUT/results.md)."""
    from tqdm import tqdm

    started = time.time()
    cpu_friendly_defaults(options.device)  # before nnU-Net's modules read them at import
    folders = NnUNetFolders.choose(options.output)
    user_raw = Path(os.environ.get("nnUNet_raw") or folders.raw)  # where nnunet:DatasetNNN is looked up
    validate(options, user_raw)
    claim_output(options.output, "demo", "--output")
    folders.activate()
    log = options.output / "nnunet.log"
    steps = tqdm(total=2 + 2 * len(options.trainers), desc="llm4seg demo", unit="step", disable=not options.progress,
                 position=1, leave=False)
    data = prepare_data(options, folders, folders.free_dataset_id(), user_raw)
    steps.update(1)
    dataset_id = int(data.dataset[7:10])
    plan_and_preprocess(dataset_id, CONFIGURATION, log)
    preprocessed = folders.preprocessed / data.dataset
    write_plans_variant(preprocessed, "nnUNetPlans", DEMO_PLANS, CONFIGURATION,
                        caps=(options.max_patch, options.max_features, options.max_batch))
    steps.update(1)
    ending = json.loads((preprocessed / "dataset.json").read_text())["file_ending"]
    schedule = Schedule(options.epochs, options.iterations, val_iterations=5)
    rows, curves, predictions, results = [], {}, {}, {}
    for trainer in options.trainers:
        run = train_fold(data.dataset, CONFIGURATION, 0, trainer, DEMO_PLANS, schedule, options.device, log,
                         validate=False, progress=options.progress, seed=options.seed)
        steps.update(1)
        output = options.output / "predictions" / trainer
        start = time.time()
        predict_folder(run.model_folder, 0, data.test_images, output, options.device, log)
        predict_seconds = time.time() - start
        summary = evaluate_folder(data.test_labels, output, run.model_folder / "dataset.json",
                                  run.model_folder / "plans.json", log)
        steps.update(1)
        cases = case_metrics(summary, json.loads((run.model_folder / "dataset.json").read_text()))
        stats = {key: mean_std([c[key] for c in cases.values()]) for key in METRICS}
        results[trainer] = {**{f"{key.lower().replace(' ', '_')}_{part}": stats[key][index] for key in METRICS
                               for index, part in enumerate(("mean", "std"))},
                            "trainable_params": run.trainable_params, "frozen_params": run.frozen_params,
                            "train_seconds": round(run.seconds, 1), "predict_seconds": round(predict_seconds, 1),
                            "cases": len(cases), "model_folder": str(run.model_folder)}
        rows.append([trainer, *(f"{stats[key][0]:.4f} ± {stats[key][1]:.4f}" for key in METRICS),
                     f"{run.trainable_params:,}", f"{run.frozen_params:,}", f"{run.seconds:.0f}"])
        curves[trainer] = training_curves(run.fold_folder)
        predictions[trainer] = output
    steps.close()
    plot_training_curves(curves, options.output / "training_curves.png")
    _overlay_figure(data, predictions, ending, options.output / "overlays.png")
    table = markdown_table(["method", "Dice (nnU-Net)", "IoU (nnU-Net)", "IoU (paper protocol)",
                            "F1 (paper protocol)", "trainable params", "frozen params", "train time (s)"], rows)
    total = time.time() - started
    header = (f"llm4seg demo: {options.data}, {len(_case_ids(data.test_labels, ending))} held-out cases, "
              f"{schedule.epochs} epochs x {schedule.iterations} iterations, device {options.device}, "
              f"total {total / 60:.1f} min. Mean ± std over held-out cases of the same predictions; "
              f"{NNUNET_LABEL}; {PAPER_LABEL}.")
    write_text(options.output / "results.md", f"{header}\n\n{table}\n")
    write_text(options.output / "results.json", json.dumps(
        {"data": options.data, "dataset": data.dataset, "schedule": schedule.label(), "device": options.device,
         "total_seconds": round(total, 1), "methods": results}, indent=2))
    return f"{header}\n\n{table}"


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="stock nnU-Net vs LLM4Seg on a small 2D dataset (offline, CPU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoOptions(output=Path("llm4seg_demo"))
    parser.add_argument("--data", default=defaults.data,
                        help="synthetic (default), busbra:PATH, kvasir:PATH or nnunet:DatasetNNN")
    parser.add_argument("--output", type=Path, default=defaults.output, help="output folder (default ./llm4seg_demo)")
    parser.add_argument("--trainers", default=",".join(defaults.trainers), help="comma-separated trainer names")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="training iterations per epoch")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="longer image side after resizing (synthetic images are generated at this size)")
    parser.add_argument("--train-cases", type=int, default=defaults.train_cases, help="synthetic data only")
    parser.add_argument("--test-cases", type=int, default=defaults.test_cases, help="synthetic data only")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = DemoOptions(output=args.output.resolve(), data=args.data, epochs=args.epochs,
                          iterations=args.iterations,
                          trainers=tuple(t.strip() for t in args.trainers.split(",") if t.strip()),
                          device=device, image_size=args.image_size, train_cases=args.train_cases,
                          test_cases=args.test_cases, seed=args.seed, progress=not args.no_progress)
    print(run_demo(options))
    print(f"\nwrote {options.output / 'results.md'}, {options.output / 'training_curves.png'}, "
          f"{options.output / 'overlays.png'} (nnU-Net's own log: {options.output / 'nnunet.log'})")
    return 0
