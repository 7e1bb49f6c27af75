"""How two trained rows' LLM layers attend, over one fold's validation cases (docs/results.md, "What does the
layer attend to?"): every validation case is explained as `llm4seg explain` explains it (the model loaded as
nnUNetv2_predict loads it, the tile nearest the predicted object, the reference label as --reference), and the
per-case figures of its JSON are kept.

    python benchmarks/explain_rows.py -d Dataset501_BUSBRA -c 2d -p PLANS -f 0 --rows frozen random \
        -o docs/study/results/busbra-explain [--examples 2] [-device cpu]

writes OUT/explain_per_case.csv (one line per row and case), OUT/explain.md (the table that
nnunetv2_llm4seg.evidence.attention_table renders from that CSV; tests/test_published_evidence.py rebuilds it) and
OUT/ROW_CASE_explain.png for the first `--examples` validation cases.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def explain_fold(dataset: str, configuration: str, plans: str, fold: int, row: str, device: str, output: Path,
                 examples: int) -> list[list[object]]:
    """One CSV line per validation case of `fold` for the study row `row`; pictures for the first `examples`."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunetv2_llm4seg.case_metadata import read_case_metadata
    from nnunetv2_llm4seg.experiments import silenced
    from nnunetv2_llm4seg.explain_plot import plot_explanation
    from nnunetv2_llm4seg.explanation import case_files, checkpoint_spec, explain_case, load_predictor, read_case, \
        summary
    from nnunetv2_llm4seg.study import trainer_name

    raw = Path(str(nnUNet_raw)) / dataset
    dataset_json = json.loads((raw / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    cases = json.loads((Path(str(nnUNet_preprocessed)) / dataset / "splits_final.json").read_text())[fold]["val"]
    patients = {case: values.get("patient", "") for case, values in read_case_metadata(raw).items()}
    folder = Path(get_output_folder(dataset, trainer_name(row), plans, configuration))
    _, spec = checkpoint_spec(folder, str(fold), "checkpoint_final.pth")
    with silenced():
        predictor = load_predictor(folder, str(fold), "checkpoint_final.pth", torch.device(device))
    lines = []
    for index, case in enumerate(sorted(cases)):
        reference = str(raw / "labelsTr" / f"{case}{ending}")
        files = case_files([str(raw / "imagesTr" / f"{case}_0000{ending}")], dataset_json)  # every channel
        data = read_case(folder, dataset_json, files, reference)
        with silenced():
            explanation = explain_case(predictor, spec, data, case, None)
        report = summary(explanation, {})
        if index < examples:
            plot_explanation(explanation, output / f"{row}_{case}_explain.png")
        lines.append([row, case, patients.get(case, ""), report["tokens"], report["mean_distance_tokens"],
                      report["entropy"], report["uniform_entropy"], report["foreground_share"],
                      report["foreground_area_share"], report["reference_share"], report["reference_area_share"]])
    return lines


def main() -> None:
    from nnunetv2_llm4seg.evidence import ATTENTION_HEADER, attention_table
    from nnunetv2_llm4seg.report import write_csv, write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="DatasetXXX_Name")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-p", "--plans", required=True, help="the plans identifier the rows were trained with")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("--rows", nargs=2, default=["frozen", "random"], help="two study rows (llm4seg study names)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=2, help="pictures for the first N validation cases")
    parser.add_argument("-device", "--device", default="cpu")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    lines = [line for row in args.rows for line in explain_fold(args.dataset, args.configuration, args.plans,
                                                                 args.fold, row, args.device, args.output,
                                                                 args.examples)]
    write_csv(args.output / "explain_per_case.csv", ATTENTION_HEADER, lines)
    records = [dict(zip(ATTENTION_HEADER, map(str, line))) for line in lines]
    command = "python benchmarks/explain_rows.py " + " ".join(sys.argv[1:])
    text = (f"{args.dataset} fold {args.fold} validation cases, {args.plans}\n\n    {command}\n\n"
            f"{attention_table(records, tuple(args.rows))}\n")
    write_text(args.output / "explain.md", text)
    print(text)


if __name__ == "__main__":
    main()
