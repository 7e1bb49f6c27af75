"""`llm4seg ablate`: the paper's ablation rows on one nnU-Net dataset, over chosen folds, as one table.

Rows: stock nnU-Net, LLM4Seg frozen, Unfrozen, RandomInit, AdaptersOnly (any subset, any preset; or any
trainer class name, e.g. the CMUNeXt trainers). Every row trains with the same schedule, caps and seeds on the
same folds (those of the dataset's splits_final.json) through nnU-Net's own trainer and validation. The table
reports nnU-Net's Dice/IoU and the paper protocol's IoU/F1, and against the baseline row case- and run-level
differences with adjusted CIs and tests and a verdict naming its level (see `llm4seg study`, of which this is the
one-dataset case). The rows share one
plans copy named after preset, schedule and caps, so results of different settings never mix; finished folds
are skipped and interrupted ones continue when the command is run again. On a CPU, patch, features and batch
are capped (128/256/4) unless --caps says otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunetv2_llm4seg.experiments import ExperimentError
from nnunetv2_llm4seg.study import ROWS, DatasetEntry, Study, default_baseline, resolve_caps, run_study

DEFAULT_ROWS = ("stock", "frozen", "unfrozen", "random", "adapters")


def _caps(text: str) -> object:
    if text in ("auto", "none"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ExperimentError(f"--caps {text!r}: use auto, none or PATCH,FEATURES,BATCH (e.g. 128,256,4).") from None


def ablation_study(args: argparse.Namespace, device: str) -> Study:
    """The one-dataset study the ablate arguments describe (checked later by study.validate)."""
    entry = DatasetEntry(args.dataset, args.configuration, tuple(args.folds), args.plans)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    return Study(datasets=(entry,), rows=rows, output=args.output.resolve() if args.output else None,
                 baseline=default_baseline(rows), preset=args.preset, epochs=args.epochs, iterations=args.iterations,
                 caps=resolve_caps(_caps(args.caps), device), device=device, seed=args.seed, stem="ablation",
                 progress=not args.no_progress, command="ablate")


def add_ablate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ablate", help="the paper's ablation rows on an nnU-Net dataset",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset id or name (converted into $nnUNet_raw)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--folds", type=int, nargs="+", default=[0],
                        help="folds of the dataset's splits_final.json (nnU-Net's 5-fold split when it has none)")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated: {', '.join(ROWS)} or trainer class names; the first of "
                             "stock/cmunext is the baseline")
    parser.add_argument("--preset", default=Study.preset, help="preset name or spec JSON for the LLM rows")
    parser.add_argument("--source", help="read the LLM layer from here (local model folder or hub id), as "
                                         "nnUNet_llm4seg_source does")
    parser.add_argument("--epochs", type=int, default=Study.epochs)
    parser.add_argument("--iterations", type=int, default=Study.iterations, help="training iterations per epoch")
    parser.add_argument("--caps", default="auto", help="patch, feature and batch caps: auto (128,256,4 on a CPU, "
                                                       "none on a GPU), none, or PATCH,FEATURES,BATCH")
    parser.add_argument("--seed", type=int, default=Study.seed,
                        help="generators are seeded with seed + fold; seed > 0 trains into its own plans copy "
                             "(..._seed{s}), so runs of different seeds never share a results folder")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="nnU-Net plans identifier to start from")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--output", type=Path, help="where to write the table (default: "
                                                    "nnUNet_results/DATASET/llm4seg_ablation__PLANS__CONFIGURATION)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_cmd_ablate)


def _cmd_ablate(args: argparse.Namespace) -> int:
    import os

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    study = ablation_study(args, device)
    if args.source:
        os.environ["nnUNet_llm4seg_source"] = args.source
    paths = run_study(study)
    print(paths[0].read_text())
    print("wrote " + ", ".join(map(str, paths)))
    return 0
