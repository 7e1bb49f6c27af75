"""splits_final.json: 5 folds of whole patients, from the source's own folds or drawn by patient (seeded)."""
from __future__ import annotations

import random
from collections import Counter

from nnunetv2_llm4seg.converters.layout import Case, ConversionError, listing

NUM_FOLDS = 5
SPLIT_SEED = 12345


def fold_index(text: str, where: str) -> int:
    """0-based fold from a kFold value 1..NUM_FOLDS."""
    if text not in {str(k) for k in range(1, NUM_FOLDS + 1)}:
        raise ConversionError(f"{where}: kFold must be 1 to {NUM_FOLDS}, found {text!r}")
    return int(text) - 1


def _official_folds(train: list[Case]) -> dict[str, int]:
    """Patient -> fold from the source's own folds; refuses a patient spread over several folds."""
    folds: dict[str, set[int]] = {}
    for case in train:
        folds.setdefault(case.patient, set()).add(case.fold)
    spread = sorted(patient for patient, found in folds.items() if len(found) > 1)
    if spread:
        raise ConversionError(f"the official folds split patient(s) {listing(spread)} over several folds")
    return {patient: found.pop() for patient, found in folds.items()}


def _drawn_folds(train: list[Case]) -> dict[str, int]:
    """Patient -> fold: patients with most images first, each into the fold with fewest images (seeded ties)."""
    sizes = Counter(case.patient for case in train)
    patients = sorted(sizes)
    random.Random(SPLIT_SEED).shuffle(patients)
    patients.sort(key=sizes.__getitem__, reverse=True)  # stable: equal sizes keep the shuffled order
    load, fold_of = [0] * NUM_FOLDS, {}
    for patient in patients:
        fold_of[patient] = fold = load.index(min(load))
        load[fold] += sizes[patient]
    return fold_of


def patient_splits(cases: list[Case]) -> list[dict[str, list[str]]] | None:
    """splits_final.json content (folds of whole patients), or None when the source has no patients."""
    train = [case for case in cases if not case.test]
    if not all(case.patient for case in train):
        return None
    fold_of = _official_folds(train) if all(case.fold is not None for case in train) else _drawn_folds(train)
    val = [sorted(case.case_id for case in train if fold_of[case.patient] == fold) for fold in range(NUM_FOLDS)]
    if not all(val):
        raise ConversionError(f"{len(fold_of)} patient(s) cannot fill {NUM_FOLDS} folds: some folds would be empty")
    everyone = {case.case_id for case in train}
    return [{"train": sorted(everyone - set(fold)), "val": fold} for fold in val]
