"""Benchmark 3: nnU-Net inference per case with and without the booster, and checkpoint size on disk.

Trains (once, cached, a few iterations: the weights do not matter for cost) the stock nnUNetTrainer and
nnUNetTrainerLLM4Seg with a LLaMA-3.2-1B-shaped frozen layer (random weights) on the synthetic 2D and 3D
datasets of bench_training_step.py, then times nnU-Net's predictor on the same case with its default settings
(sliding window with step 0.5, Gaussian weighting, test-time mirroring), both predictors alternated in one
process, and reports medians, the time ratio and the checkpoint sizes.

    python benchmarks/bench_inference.py [--repeats 5] [--configs 2d,3d] [--smoke]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training_step import LLM_SPEC, SETUPS, SMOKE, SMOKE_SPEC, nnunet_folders, prepare  # noqa: E402
from common import CACHE, alternate, machine, median, timed, write_report  # noqa: E402

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerLLM4Seg")


def trained_models(root: Path, dataset: str, configuration: str, spec: dict) -> dict[str, Path]:
    """Model folders of both trainers, trained for a few iterations on a plans copy carrying the spec."""
    from nnunetv2_llm4seg.experiments import Schedule, train_fold, write_plans_variant

    preprocessed = root / "preprocessed" / dataset
    plans = write_plans_variant(preprocessed, "nnUNetPlans", "nnUNetPlans_bench", configuration, llm4seg_entry=spec)
    schedule = Schedule(epochs=1, iterations=2, val_iterations=1)
    return {trainer: train_fold(dataset, configuration, 0, trainer, plans, schedule, "cpu", root / "train.log",
                                validate=False, progress=False).model_folder for trainer in TRAINERS}


def bench_config(name: str, repeats: int, smoke: bool) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dataset_id, configuration, data, _ = (SMOKE if smoke else SETUPS)[name]
    root = CACHE / ("training-smoke" if smoke else "training")
    dataset = prepare(root, dataset_id, configuration, data)
    models = trained_models(root, dataset, configuration, SMOKE_SPEC if smoke else LLM_SPEC)
    case = sorted((root / "raw" / dataset / "imagesTr").iterdir())[0]
    predictors = {}
    for trainer, folder in models.items():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
        predictors[trainer] = predictor
    output = Path(tempfile.mkdtemp())
    for trainer in TRAINERS:
        (output / trainer).mkdir()

    def predict(trainer: str):
        return lambda: timed(lambda: predictors[trainer].predict_from_files_sequential(
            [[str(case)]], str(output / trainer), save_probabilities=False, overwrite=True))

    for trainer in TRAINERS:  # warm-up
        predict(trainer)()
    samples = alternate({trainer: predict(trainer) for trainer in TRAINERS}, repeats)
    stock, boosted = (samples[t] for t in TRAINERS)
    return {"configuration": configuration, "case": case.name,
            "seconds_per_case": {t: median(samples[t]) for t in TRAINERS},
            "samples": samples, "time_ratio": median([b / a for a, b in zip(stock, boosted)]),
            "checkpoint_mib": {t: (models[t] / "fold_0" / "checkpoint_final.pth").stat().st_size / 2**20
                               for t in TRAINERS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="2d,3d")
    parser.add_argument("--smoke", action="store_true", help="tiny data and MiniLM, one repeat")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "inference.json")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    os.environ.update(nnunet_folders(CACHE / ("training-smoke" if args.smoke else "training")))
    report = {"benchmark": "inference", "machine": machine(), "repeats": repeats, "smoke": args.smoke,
              "configs": {name: bench_config(name, repeats, args.smoke) for name in args.configs.split(",")}}
    write_report(args.output, report)


if __name__ == "__main__":
    main()
