"""BTCV / Synapse multi-organ abdominal CT (MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault),
https://www.synapse.org/#!Synapse:syn3193805/wiki/217789.

Source layout (RawData.zip):
    img/imgXXXX.nii.gz and label/labelXXXX.nii.gz, at the top or under RawData/Training/. Files are copied as they
    are (geometry kept), with 13 organ labels and the channel "CT". The unlabelled RawData/Testing images are
    skipped.
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2_llm4seg.converters.layout import Case, DatasetKind, folder_pairs

ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior vena cava", "portal and splenic vein", "pancreas", "right adrenal gland", "left adrenal gland")


def list_cases(source: Path) -> list[Case]:
    """img/imgXXXX.nii.gz with label/labelXXXX.nii.gz, at the top or under RawData/Training."""
    nested = source / "RawData" / "Training"
    root = nested if (nested / "img").is_dir() else source
    return folder_pairs(root, [("img", "label", False)], lambda stem: "img" + stem.removeprefix("label"),
                        suffixes=(".nii.gz",))


KIND = DatasetKind("BTCV", "BTCV (Synapse) multi-organ abdominal CT",
                   "https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
                   "img/imgXXXX.nii.gz and label/labelXXXX.nii.gz (or RawData/Training/img|label)", list_cases,
                   {"background": 0, **{organ: k for k, organ in enumerate(ORGANS, start=1)}}, "CT", volumes=True)
