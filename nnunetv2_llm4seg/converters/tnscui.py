"""TN-SCUI 2020: thyroid nodule segmentation and classification in ultrasound images (MICCAI 2020 challenge),
https://tn-scui2020.grand-challenge.org/ (the data are given out by the organisers on request).

Source layout (the training set, TNSCUI2020_train.rar extracted; 3644 images, 1641 benign and 2003 malignant):
    image/N.PNG (grayscale ultrasound), mask/N.PNG (nodule masks, 0/255), train.csv with the columns ID (the image
    file name, e.g. 1.PNG) and CATE (0 = benign, 1 = malignant).

Every image must be listed in train.csv; CATE is kept as the case's category (counted in the summary). The
challenge's test set (tnscui2020_testset) has no public masks and is not converted. No official split.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nnunetv2_llm4seg.converters.layout import (Case, ConversionError, DatasetKind, folder_pairs, listing,
                                                read_column, require_rows)

CATEGORIES = {"0": "benign", "1": "malignant"}


def _image_id(csv_id: str) -> str:
    """train.csv names images with their file name (1.PNG); cases are matched by stem."""
    return csv_id[:-4] if csv_id.lower().endswith(".png") else csv_id


def list_cases(source: Path) -> list[Case]:
    """image/N.PNG with mask/N.PNG, each with its CATE from train.csv as category."""
    cases = folder_pairs(source, [("image", "mask", False)])
    categories = require_rows(cases, read_column(source / "train.csv", "CATE", _image_id), "train.csv (CATE)")
    unknown = sorted({f"{case.image.name}: {categories[case.image.stem]!r}" for case in cases
                      if categories[case.image.stem] not in CATEGORIES})
    if unknown:
        raise ConversionError(f"train.csv: CATE must be 0 (benign) or 1 (malignant); found {listing(unknown)}")
    return [replace(case, category=CATEGORIES[categories[case.image.stem]]) for case in cases]


KIND = DatasetKind("TNSCUI", "TN-SCUI 2020 thyroid nodule ultrasound", "https://tn-scui2020.grand-challenge.org/",
                   "image/N.PNG, mask/N.PNG and train.csv (ID = image file name, CATE = 0 benign or 1 malignant)",
                   list_cases, {"background": 0, "nodule": 1}, "ultrasound")
