"""The conversion: list a download's cases, check all of them (layout, names, sizes, every image and mask), and
only then write the nnU-Net raw dataset, atomically."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_llm4seg.converters import btcv, busbra, busi, isic2018, kvasir, tn3k, tnscui
from nnunetv2_llm4seg.converters.folds import patient_splits
from nnunetv2_llm4seg.converters.layout import Case, ConversionError, DatasetKind, LayoutError, listing
from nnunetv2_llm4seg.converters.output import (ImagePlan, check_target, dataset_folder_name, remove_partial_folders,
                                                write_atomically)
from nnunetv2_llm4seg.converters.pixels import image_size, inspect_image, read_label

MIN_SIDE = 16
KINDS: dict[str, DatasetKind] = {"busbra": busbra.KIND, "busi": busi.KIND, "kvasir": kvasir.KIND,
                                 "isic2018": isic2018.KIND, "tn3k": tn3k.KIND, "tnscui": tnscui.KIND,
                                 "btcv": btcv.KIND}


@dataclass(frozen=True)
class Conversion:
    """What a conversion wrote, and what its user should know about it (left-out images, empty masks, ...)."""

    folder: Path
    training: int
    test: int
    channels: tuple[str, ...]
    splits: bool
    notes: tuple[str, ...]


def dataset_kind(name: str) -> DatasetKind:
    """The converter called `name` (any case), or an error listing the known ones."""
    if name.lower() not in KINDS:
        raise ConversionError(f"unknown dataset {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name.lower()]


def _size(path: Path) -> tuple[int, ...]:
    """Image size read from the file header (PIL for 2D, SimpleITK for NIfTI)."""
    if not path.name.lower().endswith(".nii.gz"):
        return image_size(path)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ConversionError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}. The file is truncated, "
                              f"corrupted or not NIfTI: download it again or remove it from the source") from None
    return tuple(reader.GetSize())


def _check_sizes(cases: list[Case]) -> None:
    """Refuse cases whose mask size differs from the image size, naming them."""
    bad = []
    for case in cases:
        size = _size(case.image)
        for mask in case.masks:
            if (mask_size := _size(mask)) != size:
                bad.append(f"{case.image.name} {'x'.join(map(str, size))} vs {mask.name} "
                           f"{'x'.join(map(str, mask_size))}")
    if bad:
        raise ConversionError(f"{len(bad)} mask(s) differ in size from their image: {listing(bad)}")


def _check_unique(cases: list[Case]) -> None:
    """Refuse file names that map to the same case id within a split."""
    counts = Counter((case.test, case.case_id) for case in cases)
    clashes = [f"{case.image.name} -> {case.case_id}" for case in cases if counts[case.test, case.case_id] > 1]
    if clashes:
        raise ConversionError(f"file names that map to the same case id: {listing(clashes)}")


def _listed_cases(name: str, kind: DatasetKind, source: Path) -> list[Case]:
    """All cases of the source; layout errors get the expected layout appended."""
    try:
        if source.is_file():
            raise LayoutError(f"{source} is a file; pass the folder that holds the extracted download")
        if not source.is_dir():
            raise LayoutError(f"{source} is not a folder")
        cases = kind.list_cases(source)
        if all(case.test for case in cases):
            raise LayoutError(f"no training images found in {source}")
    except LayoutError as exc:
        raise ConversionError(f"{exc}. A {name} source ({kind.title}, {kind.url}) holds {kind.layout}") from None
    return cases


def _selected(kind: DatasetKind, cases: list[Case], include_normal: bool) -> tuple[list[Case], list[str]]:
    """The cases to convert (BUSI's normal images only with include_normal) and a note on what was left out."""
    if include_normal and not kind.excludes_normal:
        raise ConversionError(f"--include-normal (include_normal=True) applies to busi only; {kind.title} has no "
                              f"normal images left out")
    if not kind.excludes_normal or include_normal:
        return cases, []
    kept = [case for case in cases if case.category != "normal"]
    left_out = len(cases) - len(kept)
    if not any(not case.test for case in kept):
        raise ConversionError(f"all {left_out} images of the source are normal (no lesion): there is nothing to "
                              f"segment; pass --include-normal to convert them anyway, next to benign/ and malignant/")
    note = [f"excluded {left_out} normal images (no lesion); --include-normal keeps them"] if left_out else []
    return kept, note


MOSTLY_LESION = 0.5  # masks with more lesion than this are reported: perhaps a dark lesion on a light background


def _image_plan(cases: list[Case], source: Path, max_side: int | None) -> tuple[ImagePlan, list[str]]:
    """Decode every image and mask once: colour or not, depth, empty masks; refuses what cannot be kept."""
    facts = {case: inspect_image(case.image) for case in cases}
    lesion = {case.case_id: float(read_label(case.masks).mean()) for case in cases}
    empty = [case_id for case_id, fraction in lesion.items() if fraction == 0]
    mostly_lesion = [case_id for case_id, fraction in lesion.items() if fraction > MOSTLY_LESION]
    colour = [case.image.name for case in cases if facts[case].colour]
    deep = [case.image.name for case in cases if facts[case].high_depth]
    if colour and deep:
        raise ConversionError(f"the source mixes colour images ({listing(colour, 3)}) with 16-bit or float "
                              f"grayscale ones ({listing(deep, 3)}); nnU-Net needs one format per dataset: "
                              f"convert the grayscale ones to 8 bits or remove them")
    if len(empty) == len(cases):
        raise ConversionError(f"all {len(cases)} masks in {source} are empty (no lesion pixel; JPEG masks count "
                              f"as lesion above 127): check that the masks folder holds the lesion masks")
    wide = any(fact.wide for fact in facts.values())
    notes = [f"{len(empty)} of {len(cases)} masks empty (no lesion)"]
    if mostly_lesion:
        notes.append(f"warning: {len(mostly_lesion)} mask(s) are more than {MOSTLY_LESION:.0%} lesion "
                     f"({listing(mostly_lesion, 3)}): if they show the lesion dark on a light background, invert "
                     "them (lesion light, background 0) and convert again with --force")
    if wide:
        notes.append("float or 32-bit images kept as TIFF (.tif), values unchanged")
    elif deep:
        notes.append(f"{len(deep)} 16-bit image(s) kept as 16-bit PNG, values unchanged")
    if max_side is not None:
        notes.append(f"images shrunk so that the longer side is at most {max_side} px (bilinear; masks nearest)")
    return ImagePlan(colour=bool(colour), file_ending=".tif" if wide else ".png", max_side=max_side), notes


def _check_max_side(kind: DatasetKind, max_side: int | None) -> None:
    """max_side shrinks 2D images only, to at least 16 px (nnU-Net's smallest useful patch)."""
    if max_side is None:
        return
    if kind.volumes:
        raise ConversionError(f"--max-side (max_side) applies to 2D images; {kind.title} is a 3D dataset whose "
                              "spacing nnU-Net resamples itself: leave it out")
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < MIN_SIDE:
        raise ConversionError(f"--max-side must be an integer of at least {MIN_SIDE} px, got {max_side!r}")


def _category_note(cases: list[Case]) -> list[str]:
    """How many images of each category (benign, malignant, ...) were converted."""
    counts = Counter(case.category for case in cases if case.category)
    return [", ".join(f"{count} {category}" for category, count in sorted(counts.items()))] if counts else []


def convert(kind_name: str, source: Path, dataset_id: int, raw_folder: Path, name: str | None = None,
            force: bool = False, include_normal: bool = False, max_side: int | None = None) -> Conversion:
    """Convert the `kind_name` download in `source` to raw_folder/DatasetNNN_NAME/; every check runs before the
    first file is written. `max_side` shrinks 2D images (and masks) whose longer side is larger."""
    kind = dataset_kind(kind_name)
    _check_max_side(kind, max_side)
    name = name or kind.default_name
    target = Path(raw_folder) / dataset_folder_name(dataset_id, name)
    source = Path(source)
    cases = _listed_cases(kind_name.lower(), kind, source)
    _check_unique(cases)
    _check_sizes(cases)
    cases, notes = _selected(kind, cases, include_normal)
    plan, image_notes = (None, []) if kind.volumes else _image_plan(cases, source, max_side)
    splits = patient_splits(cases)
    check_target(target, splits, force)
    remove_partial_folders(target)
    write_atomically(kind, name, cases, plan, splits, target)
    channels = ("R", "G", "B") if plan and plan.colour else (kind.channel,)
    return Conversion(target, sum(not case.test for case in cases), sum(case.test for case in cases), channels,
                      splits is not None, tuple(notes + _category_note(cases) + image_notes))


def convert_dataset(kind_name: str, source: Path, dataset_id: int, raw_folder: Path, name: str | None = None,
                    force: bool = False, include_normal: bool = False, max_side: int | None = None) -> Path:
    """`convert`, returning only the written DatasetNNN_NAME folder."""
    return convert(kind_name, source, dataset_id, raw_folder, name, force, include_normal, max_side).folder
