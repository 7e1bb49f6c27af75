"""ISIC 2018 Task 1 skin lesion segmentation (Codella et al. 2019), https://challenge.isic-archive.com/data/#2018.

Source layout (the extracted archives side by side):
    ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg,
    ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png;
    optionally ISIC2018_Task1-2_{Validation,Test}_Input with ISIC2018_Task1_{Validation,Test}_GroundTruth,
    which become imagesTs/labelsTs.
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2_llm4seg.converters.layout import Case, DatasetKind, folder_pairs


def list_cases(source: Path) -> list[Case]:
    """Training pair, optional Validation and Test pairs (test cases)."""
    pairs = [(f"ISIC2018_Task1-2_{split}_Input", f"ISIC2018_Task1_{split}_GroundTruth", split != "Training")
             for split in ("Training", "Validation", "Test")]
    return folder_pairs(source, pairs, lambda stem: stem.removesuffix("_segmentation"))


KIND = DatasetKind("ISIC2018", "ISIC 2018 Task 1 skin lesions", "https://challenge.isic-archive.com/data/#2018",
                   "ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg and "
                   "ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png (optionally the "
                   "Validation and Test pairs)", list_cases, {"background": 0, "lesion": 1}, "dermoscopy")
