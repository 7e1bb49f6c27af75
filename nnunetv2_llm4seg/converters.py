"""Convert public segmentation datasets into nnU-Net v2's raw format (`llm4seg convert`).

Each converter reads a source folder laid out exactly like the public download and checks all of it before
writing anything (layout, images without masks, image/mask size mismatches, unsafe or clashing case names).
It then writes into a hidden temporary folder next to the target and renames it into place at the end: an
error leaves the raw folder as it was, and an existing dataset is only replaced with `force=True` (`--force`).

Output, in `DatasetNNN_NAME/` of the raw folder: `imagesTr/CASE_0000.png` and `labelsTr/CASE.png` (0/1 masks),
`imagesTs/` + `labelsTs/` where the source has an official test split, `dataset.json`, and, where the source
has a patient-level split, `splits_final.json` (5 folds of whole patients). When `nnUNet_preprocessed` is set,
`splits_final.json` is also copied to `$nnUNet_preprocessed/DatasetNNN_NAME/`. nnU-Net's planner
(`nnUNetv2_plan_and_preprocess`) copies it there itself when it is missing, refuses to plan when the copy there
differs, and never deletes it.

2D images are written as PNG for nnU-Net's NaturalImage2DIO, which reads an RGB PNG as three channels and a
grayscale PNG as one. Colour datasets get one `CASE_0000.png` per case with channel_names
{"0": "R", "1": "G", "2": "B"}; grayscale datasets get a single channel. An RGB file whose channels agree
(within JPEG noise) counts as grayscale. If any image of a dataset is in colour, all of its images are written
as RGB. Alpha is dropped. Masks are binarised: 8-bit masks at > 127 on the brightest colour channel
(transparent pixels are background; lossless 8-bit masks holding only 0/1 at > 0), 16-bit and other masks at
> 0.5 * max. Several mask files for one image are merged with a logical OR. Case ids are the file stems with
every run of characters other than letters, digits, '_' and '-' replaced by '_' and leading or trailing '_' and
'-' removed (`benign (1)` -> `benign_1`); file names starting with '.' are ignored.

Source layouts (pass the folder that holds these entries)
---------------------------------------------------------
busbra -> DatasetNNN_BUSBRA: BUS-BRA breast ultrasound, https://zenodo.org/records/8231412 (BUSBRA.zip)
    Images/bus_XXXX-{l,r,s}.png, Masks/mask_XXXX-{l,r,s}.png, bus_data.csv (ID, Case = patient, Histology,
    Pathology, BIRADS, Device, Width, Height, Side, BBOX) and, in the full download, 5-fold-cv.csv (ID, kFold).
    The official patient-level folds of 5-fold-cv.csv become splits_final.json. Without that file, the
    converter draws 5 folds of whole patients (Case), balanced by image count (seeded).
busi -> BUSI: Breast Ultrasound Images (Al-Dhabyani et al. 2020), https://scholar.cu.edu.eg/?q=afahmy/pages/dataset
    (folder Dataset_BUSI_with_GT): benign/, malignant/, normal/ with `NAME (k).png` and its masks
    `NAME (k)_mask.png`, `NAME (k)_mask_1.png`, ... (merged). No official split.
kvasir -> KvasirSEG: Kvasir-SEG, https://datasets.simula.no/kvasir-seg/ (kvasir-seg.zip, folder Kvasir-SEG)
    images/NAME.jpg, masks/NAME.jpg (JPEG masks). No official split.
isic2018 -> ISIC2018: ISIC 2018 Task 1, https://challenge.isic-archive.com/data/#2018
    ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg, ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png;
    optional ISIC2018_Task1-2_{Validation,Test}_Input with ISIC2018_Task1_{Validation,Test}_GroundTruth
    -> imagesTs/labelsTs.
tn3k -> TN3K: TN3K thyroid nodules, https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation
    trainval-image/NNNN.jpg, trainval-mask/NNNN.jpg; optional test-image/ with test-mask/ -> imagesTs/labelsTs.
btcv -> BTCV: BTCV / Synapse multi-organ CT, https://www.synapse.org/#!Synapse:syn3193805/wiki/217789 (RawData.zip)
    img/imgXXXX.nii.gz and label/labelXXXX.nii.gz, or RawData/Training/img|label. Files are copied as they are
    (geometry kept), with 13 organ labels and channel "CT". The unlabelled RawData/Testing images are skipped.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from nnunetv2_llm4seg.errors import LLM4SegError

SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
GRAY_TOLERANCE = 2.0  # mean |channel - mean of the channels| in grey levels below which RGB counts as grayscale
NUM_FOLDS = 5
SPLIT_SEED = 12345
RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}
LESION = {"background": 0, "lesion": 1}
BTCV_ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior vena cava", "portal and splenic vein", "pancreas", "right adrenal gland",
               "left adrenal gland")


class ConversionError(LLM4SegError, ValueError):
    """A dataset cannot be converted (layout, masks, sizes, names) or its target folder is taken."""


class _LayoutError(ConversionError):
    """The source does not look like the expected download; the message gets the expected layout appended."""


@dataclass(frozen=True)
class _Case:
    """One image and its mask file(s); test cases go to imagesTs/labelsTs, patient and fold define the folds."""

    case_id: str
    image: Path
    masks: tuple[Path, ...]
    test: bool = False
    patient: str | None = None
    fold: int | None = None


@dataclass(frozen=True)
class _Kind:
    """How to list one public dataset's cases, write them and describe them in dataset.json."""

    default_name: str
    title: str
    url: str
    layout: str
    list_cases: Callable[[Path], list[_Case]]
    labels: dict[str, int]
    channel: str  # channel name of grayscale images (colour images get R, G, B)
    write: Callable[[list[_Case], Path, str], dict[str, str]]
    file_ending: str = ".png"


