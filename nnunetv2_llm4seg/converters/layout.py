"""What every converter shares about a source download: its cases, its folders and files, its CSV tables."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from nnunetv2_llm4seg.errors import LLM4SegError

SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ConversionError(LLM4SegError, ValueError):
    """A dataset cannot be converted (layout, masks, sizes, names) or its target folder is taken."""


class LayoutError(ConversionError):
    """The source does not look like the expected download; the message gets the expected layout appended."""


@dataclass(frozen=True)
class Case:
    """One image and its mask file(s); test cases go to imagesTs/labelsTs, patient and fold define the folds,
    category is the source's own class of the image (benign, malignant, normal), device the scanner or centre
    that acquired it."""

    case_id: str
    image: Path
    masks: tuple[Path, ...]
    test: bool = False
    patient: str | None = None
    fold: int | None = None
    category: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class DatasetKind:
    """How to list one public dataset's cases and describe them in dataset.json.

    `excludes_normal`: cases of the category "normal" (BUSI's images without lesion) are left out unless asked for;
    `volumes` datasets are NIfTI files copied as they are, all others are 2D images written for NaturalImage2DIO.
    """

    default_name: str
    title: str
    url: str
    layout: str
    list_cases: Callable[[Path], list[Case]]
    labels: dict[str, int]
    channel: str  # channel name of grayscale images (colour images get R, G, B)
    volumes: bool = False
    excludes_normal: bool = False


def listing(names: list[str], limit: int = 10) -> str:
    """The first `limit` names, then how many more there are."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def require_dir(folder: Path) -> Path:
    """`folder`, or a layout error if it is missing or is a file."""
    if folder.is_file():
        raise LayoutError(f"{folder} is a file where a folder is expected")
    if not folder.is_dir():
        raise LayoutError(f"missing folder {folder}")
    return folder


def stem(path: Path) -> str:
    """File name without its extension (`.nii.gz` counts as one)."""
    return path.name[:-7] if path.name.lower().endswith(".nii.gz") else path.stem


def files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Visible files of `folder` ending with one of `suffixes` (any case), sorted."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(suffixes))


def masks_by_image(folder: Path, image_stem: Callable[[str], str | None],
                   suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, list[Path]]:
    """Mask files of `folder` keyed by the stem of their image (files mapped to None are skipped)."""
    masks: dict[str, list[Path]] = {}
    for path in files(folder, suffixes):
        key = image_stem(stem(path))
        if key is not None:
            masks.setdefault(key, []).append(path)
    return masks


def case_id(path: Path) -> str:
    """nnU-Net-safe case id from a file name: every run of other characters than letters, digits, '_' and '-'
    becomes '_', leading and trailing '_' and '-' go (`benign (1)` -> `benign_1`)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem(path)).strip("_-")
    if not safe:
        raise ConversionError(f"cannot make a case id from the file name {path.name!r}: rename the file so that "
                              f"it holds letters or digits")
    return safe


def pair(images: Iterable[Path], masks: dict[str, list[Path]], test: bool = False,
         category: str | None = None) -> list[Case]:
    """One case per image with its mask files; refuses images without a mask and masks without an image, naming
    them."""
    images = list(images)
    image_stems = {stem(image) for image in images}
    orphans = sorted(path.name for key, paths in masks.items() if key not in image_stems for path in paths)
    if orphans:
        raise ConversionError(f"{len(orphans)} mask(s) have no image: {listing(orphans)}; add their images or "
                              "remove these masks from the download's mask folder")
    cases, missing = [], []
    for image in images:
        if masks.get(stem(image)):
            cases.append(Case(case_id(image), image, tuple(masks[stem(image)]), test, category=category))
        else:
            missing.append(f"{image.parent.name}/{image.name}")
    if missing:
        raise ConversionError(f"{len(missing)} image(s) have no mask: {listing(missing)}")
    return cases


def folder_pairs(source: Path, pairs: Iterable[tuple[str, str, bool]], image_stem: Callable[[str], str | None] = str,
                 suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Case]:
    """Cases from (images folder, masks folder, is test) pairs; a test pair whose images folder is absent is skipped."""
    cases = []
    for images, masks, test in pairs:
        if test and not (source / images).exists():
            continue
        mask_files = masks_by_image(require_dir(source / masks), image_stem, suffixes)
        cases += pair(files(require_dir(source / images), suffixes), mask_files, test)
    return cases


def read_column(path: Path, column: str, image_id: Callable[[str], str] = str) -> dict[str, str]:
    """image_id(ID) -> `column` of a CSV file; refuses IDs that are not plain names (path separators, '..',
    spaces)."""
    if not path.is_file():
        raise LayoutError(f"missing file {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"ID", column} <= set(reader.fieldnames or ()):
            raise ConversionError(f"{path} needs the columns ID and {column}; found {reader.fieldnames}")
        rows = {image_id((row["ID"] or "").strip()): (row[column] or "").strip() for row in reader}
    unsafe = [repr(name) for name in rows if not SAFE_NAME.fullmatch(name)]
    if unsafe:
        raise ConversionError(f"{path}: IDs may only hold letters, digits, '_' and '-'; refused {listing(unsafe)}")
    return rows


def has_column(path: Path, column: str) -> bool:
    """Whether the CSV file's header names `column` (the file itself is checked by read_column)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return column in (next(csv.reader(handle), None) or ())


def require_rows(cases: list[Case], table: dict[str, str], where: str) -> dict[str, str]:
    """`table` (image stem -> value), refusing cases whose image has no value there, naming them."""
    unlisted = [case.image.name for case in cases if not table.get(case.image.stem)]
    if unlisted:
        raise ConversionError(f"{len(unlisted)} image(s) are missing from {where}: {listing(unlisted)}")
    return table
