"""Writing the nnU-Net raw dataset folder: target checks, images and labels, dataset.json, the atomic swap."""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from nnunetv2_llm4seg.case_metadata import FILE_NAME as METADATA_FILE, metadata_text
from nnunetv2_llm4seg.converters.layout import SAFE_NAME, Case, ConversionError, DatasetKind
from nnunetv2_llm4seg.converters.pixels import image_array, read_label

RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}


@dataclass(frozen=True)
class ImagePlan:
    """How a 2D dataset is written: all images RGB or all grayscale, and PNG or (for float and wide integer
    images, whose values only TIFF keeps) TIFF for images and labels alike."""

    colour: bool
    file_ending: str  # ".png" or ".tif"
    max_side: int | None = None  # shrink so that the longer side is at most this (None: keep the size)


def shrunk(array: np.ndarray, max_side: int | None, label: bool) -> np.ndarray:
    """The array resized (bilinear for images, nearest for labels) so that its longer side is at most
    `max_side`; smaller arrays and max_side None are returned unchanged."""
    height, width = array.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return array
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, Image.NEAREST if label else Image.BILINEAR))


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """`DatasetNNN_NAME`, refusing ids outside 1..999 and names that are not plain names."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    if not SAFE_NAME.fullmatch(name):
        raise ConversionError(f"dataset name {name!r}: use only letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def preprocessed_splits(folder_name: str) -> Path | None:
    """$nnUNet_preprocessed/DatasetNNN_NAME/splits_final.json, or None when the variable is not set."""
    base = os.environ.get("nnUNet_preprocessed")
    return Path(base) / folder_name / "splits_final.json" if base else None


def check_target(target: Path, splits: list | None, force: bool) -> None:
    """Refuse a raw folder that is a file, an existing target without force, an id used by another dataset name,
    or differing folds in the preprocessed folder."""
    blocking = next((parent for parent in (target.parent, *target.parent.parents) if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConversionError(f"raw folder {target.parent}: {blocking} is a file, not a folder; pass another "
                              f"--raw-folder (or set nnUNet_raw)")
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
    copy = preprocessed_splits(target.name)
    if splits and copy and copy.is_file() and not force and json.loads(copy.read_text()) != splits:
        raise ConversionError(f"{copy} holds other folds (nnU-Net's planner would refuse them); "
                              f"pass --force to replace it")


def _write_failure(exc: OSError, folder: Path) -> ConversionError:
    """A clean error for a failed write into `folder`, saying what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConversionError(f"no space left on the device of {folder} ({exc}); no partial output is left and "
                               f"nothing else changed: free some space or pass another --raw-folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ConversionError(f"cannot write into {folder}: permission denied or read-only ({exc}); no partial "
                               f"output is left: make it writable or pass another --raw-folder")
    return ConversionError(f"writing into {folder} failed ({exc}); no partial output is left and nothing else "
                           f"changed")


@contextmanager
def writing_into(folder: Path) -> Iterator[None]:
    """Turn OSErrors of writes into `folder` into clean ConversionErrors."""
    try:
        yield
    except OSError as exc:
        raise _write_failure(exc, folder) from None


def _outputs(folder: Path, case: Case, ending: str) -> tuple[Path, Path]:
    """Image and label paths of a case in the dataset folder."""
    split = "Ts" if case.test else "Tr"
    return (folder / f"images{split}" / f"{case.case_id}_0000{ending}",
            folder / f"labels{split}" / f"{case.case_id}{ending}")


def save_image(path: Path, array: np.ndarray) -> None:
    """Save a PNG with fast compression (level 1: about half the time of the default, same size here), or a TIFF
    with deflate compression; both keep the array's values and depth."""
    options = {"compress_level": 1} if path.suffix == ".png" else {"compression": "tiff_adobe_deflate"}
    Image.fromarray(array).save(path, **options)


def write_images(cases: list[Case], folder: Path, plan: ImagePlan) -> None:
    """Write every case's image and its 0/1 label in the plan's format."""
    for case in cases:
        image_path, label_path = _outputs(folder, case, plan.file_ending)
        image = image_array(case.image, plan.colour, keep_wide=plan.file_ending == ".tif")
        save_image(image_path, shrunk(image, plan.max_side, label=False))
        save_image(label_path, shrunk(read_label(case.masks).astype(np.uint8), plan.max_side, label=True))


def copy_volumes(cases: list[Case], folder: Path) -> None:
    """Copy NIfTI images and labels as they are (geometry kept)."""
    for case in cases:
        image_path, label_path = _outputs(folder, case, ".nii.gz")
        shutil.copyfile(case.image, image_path)
        shutil.copyfile(case.masks[0], label_path)


def dataset_json(kind: DatasetKind, name: str, channels: dict[str, str], cases: list[Case], ending: str) -> dict:
    """nnU-Net v2 dataset.json content."""
    reader = {} if kind.volumes else {"overwrite_image_reader_writer": "NaturalImage2DIO"}
    return {"name": name, "description": kind.title, "reference": kind.url, "channel_names": channels,
            "labels": kind.labels, "numTraining": sum(not case.test for case in cases),
            "numTest": sum(case.test for case in cases), "file_ending": ending, **reader,
            "converted_by": "nnunetv2-llm4seg (llm4seg convert)"}


def save_json(path: Path, content: object) -> None:
    """Write JSON with indentation."""
    path.write_text(json.dumps(content, indent=2) + "\n")


def write_dataset(kind: DatasetKind, name: str, cases: list[Case], plan: ImagePlan | None, splits: list | None,
                  folder: Path) -> None:
    """Write images, labels, dataset.json, case_metadata.csv (of the training cases: patient, device, category
    where the source has them) and splits_final.json into `folder` (plan None: NIfTI volumes)."""
    for split in ("Tr", "Ts") if any(case.test for case in cases) else ("Tr",):
        (folder / f"images{split}").mkdir()
        (folder / f"labels{split}").mkdir()
    if plan is None:
        copy_volumes(cases, folder)
        channels, ending = {"0": kind.channel}, ".nii.gz"
    else:
        write_images(cases, folder, plan)
        channels, ending = (dict(RGB_CHANNELS) if plan.colour else {"0": kind.channel}), plan.file_ending
    save_json(folder / "dataset.json", dataset_json(kind, name, channels, cases, ending))
    metadata = metadata_text({case.case_id: {"patient": case.patient, "device": case.device,
                                             "category": case.category} for case in cases if not case.test})
    if metadata is not None:
        (folder / METADATA_FILE).write_text(metadata)
    if splits:
        save_json(folder / "splits_final.json", splits)


def _swap(new: Path, target: Path) -> None:
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


def remove_partial_folders(target: Path) -> None:
    """Remove the hidden folders that killed conversions into `target` left behind (write_atomically names them
    .NAME.<id>.partial; nothing else matches)."""
    for partial in target.parent.glob(f".{target.name}.*.partial") if target.parent.is_dir() else ():
        shutil.rmtree(partial, ignore_errors=True)


def write_atomically(kind: DatasetKind, name: str, cases: list[Case], plan: ImagePlan | None, splits: list | None,
                     target: Path) -> None:
    """Write the dataset into a hidden folder next to `target`, then swap it into place; any error removes the
    partial folder and leaves `target` as it was."""
    with writing_into(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        partial.mkdir()
    try:
        with writing_into(target.parent):
            write_dataset(kind, name, cases, plan, splits, partial)
            _swap(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    copy = preprocessed_splits(target.name)
    if splits and copy:
        with writing_into(copy.parent):
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target / "splits_final.json", copy)
