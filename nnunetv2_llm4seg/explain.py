"""`llm4seg explain`: the command around explanation.py (computation) and explain_plot.py (the picture)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nnunetv2_llm4seg.explanation import Explanation


def choose_device(name: str) -> "torch.device":
    import torch

    from nnunetv2_llm4seg.explanation import ExplainError

    if name == "cuda" and not torch.cuda.is_available():
        raise ExplainError("-device cuda: torch sees no CUDA GPU here; use -device cpu.")
    return torch.device(name)


def check_slice(requested: int | None, explanation: "Explanation") -> None:
    from nnunetv2_llm4seg.explanation import ExplainError

    if requested is None:
        return
    if explanation.image.ndim != 3:
        raise ExplainError("--slice applies to 3D tiles only; this model works on 2D tiles.")
    depth = explanation.image.shape[0]
    if not 0 <= requested < depth:
        raise ExplainError(f"--slice {requested} is outside the tile's first axis (0..{depth - 1}).")


def run_explain(args: argparse.Namespace) -> dict[str, Any]:
    """Explain one case; writes OUT/CASE_explain.png and OUT/CASE_explain.json and returns the JSON's content."""
    from nnunetv2_llm4seg.experiments import silenced
    from nnunetv2_llm4seg.explain_plot import plot_explanation
    from nnunetv2_llm4seg.explanation import case_files, case_name, checkpoint_spec, explain_case, load_predictor, \
        model_folder, read_case, summary

    folder = model_folder(args)
    _, spec = checkpoint_spec(folder, args.fold, args.chk)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    files = case_files(args.input, dataset_json)
    case = read_case(folder, dataset_json, files, args.reference)
    device = choose_device(args.device)
    with silenced():  # nnU-Net's predictor prints progress
        predictor = load_predictor(folder, args.fold, args.chk, device)
        explanation = explain_case(predictor, spec, case, case_name(files, dataset_json["file_ending"]), args.query)
    check_slice(args.slice, explanation)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    picture = plot_explanation(explanation, output / f"{explanation.case}_explain.png", args.slice)
    report = summary(explanation, {"png": str(picture), "model": str(folder), "fold": args.fold,
                                   "checkpoint": args.chk, "images": files, "reference": args.reference})
    (output / f"{explanation.case}_explain.json").write_text(json.dumps(report, indent=2))
    return report


def _cmd_explain(args: argparse.Namespace) -> int:
    report = run_explain(args)
    print(f"{report['case']}: {report['tokens']} tokens ({'x'.join(map(str, reversed(report['token_grid'])))}), "
          f"attention {report['attention_mode']}, positions {report['position_mode']}; mean attention distance "
          f"{report['mean_distance_tokens']:.2f} tokens, entropy {report['entropy']:.2f} of "
          f"{report['uniform_entropy']:.2f} (uniform), foreground share {report['foreground_share']:.3f} "
          f"(area {report['foreground_area_share']:.3f})" +
          (f", reference share {report['reference_share']:.3f} (area {report['reference_area_share']:.3f})"
           if "reference_share" in report else "") + f"\nwrote {report['files']['png']} and "
          f"{Path(report['files']['png']).with_suffix('.json')}")
    return 0


def add_explain_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="attention and contribution maps of the LLM layer of a trained model for one case")
    parser.add_argument("-d", "--dataset", help="dataset id or DatasetXXX_Name, as for nnUNetv2_predict")
    parser.add_argument("-c", "--configuration", help="e.g. 2d or 3d_fullres")
    parser.add_argument("-tr", "--trainer", help="the LLM4Seg trainer the model was trained with")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-m", "--model", help="the model folder instead of -d/-c/-tr/-p (as "
                        "nnUNetv2_predict_from_modelfolder)")
    parser.add_argument("-f", "--fold", default="0", help="fold to explain (default 0; 'all' for fold_all)")
    parser.add_argument("--chk", default="checkpoint_final.pth", help="checkpoint file name in the fold folder")
    parser.add_argument("-i", "--input", nargs="+", required=True,
                        help="the case's image file(s): NAME_0000.EXT (its other channels are found next to it) "
                        "or one file per channel")
    parser.add_argument("-o", "--output", default=".", help="folder for NAME_explain.png and NAME_explain.json")
    parser.add_argument("--query", help="query token x,y (2D) or x,y,z (3D) in the token grid; default: the "
                        "token at the predicted object's centre")
    parser.add_argument("--slice", type=int, help="3D: index along the tile's first axis to show (default: "
                        "through the query token)")
    parser.add_argument("--reference", help="reference label map of the case, drawn as a contour")
    parser.add_argument("-device", "--device", choices=("cuda", "cpu", "mps"), default="cuda",
                        help="as for nnUNetv2_predict (default cuda)")
    parser.set_defaults(handler=_cmd_explain)
