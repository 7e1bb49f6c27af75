"""Held-out splits for a study: train on the cases whose metadata column has given values, validate on the rest.

`{"by": "device", "train": ["GE Logiq 7 @10-14MHz"]}` trains on the cases of that scanner and validates on every
other scanner's cases (per held-out value in the tables, each with its n). The split is one more entry of
nnU-Net's own `splits_final.json` in the preprocessed dataset folder, after the cross-validation folds that are
there (nnU-Net's planner accepts a splits file holding more folds than the raw one): training, validation and
prediction then run through nnU-Net's trainer as for any fold, in its own `fold_N` folder. The same split always
gets the same index; the file's other folds are never changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunetv2_llm4seg.case_metadata import FILE_NAME, column_values, read_case_metadata
from nnunetv2_llm4seg.experiments import ExperimentError

SPLIT_KEYS = {"by", "train"}
SPLITS_FILE = "splits_final.json"
NNUNET_SPLIT_SEED = 12345  # nnU-Net's seed for the 5-fold split it draws when a dataset has no splits file
NNUNET_FOLDS = 5


@dataclass(frozen=True)
class HeldOutSplit:
    """Train on the cases whose metadata column `by` has one of the `train` values; validate on the others."""

    by: str
    train: tuple[str, ...]

    def label(self) -> str:
        return f"train {self.by} = {' | '.join(self.train)}"


def parse_split(item: Any, where: str) -> HeldOutSplit:
    """The split of a study's dataset entry: {"by": COLUMN, "train": [VALUE, ...]}."""
    if not isinstance(item, dict) or set(item) != SPLIT_KEYS:
        raise ExperimentError(f"{where}: \"split\" must be an object with exactly the keys \"by\" (a column of "
                              f"{FILE_NAME}, e.g. \"device\") and \"train\" (the values to train on), got {item!r}.")
    by, train = item["by"], item["train"]
    if not isinstance(by, str) or not by:
        raise ExperimentError(f"{where}: split \"by\" must name a column of {FILE_NAME}, got {by!r}.")
    if not isinstance(train, list) or not train or not all(isinstance(v, str) and v for v in train):
        raise ExperimentError(f"{where}: split \"train\" must be a non-empty list of {by} values, got {train!r}.")
    if len(set(train)) != len(train):
        raise ExperimentError(f"{where}: split \"train\" names a value twice: {train!r}.")
    return HeldOutSplit(by, tuple(train))


def split_entry(split: HeldOutSplit, raw_dataset: Path) -> dict[str, list[str]]:
    """nnU-Net's {"train": [...], "val": [...]} for the split, checked against the dataset's metadata."""
    where = f"{raw_dataset.name}: split by {split.by!r}"
    values = column_values(read_case_metadata(raw_dataset), split.by, where)
    known = sorted(set(values.values()))
    unknown = [value for value in split.train if value not in known]
    if unknown:
        raise ExperimentError(f"{where}: no case has {split.by} {', '.join(map(repr, unknown))}; the values are "
                              f"{', '.join(map(repr, known))}.")
    train = sorted(case for case, value in values.items() if value in split.train)
    val = sorted(case for case, value in values.items() if value not in split.train)
    if not val:
        raise ExperimentError(f"{where}: every case is trained on, none is held out; leave out at least one of "
                              f"{', '.join(map(repr, known))}.")
    return {"train": train, "val": val}


def _existing_splits(raw_dataset: Path, preprocessed_dataset: Path, cases: list[str]) -> list[dict]:
    """The splits nnU-Net would use: the preprocessed file, else the raw one, else its own seeded 5-fold split."""
    for folder in (preprocessed_dataset, raw_dataset):
        if (folder / SPLITS_FILE).is_file():
            return json.loads((folder / SPLITS_FILE).read_text())
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    return generate_crossval_split(sorted(cases), seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_FOLDS)


def held_out_fold(split: HeldOutSplit, raw_dataset: Path, preprocessed_dataset: Path) -> tuple[int, list[dict]]:
    """The split's fold index and the splits list that holds it (appended when new); nothing is written."""
    entry = split_entry(split, raw_dataset)
    splits = _existing_splits(raw_dataset, preprocessed_dataset, entry["train"] + entry["val"])
    for index, existing in enumerate(splits):
        if sorted(existing["train"]) == entry["train"] and sorted(existing["val"]) == entry["val"]:
            return index, splits
    return len(splits), [*splits, entry]


def write_held_out_fold(split: HeldOutSplit, raw_dataset: Path, preprocessed_dataset: Path) -> int:
    """Add the split to the preprocessed splits_final.json (when not there yet); returns its fold index."""
    index, splits = held_out_fold(split, raw_dataset, preprocessed_dataset)
    target = preprocessed_dataset / SPLITS_FILE
    if not target.is_file() or len(json.loads(target.read_text())) != len(splits):
        preprocessed_dataset.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(splits, indent=2) + "\n")
    return index
