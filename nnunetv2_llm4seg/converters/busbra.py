"""BUS-BRA breast ultrasound (Gomez-Flores et al., Medical Physics 2023), https://zenodo.org/records/8231412.

Source layout (BUSBRA.zip, extracted):
    Images/bus_XXXX-{l,r,s}.png, Masks/mask_XXXX-{l,r,s}.png (binary masks), bus_data.csv (ID, Case = patient,
    Histology, Pathology, BIRADS, Device, Width, Height, Side, BBOX) and, in the full download, 5-fold-cv.csv
    (ID, kFold).

Several images belong to one patient (Case), so the folds are made of whole patients: the official folds of
5-fold-cv.csv become splits_final.json; without that file, 5 folds of whole patients are drawn, balanced by
image count (seeded). Patient (Case) and scanner (Device, when the table has it) go into case_metadata.csv.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nnunetv2_llm4seg.converters.folds import fold_index
from nnunetv2_llm4seg.converters.layout import (Case, DatasetKind, folder_pairs, has_column, read_column,
                                                require_rows)


def list_cases(source: Path) -> list[Case]:
    """Image/mask pairs with their patient and scanner (bus_data.csv) and official fold (5-fold-cv.csv, if
    present)."""
    cases = folder_pairs(source, [("Images", "Masks", False)], lambda stem: "bus_" + stem.removeprefix("mask_"))
    table = source / "bus_data.csv"
    patients = require_rows(cases, read_column(table, "Case"), "bus_data.csv (Case)")
    devices = (require_rows(cases, read_column(table, "Device"), "bus_data.csv (Device)")
               if has_column(table, "Device") else {})
    cases = [replace(case, patient=patients[case.image.stem], device=devices.get(case.image.stem))
             for case in cases]
    folds_file = source / "5-fold-cv.csv"
    if not folds_file.is_file():
        return cases
    folds = require_rows(cases, read_column(folds_file, "kFold"), "5-fold-cv.csv (kFold)")
    return [replace(case, fold=fold_index(folds[case.image.stem], str(folds_file))) for case in cases]


KIND = DatasetKind("BUSBRA", "BUS-BRA breast ultrasound", "https://zenodo.org/records/8231412",
                   "Images/bus_XXXX-{l,r,s}.png, Masks/mask_XXXX-{l,r,s}.png, bus_data.csv (ID, Case, ...) "
                   "and optionally 5-fold-cv.csv (ID, kFold)", list_cases, {"background": 0, "lesion": 1},
                   "ultrasound")
