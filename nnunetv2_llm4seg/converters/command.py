"""`llm4seg convert`: the sub-command's arguments, and its handler printing what was written."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnunetv2_llm4seg.converters.convert import KINDS, convert
from nnunetv2_llm4seg.converters.layout import ConversionError


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert, then print what was written, what was left out, and the next nnU-Net step."""
    raw_folder = args.raw_folder or os.environ.get("nnUNet_raw")
    if not raw_folder:
        raise ConversionError("no raw folder: pass --raw-folder DIR or set the environment variable nnUNet_raw")
    done = convert(args.kind, args.source, args.dataset_id, Path(raw_folder), args.name, args.force,
                   args.include_normal, args.max_side)
    folds = ", splits_final.json (5 patient-level folds)" if done.splits else ""
    print(f"wrote {done.folder}: {done.training} training and {done.test} test cases, channels "
          f"{list(done.channels)}{folds}")
    for note in done.notes:
        print(f"  {note}")
    env = "" if os.environ.get("nnUNet_raw") == str(raw_folder) else f"nnUNet_raw={raw_folder} "
    print(f"next: {env}nnUNetv2_plan_and_preprocess -d {args.dataset_id} --verify_dataset_integrity")
    return 0


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `convert NAME SOURCE_DIR --dataset-id N [--name TEXT] [--force] [--include-normal] [--max-side PX] [--raw-folder DIR]`."""
    parser = subparsers.add_parser(
        "convert", help="convert a public dataset download into nnU-Net's raw format",
        description="Convert a public dataset download into nnU-Net v2's raw format: DatasetNNN_NAME/ in the raw "
                    "folder, with splits_final.json where the source has patient-level folds. Everything is "
                    "checked before the first file is written.")
    parser.add_argument("kind", metavar="NAME", type=str.lower, choices=list(KINDS),
                        help="; ".join(f"{key}: {kind.title}" for key, kind in KINDS.items()))
    parser.add_argument("source", metavar="SOURCE_DIR", type=Path, help="the extracted download")
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1 to 999")
    parser.add_argument("--name", help="dataset name (default: " + ", ".join(kind.default_name
                                                                           for kind in KINDS.values()) + ")")
    parser.add_argument("--force", action="store_true", help="replace an existing DatasetNNN_NAME folder")
    parser.add_argument("--include-normal", action="store_true",
                        help="busi: also convert the normal/ images (no lesion, empty masks), which the benchmark "
                             "setting leaves out")
    parser.add_argument("--max-side", type=int, metavar="PX",
                        help="2D datasets: shrink images (bilinear) and masks (nearest) so that the longer side is "
                             "at most PX, e.g. 128 for CPU studies (default: keep the size)")
    parser.add_argument("--raw-folder", type=Path, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.set_defaults(handler=cmd_convert)
