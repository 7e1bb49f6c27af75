"""Kvasir-SEG polyps (Jha et al., MMM 2020), https://datasets.simula.no/kvasir-seg/.

Source layout (kvasir-seg.zip, folder Kvasir-SEG):
    images/NAME.jpg (RGB), masks/NAME.jpg (JPEG masks, thresholded at 127). No official split.
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2_llm4seg.converters.layout import Case, DatasetKind, folder_pairs


def list_cases(source: Path) -> list[Case]:
    """images/NAME.jpg with masks/NAME.jpg."""
    return folder_pairs(source, [("images", "masks", False)])


KIND = DatasetKind("KvasirSEG", "Kvasir-SEG polyps", "https://datasets.simula.no/kvasir-seg/",
                   "images/NAME.jpg and masks/NAME.jpg", list_cases, {"background": 0, "polyp": 1}, "endoscopy")