# ---------------------------------------------------------------- listing the source

def _listing(names: list[str], limit: int = 10) -> str:
    """The first `limit` names, then how many more there are."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _require_dir(folder: Path) -> Path:
    """`folder`, or a layout error if it is missing."""
    if not folder.is_dir():
        raise _LayoutError(f"missing folder {folder}")
    return folder


def _stem(path: Path) -> str:
    """File name without its extension (`.nii.gz` counts as one)."""
    return path.name[:-7] if path.name.lower().endswith(".nii.gz") else path.stem


def _files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Visible files of `folder` ending with one of `suffixes` (any case), sorted."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(suffixes))


def _masks_by_image(folder: Path, image_stem: Callable[[str], str | None],
                    suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, list[Path]]:
    """Mask files of `folder` keyed by the stem of their image (files mapped to None are skipped)."""
    masks: dict[str, list[Path]] = {}
    for path in _files(folder, suffixes):
        key = image_stem(_stem(path))
        if key is not None:
            masks.setdefault(key, []).append(path)
    return masks


def _case_id(path: Path) -> str:
    """nnU-Net-safe case id from a file name (letters, digits, '_' and '-' only)."""
    case_id = re.sub(r"[^A-Za-z0-9_-]+", "_", _stem(path)).strip("_-")
    if not case_id:
        raise ConversionError(f"cannot make a case id from the file name {path.name!r}")
    return case_id


def _pair(images: Iterable[Path], masks: dict[str, list[Path]], test: bool = False) -> list[_Case]:
    """One case per image with its mask files; refuses images without a mask, naming them."""
    cases, missing = [], []
    for image in images:
        if masks.get(_stem(image)):
            cases.append(_Case(_case_id(image), image, tuple(masks[_stem(image)]), test))
        else:
            missing.append(f"{image.parent.name}/{image.name}")
    if missing:
        raise ConversionError(f"{len(missing)} image(s) have no mask: {_listing(missing)}")
    return cases


def _folder_pairs(source: Path, pairs: Iterable[tuple[str, str, bool]], image_stem: Callable[[str], str | None] = str,
                  suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[_Case]:
    """Cases from (images folder, masks folder, is test) pairs; a test pair whose images folder is absent is skipped."""
    cases = []
    for images, masks, test in pairs:
        if test and not (source / images).is_dir():
            continue
        mask_files = _masks_by_image(_require_dir(source / masks), image_stem, suffixes)
        cases += _pair(_files(_require_dir(source / images), suffixes), mask_files, test)
    return cases


def _read_ids(path: Path, column: str) -> dict[str, str]:
    """ID -> `column` of a CSV file; refuses IDs that are not plain names (path separators, '..', spaces)."""
    if not path.is_file():
        raise _LayoutError(f"missing file {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"ID", column} <= set(reader.fieldnames or ()):
            raise ConversionError(f"{path} needs the columns ID and {column}; found {reader.fieldnames}")
        rows = {(row["ID"] or "").strip(): (row[column] or "").strip() for row in reader}
    unsafe = [repr(name) for name in rows if not SAFE_NAME.fullmatch(name)]
    if unsafe:
        raise ConversionError(f"{path}: IDs may only hold letters, digits, '_' and '-'; refused {_listing(unsafe)}")
    return rows


def _fold_index(text: str, path: Path) -> int:
    """0-based fold from a kFold value 1..NUM_FOLDS."""
    if text not in {str(k) for k in range(1, NUM_FOLDS + 1)}:
        raise ConversionError(f"{path}: kFold must be 1 to {NUM_FOLDS}, found {text!r}")
    return int(text) - 1


def _list_busbra(source: Path) -> list[_Case]:
    """BUS-BRA: image/mask pairs with their patient (bus_data.csv) and official fold (5-fold-cv.csv, if present)."""
    cases = _folder_pairs(source, [("Images", "Masks", False)], lambda stem: "bus_" + stem.removeprefix("mask_"))
    patients = _read_ids(source / "bus_data.csv", "Case")
    folds_file = source / "5-fold-cv.csv"
    folds = _read_ids(folds_file, "kFold") if folds_file.is_file() else {}
    unknown = [case.image.name for case in cases
               if not patients.get(case.image.stem) or (folds and case.image.stem not in folds)]
    if unknown:
        where = "bus_data.csv (Case)" + (" or 5-fold-cv.csv (kFold)" if folds else "")
        raise ConversionError(f"{len(unknown)} image(s) are missing from {where}: {_listing(unknown)}")
    return [replace(case, patient=patients[case.image.stem],
                    fold=_fold_index(folds[case.image.stem], folds_file) if folds else None) for case in cases]


def _busi_mask_owner(stem: str) -> str | None:
    """Image stem of a BUSI mask (`NAME (k)_mask`, `NAME (k)_mask_1`, ...); None for images."""
    match = re.fullmatch(r"(.+)_mask(?:_\d+)?", stem)
    return match[1] if match else None


def _list_busi(source: Path) -> list[_Case]:
    """BUSI: images and their (merged) masks in benign/, malignant/ and normal/."""
    folders = [source / label for label in ("benign", "malignant", "normal") if (source / label).is_dir()]
    if not folders:
        raise _LayoutError(f"none of benign/, malignant/, normal/ in {source}")
    cases = []
    for folder in folders:
        images = [path for path in _files(folder) if _busi_mask_owner(path.stem) is None]
        cases += _pair(images, _masks_by_image(folder, _busi_mask_owner))
    return cases


def _list_kvasir(source: Path) -> list[_Case]:
    """Kvasir-SEG: images/NAME.jpg with masks/NAME.jpg."""
    return _folder_pairs(source, [("images", "masks", False)])


def _list_isic2018(source: Path) -> list[_Case]:
    """ISIC 2018 Task 1: Training pair, optional Validation and Test pairs (test cases)."""
    pairs = [(f"ISIC2018_Task1-2_{split}_Input", f"ISIC2018_Task1_{split}_GroundTruth", split != "Training")
             for split in ("Training", "Validation", "Test")]
    return _folder_pairs(source, pairs, lambda stem: stem.removesuffix("_segmentation"))


def _list_tn3k(source: Path) -> list[_Case]:
    """TN3K: trainval-image/-mask, optional test-image/-mask (test cases)."""
    return _folder_pairs(source, [("trainval-image", "trainval-mask", False), ("test-image", "test-mask", True)])


def _list_btcv(source: Path) -> list[_Case]:
    """BTCV: img/imgXXXX.nii.gz with label/labelXXXX.nii.gz, at the top or under RawData/Training."""
    nested = source / "RawData" / "Training"
    root = nested if (nested / "img").is_dir() else source
    return _folder_pairs(root, [("img", "label", False)], lambda stem: "img" + stem.removeprefix("label"),
                         suffixes=(".nii.gz",))


# ---------------------------------------------------------------- checking

def _size(path: Path) -> tuple[int, ...]:
    """Image size read from the file header (PIL for 2D, SimpleITK for NIfTI)."""
    try:
        if path.name.lower().endswith(".nii.gz"):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return tuple(reader.GetSize())
        with Image.open(path) as img:
            return img.size
    except (OSError, RuntimeError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None


def _shape(size: tuple[int, ...]) -> str:
    """A size as text, e.g. 32x24."""
    return "x".join(map(str, size))


def _check_sizes(cases: list[_Case]) -> None:
    """Refuse cases whose mask size differs from the image size, naming them."""
    bad = []
    for case in cases:
        size = _size(case.image)
        for mask in case.masks:
            if (mask_size := _size(mask)) != size:
                bad.append(f"{case.image.name} {_shape(size)} vs {mask.name} {_shape(mask_size)}")
    if bad:
        raise ConversionError(f"{len(bad)} mask(s) differ in size from their image: {_listing(bad)}")


def _check_unique(cases: list[_Case]) -> None:
    """Refuse file names that map to the same case id within a split."""
    counts = Counter((case.test, case.case_id) for case in cases)
    clashes = [f"{case.image.name} -> {case.case_id}" for case in cases if counts[case.test, case.case_id] > 1]
    if clashes:
        raise ConversionError(f"file names that map to the same case id: {_listing(clashes)}")


def _validated_cases(kind: str, spec: _Kind, source: Path) -> list[_Case]:
    """All cases of the source, checked for layout, masks, unique ids and matching sizes."""
    try:
        if not source.is_dir():
            raise _LayoutError(f"{source} is not a folder")
        cases = spec.list_cases(source)
        if all(case.test for case in cases):
            raise _LayoutError(f"no training images found in {source}")
    except _LayoutError as exc:
        raise ConversionError(f"{exc}. A {kind} source ({spec.title}, {spec.url}) holds {spec.layout}") from None
    _check_unique(cases)
    _check_sizes(cases)
    return cases


# ---------------------------------------------------------------- folds

def _official_folds(train: list[_Case]) -> dict[str, int]:
    """Patient -> fold from the source's own folds; refuses a patient spread over several folds."""
    folds: dict[str, set[int]] = {}
    for case in train:
        folds.setdefault(case.patient, set()).add(case.fold)
    spread = sorted(patient for patient, found in folds.items() if len(found) > 1)
    if spread:
        raise ConversionError(f"the official folds split patient(s) {_listing(spread)} over several folds")
    return {patient: found.pop() for patient, found in folds.items()}


