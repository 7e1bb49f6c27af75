"""TN3K thyroid nodule ultrasound (Gong et al. 2022),
https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation.

Source layout:
    trainval-image/NNNN.jpg, trainval-mask/NNNN.jpg (JPEG masks, thresholded at 127); optionally test-image/
    with test-mask/, which become imagesTs/labelsTs.
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2_llm4seg.converters.layout import Case, DatasetKind, folder_pairs


def list_cases(source: Path) -> list[Case]:
    """trainval-image/-mask, optional test-image/-mask (test cases)."""
    return folder_pairs(source, [("trainval-image", "trainval-mask", False), ("test-image", "test-mask", True)])


KIND = DatasetKind("TN3K", "TN3K thyroid nodule ultrasound",
                   "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
                   "trainval-image/NNNN.jpg, trainval-mask/NNNN.jpg and optionally test-image/, test-mask/",
                   list_cases, {"background": 0, "nodule": 1}, "ultrasound")
