"""BUSI: Breast Ultrasound Images (Al-Dhabyani et al., Data in Brief 2020),
https://scholar.cu.edu.eg/?q=afahmy/pages/dataset.

Source layout (folder Dataset_BUSI_with_GT):
    benign/, malignant/, normal/, each with `NAME (k).png` and its mask(s) `NAME (k)_mask.png`,
    `NAME (k)_mask_1.png`, ... (several masks of one image are merged).

The benchmark setting segments lesions of the benign and malignant images only: the 133 normal images (empty
masks) are left out unless asked for (`--include-normal`). No official split.
"""
from __future__ import annotations

import re
from pathlib import Path

from nnunetv2_llm4seg.converters.layout import Case, DatasetKind, LayoutError, files, masks_by_image, pair

CATEGORIES = ("benign", "malignant", "normal")


def _mask_owner(stem: str) -> str | None:
    """Image stem of a mask (`NAME (k)_mask`, `NAME (k)_mask_1`, ...); None for images."""
    match = re.fullmatch(r"(.+)_mask(?:_\d+)?", stem)
    return match[1] if match else None


def list_cases(source: Path) -> list[Case]:
    """Images and their (merged) masks in benign/, malignant/ and normal/, with the folder as category."""
    folders = [source / category for category in CATEGORIES if (source / category).is_dir()]
    if not folders:
        raise LayoutError(f"none of benign/, malignant/, normal/ in {source}")
    cases = []
    for folder in folders:
        images = [path for path in files(folder) if _mask_owner(path.stem) is None]
        cases += pair(images, masks_by_image(folder, _mask_owner), category=folder.name)
    return cases


KIND = DatasetKind("BUSI", "BUSI breast ultrasound images", "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
                   "benign/, malignant/, normal/ with 'NAME (k).png' and its masks 'NAME (k)_mask.png', "
                   "'NAME (k)_mask_1.png', ...", list_cases, {"background": 0, "lesion": 1}, "ultrasound",
                   excludes_normal=True)