def _drawn_folds(train: list[_Case]) -> dict[str, int]:
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


def _splits(cases: list[_Case]) -> list[dict[str, list[str]]] | None:
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


# ---------------------------------------------------------------- reading and writing 2D images

def _is_gray(rgb: np.ndarray) -> bool:
    """True when the three channels agree within GRAY_TOLERANCE (JPEG noise), on a grid of at most ~512x512 pixels."""
    step_y, step_x = max(1, rgb.shape[0] // 512), max(1, rgb.shape[1] // 512)
    sample = rgb[::step_y, ::step_x].astype(np.float32)
    return float(np.abs(sample - sample.mean(axis=-1, keepdims=True)).mean()) < GRAY_TOLERANCE


def _read_image(path: Path) -> np.ndarray:
    """HxW (grayscale, 8 or 16 bit) or HxWx3 (colour) array; alpha dropped, gray-looking colour made grayscale."""
    with Image.open(path) as img:
        if img.mode.startswith("I"):
            return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        rgb = img.convert("RGB")
    return np.asarray(rgb.convert("L") if _is_gray(np.asarray(rgb)) else rgb)


def _read_mask(path: Path) -> np.ndarray:
    """0/1 uint8 mask (thresholds in the module docstring); transparent pixels are background."""
    with Image.open(path) as img:
        raw = np.asarray(img.convert({"1": "L", "P": "RGBA", "PA": "RGBA"}.get(img.mode, img.mode)))
    values = raw
    if raw.ndim == 3:  # brightest colour channel, weighted by alpha where there is one
        values = (raw[..., :-1] * (raw[..., -1:] / 255) if raw.shape[-1] in (2, 4) else raw).max(axis=-1)
    peak = float(values.max())
    lossy = path.suffix.lower() in LOSSY_SUFFIXES
    threshold = 127 if raw.dtype == np.uint8 and (lossy or peak > 1) else 0.5 * peak
    return (values > threshold).astype(np.uint8)


def _outputs(folder: Path, case: _Case, ending: str) -> tuple[Path, Path]:
    """Image and label paths of a case in the dataset folder."""
    split = "Ts" if case.test else "Tr"
    return (folder / f"images{split}" / f"{case.case_id}_0000{ending}",
            folder / f"labels{split}" / f"{case.case_id}{ending}")


def _save_png(path: Path, array: np.ndarray) -> None:
    """Save a PNG with fast compression (level 1: about half the time of the default, same size here)."""
    Image.fromarray(array).save(path, compress_level=1)


def _gray_to_rgb(path: Path) -> None:
    """Rewrite a grayscale PNG as RGB (16-bit values scaled to 8 bits)."""
    with Image.open(path) as img:
        gray = np.asarray(img)
    if gray.dtype != np.uint8:
        gray = np.round(gray / 257).astype(np.uint8)
    _save_png(path, np.repeat(gray[..., None], 3, axis=-1))


def _write_2d(cases: list[_Case], folder: Path, gray_channel: str) -> dict[str, str]:
    """Write PNG images and 0/1 label PNGs, all RGB if any image is in colour; returns channel_names."""
    gray, colour = [], []
    for case in cases:
        image_path, label_path = _outputs(folder, case, ".png")
        image = _read_image(case.image)
        _save_png(image_path, image)
        (colour if image.ndim == 3 else gray).append(image_path)
        label = np.logical_or.reduce([_read_mask(mask) for mask in case.masks])
        _save_png(label_path, label.astype(np.uint8))
    for path in gray if colour else []:
        _gray_to_rgb(path)
    return dict(RGB_CHANNELS) if colour else {"0": gray_channel}


def _copy_volumes(cases: list[_Case], folder: Path, channel: str) -> dict[str, str]:
    """Copy NIfTI images and labels as they are (geometry kept); returns channel_names."""
    for case in cases:
        image_path, label_path = _outputs(folder, case, ".nii.gz")
        shutil.copyfile(case.image, image_path)
        shutil.copyfile(case.masks[0], label_path)
    return {"0": channel}


# ---------------------------------------------------------------- the dataset folder

def _save_json(path: Path, content: object) -> None:
    """Write JSON with indentation."""
    path.write_text(json.dumps(content, indent=2) + "\n")


def _dataset_json(spec: _Kind, name: str, channels: dict[str, str], cases: list[_Case]) -> dict:
    """nnU-Net v2 dataset.json content."""
    reader = {"overwrite_image_reader_writer": "NaturalImage2DIO"} if spec.file_ending == ".png" else {}
    return {"name": name, "description": spec.title, "reference": spec.url, "channel_names": channels,
            "labels": spec.labels, "numTraining": sum(not case.test for case in cases),
            "numTest": sum(case.test for case in cases), "file_ending": spec.file_ending, **reader,
            "converted_by": "nnunetv2-llm4seg (llm4seg convert)"}


def _write_dataset(spec: _Kind, name: str, cases: list[_Case], splits: list | None, folder: Path) -> None:
    """Write images, labels, dataset.json and splits_final.json into `folder`."""
    for split in ("Tr", "Ts") if any(case.test for case in cases) else ("Tr",):
        (folder / f"images{split}").mkdir()
        (folder / f"labels{split}").mkdir()
    channels = spec.write(cases, folder, spec.channel)
    _save_json(folder / "dataset.json", _dataset_json(spec, name, channels, cases))
    if splits:
        _save_json(folder / "splits_final.json", splits)


def _dataset_folder_name(dataset_id: int, name: str) -> str:
    """`DatasetNNN_NAME`, refusing ids outside 1..999 and names that are not plain names."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    if not SAFE_NAME.fullmatch(name):
        raise ConversionError(f"dataset name {name!r}: use only letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def _preprocessed_splits(folder_name: str) -> Path | None:
    """$nnUNet_preprocessed/DatasetNNN_NAME/splits_final.json, or None when the variable is not set."""
    base = os.environ.get("nnUNet_preprocessed")
    return Path(base) / folder_name / "splits_final.json" if base else None


def _check_target(target: Path, splits: list | None, force: bool) -> None:
    """Refuse an existing target without force, an id used by another dataset name, or differing folds."""
    if os.path.lexists(target) and not force:
        raise ConversionError(f"{target} already exists; pass --force (force=True) to replace it")
    prefix = target.name.split("_")[0] + "_"
    folders = [target.parent] + [Path(os.environ[var]) for var in ("nnUNet_preprocessed", "nnUNet_results")
                                 if os.environ.get(var)]
    used = {path.name for folder in folders if folder.is_dir() for path in folder.glob(prefix + "*")}
    others = sorted(used - {target.name})
    if others:
        raise ConversionError(f"dataset id {target.name[7:10]} is already used by {', '.join(others)}; nnU-Net needs "
                              f"one name per id: choose another --dataset-id or remove those folders")
    copy = _preprocessed_splits(target.name)
    if splits and copy and copy.is_file() and not force and json.loads(copy.read_text()) != splits:
        raise ConversionError(f"{copy} holds other folds (nnU-Net's planner would refuse them); "
                              f"pass --force to replace it")


def _replace(new: Path, target: Path) -> None:
    """Rename the finished folder into place; an existing target is moved aside first and restored on failure."""
    if not os.path.lexists(target):
        new.rename(target)
        return
    old = new.with_name(new.name + ".old")
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)
        raise
    if old.is_symlink() or old.is_file():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def _kind(kind: str) -> _Kind:
    """The converter for `kind`, or an error listing the known ones."""
    if kind.lower() not in KINDS:
        raise ConversionError(f"unknown dataset {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind.lower()]


def convert_dataset(kind: str, source: Path, dataset_id: int, raw_folder: Path, name: str | None = None,
                    force: bool = False) -> Path:
    """Convert the `kind` download in `source` to raw_folder/DatasetNNN_NAME/ and return that folder."""
    spec = _kind(kind)
    name = name or spec.default_name
    target = Path(raw_folder) / _dataset_folder_name(dataset_id, name)
    cases = _validated_cases(kind.lower(), spec, Path(source))
    splits = _splits(cases)
    _check_target(target, splits, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()
    try:
        _write_dataset(spec, name, cases, splits, partial)
        _replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    copy = _preprocessed_splits(target.name)
    if splits and copy:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / "splits_final.json", copy)
    return target


KINDS: dict[str, _Kind] = {
    "busbra": _Kind("BUSBRA", "BUS-BRA breast ultrasound", "https://zenodo.org/records/8231412",
                    "Images/bus_XXXX-{l,r,s}.png, Masks/mask_XXXX-{l,r,s}.png, bus_data.csv (ID, Case, ...) "
                    "and optionally 5-fold-cv.csv (ID, kFold)", _list_busbra, LESION, "ultrasound", _write_2d),
    "busi": _Kind("BUSI", "BUSI breast ultrasound images", "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
                  "benign/, malignant/, normal/ with 'NAME (k).png' and its masks 'NAME (k)_mask.png', "
                  "'NAME (k)_mask_1.png', ...",
                  _list_busi, LESION, "ultrasound", _write_2d),
    "kvasir": _Kind("KvasirSEG", "Kvasir-SEG polyps", "https://datasets.simula.no/kvasir-seg/",
                    "images/NAME.jpg and masks/NAME.jpg", _list_kvasir, {"background": 0, "polyp": 1}, "endoscopy",
                    _write_2d),
    "isic2018": _Kind("ISIC2018", "ISIC 2018 Task 1 skin lesions", "https://challenge.isic-archive.com/data/#2018",
                      "ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg and "
                      "ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png (optionally the "
                      "Validation and Test pairs)", _list_isic2018, LESION, "dermoscopy", _write_2d),
    "tn3k": _Kind("TN3K", "TN3K thyroid nodule ultrasound",
                  "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
                  "trainval-image/NNNN.jpg, trainval-mask/NNNN.jpg and optionally test-image/, test-mask/",
                  _list_tn3k, {"background": 0, "nodule": 1}, "ultrasound", _write_2d),
    "btcv": _Kind("BTCV", "BTCV (Synapse) multi-organ abdominal CT",
                  "https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
                  "img/imgXXXX.nii.gz and label/labelXXXX.nii.gz (or RawData/Training/img|label)", _list_btcv,
                  {"background": 0, **{organ: k for k, organ in enumerate(BTCV_ORGANS, start=1)}}, "CT",
                  _copy_volumes, ".nii.gz"),
}


# ---------------------------------------------------------------- command line

def cmd_convert(args: argparse.Namespace) -> int:
    """`llm4seg convert`: convert, then print what was written and the next nnU-Net step."""
    raw_folder = args.raw_folder or os.environ.get("nnUNet_raw")
    if not raw_folder:
        raise ConversionError("no raw folder: pass --raw-folder DIR or set the environment variable nnUNet_raw")
    folder = convert_dataset(args.kind, args.source, args.dataset_id, Path(raw_folder), args.name, args.force)
    info = json.loads((folder / "dataset.json").read_text())
    folds = ", splits_final.json (5 patient-level folds)" if (folder / "splits_final.json").is_file() else ""
    print(f"wrote {folder}: {info['numTraining']} training and {info['numTest']} test cases, "
          f"channels {list(info['channel_names'].values())}{folds}")
    env = "" if os.environ.get("nnUNet_raw") == str(raw_folder) else f"nnUNet_raw={raw_folder} "
    print(f"next: {env}nnUNetv2_plan_and_preprocess -d {args.dataset_id} --verify_dataset_integrity")
    return 0


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `convert NAME SOURCE_DIR --dataset-id N [--name TEXT] [--force] [--raw-folder DIR]`."""
    parser = subparsers.add_parser(
        "convert", help="convert a public dataset download into nnU-Net's raw format",
        description="Convert a public dataset download into nnU-Net v2's raw format: DatasetNNN_NAME/ in the raw "
                    "folder, with splits_final.json where the source has patient-level folds.")
    parser.add_argument("kind", metavar="NAME", type=str.lower, choices=list(KINDS),
                        help="; ".join(f"{key}: {spec.title}" for key, spec in KINDS.items()))
    parser.add_argument("source", metavar="SOURCE_DIR", type=Path, help="the extracted download")
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1 to 999")
    parser.add_argument("--name", help="dataset name (default: BUSBRA, BUSI, KvasirSEG, ISIC2018, TN3K or BTCV)")
    parser.add_argument("--force", action="store_true", help="replace an existing DatasetNNN_NAME folder")
    parser.add_argument("--raw-folder", type=Path, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.set_defaults(handler=cmd_convert)
