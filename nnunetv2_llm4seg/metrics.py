"""Per-case segmentation metrics under two protocols, from the same prediction and reference files.

nnU-Net protocol (its evaluator's summary.json): Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN) per case and
foreground label/region, NaN when reference and prediction are both empty (such cases drop out of means).

Paper protocol: the official LLM4Seg code (github.com/Mwxinnn/LLM4Seg, `utils/metrics.py`: `iou_score`,
`get_sensitivity`, `get_precision`; `main.py` validates with batch size 1, so every value is per image and the
reported number is their mean). On binary masks (prediction and reference thresholded at 0.5):
    IoU = (|P∩G| + 1e-5) / (|P∪G| + 1e-5)                   (empty/empty: 1)
    SE  = TP / (TP + FN + 1e-6),  PC = TP / (TP + FP + 1e-6)
    F1  = 2·SE·PC / (SE + PC + 1e-6)
where SE and PC take the reference as `GT == max(GT)`: for an empty reference that is every pixel, so an
empty/empty image scores F1 = 0 (SE = PC = 0) and false positives on a lesion-free image raise F1 (each is a
true positive against the all-foreground reference). Reproduced as written, so the numbers are comparable
with the paper's. Datasets with several foreground labels/regions average them per case; ignore-label
pixels are left out, as nnU-Net does.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

IOU_SMOOTH = 1e-5
RATE_EPSILON = 1e-6
NNUNET_LABEL = "nnU-Net: Dice, IoU (empty/empty excluded)"
PAPER_LABEL = "paper protocol: IoU, F1 per image (official LLM4Seg code; empty/empty: IoU 1, F1 0)"
METRICS = ("Dice", "IoU", "paper IoU", "paper F1")


def paper_case_metrics(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """IoU, F1, SE and PC of one image exactly as the official LLM4Seg code computes them (see module doc)."""
    predicted, truth = np.asarray(prediction) > 0.5, np.asarray(reference) > 0.5
    iou = ((predicted & truth).sum() + IOU_SMOOTH) / ((predicted | truth).sum() + IOU_SMOOTH)
    if not truth.any():  # the official `GT == torch.max(GT)` turns an empty reference into all foreground
        truth = np.ones_like(truth)
    tp = float((predicted & truth).sum())
    se = tp / ((truth & ~predicted).sum() + tp + RATE_EPSILON)
    pc = tp / ((predicted & ~truth).sum() + tp + RATE_EPSILON)
    return {"IoU": float(iou), "F1": 2 * se * pc / (se + pc + RATE_EPSILON), "SE": se, "PC": pc}


def _nnunet_means(per_label: list[dict]) -> tuple[float, float]:
    dice = [m["Dice"] for m in per_label if not math.isnan(m["Dice"])]
    iou = [m["IoU"] for m in per_label if not math.isnan(m["IoU"])]
    return (float(np.mean(dice)) if dice else float("nan"), float(np.mean(iou)) if iou else float("nan"))


def case_id(reference_file: str) -> str:
    return Path(reference_file).name.split(".")[0]


def case_metrics(summary: dict, dataset_json: dict) -> dict[str, dict[str, float]]:
    """case id -> both protocols' metrics (METRICS) for every case of an nnU-Net summary.json.

    nnU-Net's values are read from the summary; the paper protocol reads the same reference and prediction
    files (with the dataset's reader) and applies `paper_case_metrics` per foreground label/region."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    labels = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    targets = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    cases = {}
    for entry in summary["metric_per_case"]:
        reader = determine_reader_writer_from_dataset_json(dataset_json, entry["reference_file"], verbose=False)()
        reference, _ = reader.read_seg(entry["reference_file"])
        prediction, _ = reader.read_seg(entry["prediction_file"])
        keep = reference != labels.ignore_label if labels.has_ignore_label else np.ones(reference.shape, bool)
        paper = [paper_case_metrics(np.isin(prediction, target)[keep], np.isin(reference, target)[keep])
                 for target in targets]
        dice, iou = _nnunet_means(list(entry["metrics"].values()))
        cases[case_id(entry["reference_file"])] = {
            "Dice": dice, "IoU": iou, "paper IoU": float(np.mean([p["IoU"] for p in paper])),
            "paper F1": float(np.mean([p["F1"] for p in paper]))}
    return cases
