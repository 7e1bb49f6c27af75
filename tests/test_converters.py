"""Dataset converters: real BUS-BRA / Kvasir-SEG subsets, small fixtures laid out like the downloads, and refusals."""
from __future__ import annotations

import argparse
import csv
import errno
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunetv2_llm4seg import converters
from nnunetv2_llm4seg.case_metadata import read_case_metadata
from nnunetv2_llm4seg.converters import busbra
from nnunetv2_llm4seg.converters import output, pixels
from nnunetv2_llm4seg.converters import ConversionError, add_convert_parser, convert_dataset
from nnunetv2_llm4seg.errors import LLM4SegError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_nnunet_env(monkeypatch):
    """Tests decide themselves which nnU-Net folders exist."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- fixture helpers

def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _gray(seed: int, shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _colour(seed: int, shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _box(shape=(24, 32), box=(4, 12, 6, 18), value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[box[0]:box[1], box[2]:box[3]] = value
    return mask


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _busbra(root: Path, patients: dict[int, str], rows: list[dict] | None = None, folds: dict[str, int] | None = None,
            devices: dict[int, str] | None = None):
    """BUS-BRA layout: patient number -> sides ('lr' = bus_000N-l and bus_000N-r); `devices`: patient -> Device
    column (left out without)."""
    ids = []
    for patient, sides in patients.items():
        for side in sides:
            ids.append((f"bus_{patient:04d}-{side}", patient))
            _save(root / "Images" / f"{ids[-1][0]}.png", _gray(patient))
            _save(root / "Masks" / f"mask_{patient:04d}-{side}.png", _box().astype(bool))  # mode "1" like BUS-BRA
    rows = rows if rows is not None else [{"ID": i, "Case": p, "Device": (devices or {}).get(p)} for i, p in ids]
    columns = ["ID", "Case", "Histology", "Pathology", "BIRADS"] + (["Device"] if devices else [])
    with (root / "bus_data.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({"Histology": "x", "Pathology": "benign", "BIRADS": 3, **row} for row in rows)
    if folds:
        (root / "5-fold-cv.csv").write_text("ID,kFold\n" + "".join(f"{i},{folds[i]}\n" for i in folds))
    return root


def _kvasir(root: Path, names=("a", "b", "c"), masks=True) -> Path:
    for k, name in enumerate(names):
        _save(root / "images" / f"{name}.jpg", _colour(k), quality=95)
        if masks:
            _save(root / "masks" / f"{name}.jpg", np.repeat(_box()[..., None], 3, -1), quality=75)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return root


def _nifti(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _btcv(root: Path, cases=(1, 2)) -> Path:
    rng = np.random.default_rng(0)
    for case in cases:
        _nifti(root / "img" / f"img{case:04d}.nii.gz", rng.integers(-1000, 1000, (6, 10, 8)).astype(np.int16))
        labels = (np.arange(6 * 10 * 8) % 14).reshape(6, 10, 8).astype(np.uint8)  # all 13 organs
        _nifti(root / "label" / f"label{case:04d}.nii.gz", labels)
    return root


def _verify(folder: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


def _channels(path: Path) -> int:
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    return NaturalImage2DIO().read_images([str(path)])[0].shape[0]


def _patient_checks(splits: list[dict], patient_of: dict[str, str]) -> None:
    """5 folds, val folds partition all cases, train = the rest, each patient in exactly one val fold."""
    assert len(splits) == 5
    vals = [set(fold["val"]) for fold in splits]
    assert sum(map(len, vals)) == len(patient_of) and set().union(*vals) == set(patient_of)
    for fold, val in zip(splits, vals):
        assert set(fold["train"]) == set(patient_of) - val
    fold_of_patient: dict[str, set[int]] = {}
    for k, val in enumerate(vals):
        for case in val:
            fold_of_patient.setdefault(patient_of[case], set()).add(k)
    assert all(len(folds) == 1 for folds in fold_of_patient.values())


# ---------------------------------------------------------------- real data

def _real(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"REAL DATA ABSENT: {folder} not found (expected ../shared/data/{name} next to the repo); "
                    f"this test of the {name} converter did not run")
    return folder


@pytest.mark.realdata
def test_busbra_real_data_patient_folds(tmp_path, monkeypatch):
    source = _real("busbra")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    start = time.perf_counter()
    folder = convert_dataset("busbra", source, 101, tmp_path / "raw")
    print(f"busbra: 752 images converted in {time.perf_counter() - start:.1f} s")
    assert folder == tmp_path / "raw" / "Dataset101_BUSBRA"
    assert len(list((folder / "imagesTr").iterdir())) == len(list((folder / "labelsTr").iterdir())) == 752
    info = json.loads((folder / "dataset.json").read_text())
    assert info["numTraining"] == 752 and info["channel_names"] == {"0": "ultrasound"}
    with (source / "bus_data.csv").open(newline="") as handle:
        patient_of = {row["ID"]: row["Case"] for row in csv.DictReader(handle)}
    splits = json.loads((folder / "splits_final.json").read_text())
    _patient_checks(splits, patient_of)
    copy = tmp_path / "pre" / folder.name / "splits_final.json"
    assert copy.read_text() == (folder / "splits_final.json").read_text()
    assert _channels(folder / "imagesTr" / "bus_0001-l_0000.png") == 1
    assert set(np.unique(_read(folder / "labelsTr" / "bus_0001-l.png"))) == {0, 1}


@pytest.mark.realdata
def test_busbra_real_data_metadata_has_patients_and_scanners(tmp_path):
    source = _real("busbra")
    with (source / "bus_data.csv").open(newline="") as handle:
        table = {row["ID"]: (row["Case"], row["Device"]) for row in csv.DictReader(handle)}
    assert {(c.case_id, c.patient, c.device) for c in busbra.list_cases(source)} == \
        {(case_id, patient, device) for case_id, (patient, device) in table.items()}
    assert Counter(device for _, device in table.values()) == {
        "GE Logiq 7 @10-14MHz": 364, "GE Logiq 5 @10-12MHz": 324, "Toshiba Aplio 300 @12-14 MHz": 53,
        "U-Systems @10-14MHz": 11}


@pytest.mark.realdata
def test_kvasir_real_data_rgb(tmp_path):
    source = _real("kvasir-seg")
    start = time.perf_counter()
    folder = convert_dataset("kvasir", source, 102, tmp_path)
    print(f"kvasir: 401 images converted in {time.perf_counter() - start:.1f} s")
    info = json.loads((folder / "dataset.json").read_text())
    assert info["numTraining"] == 401 and info["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert info["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert not (folder / "splits_final.json").exists() and read_case_metadata(folder) == {}  # no patients
    image = sorted((folder / "imagesTr").iterdir())[0]
    assert _channels(image) == 3
    label = _read(folder / "labelsTr" / image.name.replace("_0000", ""))
    assert set(np.unique(label)) == {0, 1} and label.shape == (256, 256)


# ---------------------------------------------------------------- fixtures laid out like the downloads

def test_busbra_fixture_metadata_keeps_patient_and_device(tmp_path):
    patients = {1: "lr", 2: "s", 3: "l", 4: "r", 5: "s"}
    devices = {1: "GE Logiq 7", 2: "GE Logiq 5", 3: "GE Logiq 7", 4: "Toshiba", 5: "GE Logiq 5"}
    folder = convert_dataset("busbra", _busbra(tmp_path / "src", patients, devices=devices), 8, tmp_path / "raw")
    assert read_case_metadata(folder) == {f"bus_{p:04d}-{side}": {"patient": str(p), "device": devices[p]}
                                          for p, sides in patients.items() for side in sides}
    assert (folder / "case_metadata.csv").read_text().splitlines()[:2] == ["case,patient,device",
                                                                          "bus_0001-l,1,GE Logiq 7"]


def test_busbra_fixture_drawn_and_official_folds(tmp_path, monkeypatch):
    patients = {1: "lr", 2: "s", 3: "lrs", 4: "l", 5: "r", 6: "lr", 7: "s"}
    source = _busbra(tmp_path / "src", patients)
    patient_of = {f"bus_{p:04d}-{s}": str(p) for p, sides in patients.items() for s in sides}
    folder = convert_dataset("busbra", source, 5, tmp_path / "raw")
    _patient_checks(json.loads((folder / "splits_final.json").read_text()), patient_of)
    assert set(np.unique(_read(folder / "labelsTr" / "bus_0003-s.png"))) == {0, 1}  # 1-bit mask binarised
    assert read_case_metadata(folder) == {case: {"patient": patient} for case, patient in patient_of.items()}

    official = {case: (int(patient_of[case]) % 5) + 1 for case in patient_of}
    source = _busbra(tmp_path / "src2", patients, folds=official)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    folder = convert_dataset("busbra", source, 6, tmp_path / "raw")
    splits = json.loads((folder / "splits_final.json").read_text())
    assert [sorted(f["val"]) for f in splits] == [sorted(c for c, k in official.items() if k == fold)
                                                  for fold in range(1, 6)]
    copy = tmp_path / "pre" / folder.name / "splits_final.json"
    assert json.loads(copy.read_text()) == splits
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import _maybe_copy_splits_file

    _maybe_copy_splits_file(str(folder / "splits_final.json"), str(copy))  # nnU-Net's planner accepts the copy


def test_busbra_patient_split_over_official_folds_refused(tmp_path):
    source = _busbra(tmp_path / "src", {1: "lr", 2: "s", 3: "l", 4: "r", 5: "s"},
                     folds={"bus_0001-l": 1, "bus_0001-r": 2, "bus_0002-s": 3, "bus_0003-l": 4, "bus_0004-r": 5,
                            "bus_0005-s": 1})
    with pytest.raises(ConversionError, match="patient.*1.*several folds"):
        convert_dataset("busbra", source, 5, tmp_path / "raw")


def _busi(source: Path) -> Path:
    _save(source / "benign" / "benign (1).png", np.repeat(_gray(1)[..., None], 3, -1))  # gray stored as RGB
    _save(source / "benign" / "benign (1)_mask.png", _box(box=(2, 6, 2, 6)))
    _save(source / "benign" / "benign (1)_mask_1.png", _box(box=(10, 20, 20, 30)))
    _save(source / "malignant" / "malignant (1).png", _gray(2))
    _save(source / "malignant" / "malignant (1)_mask.png", _box())
    for k in (1, 2):
        _save(source / "normal" / f"normal ({k}).png", _gray(2 + k))
        _save(source / "normal" / f"normal ({k})_mask.png", np.zeros((24, 32), np.uint8))
    return source


def test_max_side_shrinks_images_bilinear_and_masks_nearest(tmp_path):
    source = _kvasir(tmp_path / "kvasir")  # 24 x 32 RGB images with a box mask
    folder = convert_dataset("kvasir", source, 7, tmp_path / "raw", max_side=16)
    image, label = _read(folder / "imagesTr" / "a_0000.png"), _read(folder / "labelsTr" / "a.png")
    assert image.shape == (12, 16, 3) and label.shape == (12, 16)
    assert set(np.unique(label)) == {0, 1}  # nearest: still a 0/1 label
    expected = np.asarray(Image.fromarray(_box()).resize((16, 12), Image.NEAREST)) > 127
    np.testing.assert_array_equal(label.astype(bool), expected)
    _verify(folder)
    kept = convert_dataset("kvasir", source, 8, tmp_path / "raw", max_side=64)  # already smaller: unchanged
    assert _read(kept / "imagesTr" / "a_0000.png").shape == (24, 32, 3)


def test_busi_leaves_out_normal_merges_masks_and_is_grayscale(tmp_path):
    source = _busi(tmp_path / "Dataset_BUSI_with_GT")
    done = converters.convert("busi", source, 7, tmp_path / "raw")
    folder = done.folder
    assert folder.name == "Dataset007_BUSI" and not (folder / "splits_final.json").exists()
    assert done.notes[:3] == ("excluded 2 normal images (no lesion); --include-normal keeps them",
                              "1 benign, 1 malignant", "0 of 2 masks empty (no lesion)")
    info = json.loads((folder / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "ultrasound"} and info["numTraining"] == 2
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["benign_1.png", "malignant_1.png"]
    merged = _read(folder / "labelsTr" / "benign_1.png")
    assert merged.sum() == 16 + 100 and merged[3, 3] == merged[15, 25] == 1
    assert _channels(folder / "imagesTr" / "benign_1_0000.png") == 1
    _verify(folder)

    done = converters.convert("busi", source, 8, tmp_path / "raw", include_normal=True)
    assert "2 of 4 masks empty (no lesion)" in done.notes and done.training == 4
    assert _read(done.folder / "labelsTr" / "normal_2.png").max() == 0
    _verify(done.folder)


def _tnscui(root: Path, categories: dict[int, str]) -> Path:
    """TN-SCUI 2020 training layout: image/N.PNG, mask/N.PNG (0/255), train.csv with ID = file name and CATE."""
    for number in categories:
        _save(root / "image" / f"{number}.PNG", _gray(number))
        _save(root / "mask" / f"{number}.PNG", _box(box=(2 + number, 12, 6, 18)))
    (root / "train.csv").write_text("ID,CATE\n" + "".join(f"{n}.PNG,{c}\n" for n, c in categories.items()))
    return root


def test_tnscui_layout_categories_and_nnunet_integrity(tmp_path):
    source = _tnscui(tmp_path / "TNSCUI2020_train", {1: "0", 2: "1", 3: "1", 10: "0"})
    done = converters.convert("TNSCUI", source, 19, tmp_path / "raw")
    assert done.folder.name == "Dataset019_TNSCUI" and done.training == 4 and done.channels == ("ultrasound",)
    assert "2 benign, 2 malignant" in done.notes
    info = json.loads((done.folder / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "nodule": 1} and info["file_ending"] == ".png"
    assert sorted(p.name for p in (done.folder / "imagesTr").iterdir()) == [f"{n}_0000.png" for n in (10, 1, 2, 3)]
    assert np.array_equal(_read(done.folder / "labelsTr" / "3.png"), _box(box=(5, 12, 6, 18), value=1))
    _verify(done.folder)


def test_isic2018_rgb_test_split_and_mask_variants(tmp_path):
    source = tmp_path / "isic"
    train_in, train_gt = source / "ISIC2018_Task1-2_Training_Input", source / "ISIC2018_Task1_Training_GroundTruth"
    _save(train_in / "ISIC_0000000.jpg", _colour(0), quality=95)
    _save(train_in / "ISIC_0000001.jpg", np.repeat(_gray(1)[..., None], 3, -1), quality=95)  # gray among colour
    (train_in / "ATTRIBUTION.txt").write_text("not an image")
    _save(train_gt / "ISIC_0000000_segmentation.png", _box())
    palette = Image.fromarray(_box(value=1)).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 = red
    palette.save(train_gt / "ISIC_0000001_segmentation.png")
    _save(source / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0000002.jpg", _colour(2), quality=95)
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the box is opaque
    rgba[4:12, 6:18, 3] = 255
    _save(source / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000002_segmentation.png", rgba)
    folder = convert_dataset("isic2018", source, 8, tmp_path / "raw")
    info = json.loads((folder / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "R", "1": "G", "2": "B"} and (info["numTraining"], info["numTest"]) == (2, 1)
    assert all(_channels(path) == 3 for path in (folder / "imagesTr").iterdir())  # mixed dataset made consistent
    expected = _box(value=1)
    for label in ("labelsTr/ISIC_0000000.png", "labelsTr/ISIC_0000001.png", "labelsTs/ISIC_0000002.png"):
        assert np.array_equal(_read(folder / label), expected), label
    assert _channels(folder / "imagesTs" / "ISIC_0000002_0000.png") == 3
    _verify(folder)


def test_tn3k_jpeg_gray_and_test_split(tmp_path):
    source = tmp_path / "tn3k"
    for part, count in (("trainval", 3), ("test", 2)):
        for k in range(count):
            _save(source / f"{part}-image" / f"{k:04d}.jpg", np.repeat(_gray(k)[..., None], 3, -1), quality=90)
            _save(source / f"{part}-mask" / f"{k:04d}.jpg", _box(), quality=75)
    folder = convert_dataset("tn3k", source, 9, tmp_path / "raw")
    info = json.loads((folder / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "ultrasound"} and (info["numTraining"], info["numTest"]) == (3, 2)
    assert info["labels"] == {"background": 0, "nodule": 1}
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["0000.png", "0001.png"]
    assert np.array_equal(_read(folder / "labelsTr" / "0002.png"), _box(value=1))
    assert _read(folder / "imagesTr" / "0000_0000.png").ndim == 2


@pytest.mark.parametrize("nesting", ["", "RawData/Training"])
def test_btcv_copies_nifti_with_geometry(tmp_path, nesting):
    source = tmp_path / "btcv"
    _btcv(source / nesting if nesting else source)
    folder = convert_dataset("btcv", source, 10, tmp_path / "raw")
    info = json.loads((folder / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "CT"} and info["file_ending"] == ".nii.gz" and info["numTraining"] == 2
    assert len(info["labels"]) == 14 and info["labels"]["spleen"] == 1 and info["labels"]["left adrenal gland"] == 13
    image = sitk.ReadImage(str(folder / "imagesTr" / "img0001_0000.nii.gz"))
    assert image.GetSpacing() == pytest.approx((0.8, 0.7, 2.5)) and image.GetOrigin() == pytest.approx((-10, 5, 30))
    assert (folder / "labelsTr" / "img0002.nii.gz").is_file()
    if not nesting:
        _verify(folder)


def _palette(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([c for colour in colours for c in colour] + [0] * (768 - 3 * len(colours)))
    return img


def _coloured(box: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    rgb = np.zeros((*box.shape, 3), np.uint8)
    rgb[box] = colour
    return rgb


def _masks() -> dict[str, Image.Image]:
    """Mask files that must all give the box as lesion: one per storage of a binary mask."""
    box = _box(value=1).astype(bool)
    noisy = np.where(box, 200, 40).astype(np.uint8)
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the box is opaque
    rgba[box, 3] = 255
    return {"L 0/255": Image.fromarray(box.astype(np.uint8) * 255), "1-bit": Image.fromarray(box),
            "L 0/1": Image.fromarray(box.astype(np.uint8)), "L 0/100": Image.fromarray(box.astype(np.uint8) * 100),
            "L 40/200": Image.fromarray(noisy), "RGB red": Image.fromarray(_coloured(box, (255, 0, 0))),
            "RGB dark blue": Image.fromarray(_coloured(box, (0, 0, 60))),
            "RGBA opaque box": Image.fromarray(rgba), "P from L": Image.fromarray(noisy).convert("P"),
            "P dark lesion": _palette(box, [(0, 0, 0), (0, 0, 90)]),
            "P index 0 white": _palette(box, [(255, 255, 255), (0, 0, 0)]),
            "P index 1 unused": _palette(box * 2 + 3 * ~box, [(9, 9, 9), (1, 1, 1), (200, 0, 0), (5, 5, 5)]),
            "I;16 0/1000": Image.fromarray(box.astype(np.uint16) * 1000),
            "F 0/0.5": Image.fromarray(box.astype(np.float32) / 2)}


@pytest.mark.parametrize("kind", list(_masks()))
def test_binary_masks_keep_their_lesion(tmp_path, kind):
    path = tmp_path / ("mask.tif" if kind.startswith("F") else "mask.png")
    _masks()[kind].save(path)
    assert np.array_equal(pixels.read_mask(path), _box(value=1).astype(bool))


@pytest.mark.parametrize("values, quality, message", [
    ((0, 1, 2), None, r"holds 3 levels \(0, 1, 2\).*one lesion value"),
    ((255, 255, 255), None, "uniformly 255"),
    ((0, 100, 100), 90, "brightest at 10[0-9]"),
])
def test_ambiguous_masks_refused(tmp_path, values, quality, message):
    mask = np.full((24, 32), values[0], np.uint8)
    mask[4:12, 6:18], mask[14:20, 20:30] = values[1], values[2]
    path = _save(tmp_path / ("m.jpg" if quality else "m.png"), mask, **({"quality": quality} if quality else {}))
    with pytest.raises(ConversionError, match=message):
        pixels.read_mask(path)


def test_jpeg_mask_noise_and_threshold(tmp_path):
    assert not pixels.read_mask(_save(tmp_path / "zero_one.jpg", _box(value=1), quality=75)).any()
    lesion = pixels.read_mask(_save(tmp_path / "bright.jpg", _box(), quality=75))
    assert np.array_equal(lesion, _box(value=1).astype(bool))


def test_all_empty_masks_refused_and_empty_ones_counted(tmp_path):
    source = _kvasir(tmp_path / "kvasir")
    _save(source / "masks" / "a.jpg", np.zeros((24, 32), np.uint8), quality=75)
    done = converters.convert("kvasir", source, 20, tmp_path / "raw")
    assert "1 of 3 masks empty (no lesion)" in done.notes
    for name in ("b", "c"):
        _save(source / "masks" / f"{name}.jpg", _box(value=1), quality=75)  # a 0/1 mask saved as JPEG
    with pytest.raises(ConversionError, match="all 3 masks in .* are empty"):
        converters.convert("kvasir", source, 21, tmp_path / "raw")


def test_an_inverted_mask_is_converted_with_a_warning(tmp_path):
    """Background 255 and lesion 0: the darker level is taken as background, so the label is mostly lesion;
    the conversion says so and how to fix it."""
    source = _kvasir(tmp_path / "kvasir")
    _save(source / "masks" / "b.png", 255 - _box())
    done = converters.convert("kvasir", source, 20, tmp_path / "raw")
    assert any(note.startswith("warning: 1 mask(s) are more than 50% lesion (b)") and "invert them" in note
               for note in done.notes), done.notes


def test_a_killed_conversions_partial_folder_is_removed_by_the_next_conversion(tmp_path):
    source = _kvasir(tmp_path / "kvasir")
    left_behind = tmp_path / "raw" / ".Dataset020_KvasirSEG.0badf00d.partial"
    (left_behind / "imagesTr").mkdir(parents=True)
    converters.convert("kvasir", source, 20, tmp_path / "raw")
    assert not left_behind.exists() and (tmp_path / "raw" / "Dataset020_KvasirSEG" / "dataset.json").is_file()


def test_image_colour_detection(tmp_path):
    gray_as_rgb = _save(tmp_path / "g.jpg", np.repeat(_gray(0)[..., None], 3, -1), quality=85)
    colour = _save(tmp_path / "c.png", _colour(0))
    sixteen = _save(tmp_path / "s.png", (_gray(0).astype(np.uint16) * 200))
    assert pixels.inspect_image(gray_as_rgb) == pixels.ImageFacts(colour=False, high_depth=False, wide=False)
    assert pixels.inspect_image(colour).colour and pixels.image_array(colour, True, False).shape == (24, 32, 3)
    assert pixels.inspect_image(sixteen) == pixels.ImageFacts(colour=False, high_depth=True, wide=False)


@pytest.mark.parametrize("ending, array", [
    (".tif", np.random.default_rng(0).uniform(-50, 1000, (24, 32)).astype(np.float32)),
    (".png", np.random.default_rng(1).integers(0, 65536, (24, 32), dtype=np.uint16)),
    (".tif", np.random.default_rng(2).integers(-1000, 3000, (24, 32), dtype=np.int32)),
])
def test_deep_images_keep_their_values_for_nnunet(tmp_path, ending, array):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    source = _kvasir(tmp_path / "kvasir", names=["a"])
    (source / "images" / "a.jpg").unlink()
    Image.fromarray(array).save(source / "images" / "a.tif")
    folder = convert_dataset("kvasir", source, 22, tmp_path / "raw")
    info = json.loads((folder / "dataset.json").read_text())
    assert info["file_ending"] == ending and info["channel_names"] == {"0": "endoscopy"}
    image, _ = NaturalImage2DIO().read_images([str(folder / "imagesTr" / f"a_0000{ending}")])
    assert np.array_equal(image[0, 0], array.astype(np.float32))  # nnU-Net's reader sees the source values
    label, _ = NaturalImage2DIO().read_seg(str(folder / "labelsTr" / f"a{ending}"))
    assert np.array_equal(label[0, 0], _box(value=1))
    _verify(folder)


# ---------------------------------------------------------------- refusals

def test_missing_masks_listed(tmp_path):
    source = _kvasir(tmp_path / "kvasir", names=[f"img{k:02d}" for k in range(12)], masks=False)
    with pytest.raises(ConversionError, match=r"12 image\(s\) have no mask: images/img00.jpg, .*\(\+2 more\)"):
        convert_dataset("kvasir", source, 11, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_size_mismatch_listed(tmp_path):
    source = _kvasir(tmp_path / "kvasir")
    _save(source / "masks" / "b.jpg", np.zeros((10, 10), np.uint8))
    with pytest.raises(ConversionError, match=r"1 mask\(s\) differ in size.*b.jpg 32x24 vs b.jpg 10x10"):
        convert_dataset("kvasir", source, 11, tmp_path / "raw")


@pytest.mark.parametrize("kind", list(converters.KINDS))
def test_empty_or_missing_source_names_layout(tmp_path, kind):
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(ConversionError, match=f"A {kind} source .* holds .+") as error:
            convert_dataset(kind, source, 12, tmp_path / "raw")
        assert isinstance(error.value, LLM4SegError)
    (tmp_path / "empty" / "images").mkdir()
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ConversionError, match="no training images found"):
        convert_dataset("kvasir", tmp_path / "empty", 12, tmp_path / "raw")


def test_existing_target_needs_force_and_stays_unchanged(tmp_path):
    source = _kvasir(tmp_path / "kvasir")
    existing = tmp_path / "raw" / "Dataset013_KvasirSEG"
    (existing / "imagesTr").mkdir(parents=True)
    (existing / "imagesTr" / "keep.txt").write_text("mine")
    before = _tree(tmp_path / "raw")
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        convert_dataset("kvasir", source, 13, tmp_path / "raw")
    assert _tree(tmp_path / "raw") == before

    written = []

    def disk_full(path, array):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        Image.fromarray(array).save(path)

    with pytest.MonkeyPatch.context() as patch:  # an error while writing leaves everything as it was
        patch.setattr(output, "save_image", disk_full)
        with pytest.raises(ConversionError, match="no space left on the device of .*no partial output is left"):
            convert_dataset("kvasir", source, 13, tmp_path / "raw", force=True)
    assert len(written) == 2 and not any(path.exists() for path in written)
    assert _tree(tmp_path / "raw") == before and sorted(p.name for p in (tmp_path / "raw").iterdir()) == [existing.name]

    assert convert_dataset("kvasir", source, 13, tmp_path / "raw", force=True) == existing
    assert not (existing / "imagesTr" / "keep.txt").exists() and len(list((existing / "imagesTr").iterdir())) == 3
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [existing.name]


def test_dataset_id_used_by_other_name_and_other_folds_refused(tmp_path, monkeypatch):
    source = _kvasir(tmp_path / "kvasir")
    (tmp_path / "raw" / "Dataset014_Other").mkdir(parents=True)
    with pytest.raises(ConversionError, match="already used by Dataset014_Other"):
        convert_dataset("kvasir", source, 14, tmp_path / "raw")
    source = _busbra(tmp_path / "busbra", {1: "l", 2: "r", 3: "s", 4: "l", 5: "r"})
    stale = tmp_path / "pre" / "Dataset015_BUSBRA" / "splits_final.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps([{"train": ["x"], "val": ["y"]}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    with pytest.raises(ConversionError, match="holds other folds.*--force"):
        convert_dataset("busbra", source, 15, tmp_path / "raw")
    folder = convert_dataset("busbra", source, 15, tmp_path / "raw", force=True)
    assert stale.read_text() == (folder / "splits_final.json").read_text()


def test_path_traversal_refused_or_sanitised(tmp_path):
    outside = tmp_path / "raw" / "evil"
    source = _busbra(tmp_path / "busbra", {1: "l", 2: "r", 3: "s", 4: "l", 5: "r"})
    rows = [{"ID": "../../evil", "Case": 1}] + [{"ID": f"bus_{p:04d}-{s}", "Case": p}
                                                for p, s in ((1, "l"), (2, "r"), (3, "s"), (4, "l"), (5, "r"))]
    _busbra(source, {}, rows=rows)
    with pytest.raises(ConversionError, match=r"IDs may only hold.*'\.\./\.\./evil'"):
        convert_dataset("busbra", source, 16, tmp_path / "raw")
    kvasir = _kvasir(tmp_path / "k")
    for bad_name in ("../evil", "a/b", "..", "x y"):
        with pytest.raises(ConversionError, match="dataset name"):
            convert_dataset("kvasir", kvasir, 16, tmp_path / "raw", name=bad_name)
    for bad_id in (0, 1000, "1/../x"):
        with pytest.raises(ConversionError, match="dataset id"):
            convert_dataset("kvasir", kvasir, bad_id, tmp_path / "raw")

    source = _kvasir(tmp_path / "odd", names=["x..%2F..%2Fevil", "a b;(1)", "ü-x"])
    _save(source / "images" / "..hidden.jpg", _colour(9))  # hidden file: ignored
    folder = convert_dataset("kvasir", source, 17, tmp_path / "raw")
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["a_b_1.png", "x.png", "x_2F_2Fevil.png"]
    assert not outside.exists()
    assert all(p.resolve().is_relative_to(folder) for p in folder.rglob("*"))
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [folder.name]

    clash = _kvasir(tmp_path / "clash", names=["a b", "a_b"])
    with pytest.raises(ConversionError, match="same case id: a b.jpg -> a_b, a_b.jpg -> a_b"):
        convert_dataset("kvasir", clash, 18, tmp_path / "raw")


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm4seg")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_convert_command(tmp_path, monkeypatch, capsys):
    source = _kvasir(tmp_path / "kvasir")
    args = _parser().parse_args(["convert", "Kvasir", str(source), "--dataset-id", "3", "--name", "Polyps",
                                 "--raw-folder", str(tmp_path / "raw")])
    assert args.handler(args) == 0
    assert (tmp_path / "raw" / "Dataset003_Polyps" / "dataset.json").is_file()
    out = capsys.readouterr().out
    assert "3 training and 0 test cases" in out and "nnUNetv2_plan_and_preprocess -d 3" in out
    assert "  0 of 3 masks empty (no lesion)\n" in out

    busi = _busi(tmp_path / "busi")
    args = _parser().parse_args(["convert", "busi", str(busi), "--dataset-id", "5", "--include-normal",
                                 "--raw-folder", str(tmp_path / "raw")])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "4 training" in out and "  2 of 4 masks empty (no lesion)\n" in out and "excluded" not in out

    args = _parser().parse_args(["convert", "kvasir", str(source), "--dataset-id", "4"])
    with pytest.raises(ConversionError, match="--raw-folder DIR or set the environment variable nnUNet_raw"):
        args.handler(args)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    assert args.handler(args) == 0 and (tmp_path / "env_raw" / "Dataset004_KvasirSEG").is_dir()
    with pytest.raises(ConversionError, match="pass --force"):
        args.handler(args)
    args = _parser().parse_args(["convert", "kvasir", str(source), "--dataset-id", "4", "--force"])
    assert args.handler(args) == 0

    with pytest.raises(SystemExit):
        _parser().parse_args(["convert", "mnist", str(source), "--dataset-id", "4"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["convert", "kvasir", str(source)])
