"""Bad-input matrix of `llm4seg convert`: each broken download, mask, image or target costs a non-zero exit or a
ConversionError whose message names the problem and the fix, before the user's files change."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from badinputs import BadInput, check_bad_input, cli_case, one_line, raises_case
from PIL import Image

from nnunetv2_llm4seg.converters import convert_dataset, output

SHAPE = (16, 20)


def box(value: int = 255) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:10, 5:12] = value
    return mask


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray | Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(path, **options)
    return path


def kvasir(tmp_path: Path, mask: np.ndarray | None = None, mask_ending: str = ".png") -> Path:
    """A Kvasir-SEG layout of three cases; every mask is `mask` (default: a 0/255 box)."""
    source = tmp_path / "kvasir"
    for k, name in enumerate("abc"):
        save(source / "images" / f"{name}.jpg", image(k))
        save(source / "masks" / f"{name}{mask_ending}", box() if mask is None else mask)
    return source


def kvasir_with(change) -> callable:
    """Setup: a Kvasir-SEG layout, then `change(source)` (a broken file, a missing folder, ...)."""
    def setup(tmp_path: Path, model: Path) -> None:
        change(kvasir(tmp_path))
    return setup


def plain_kvasir(tmp_path: Path, model: Path) -> None:
    kvasir(tmp_path)


def masks_as_file(source: Path) -> None:
    shutil.rmtree(source / "masks")
    (source / "masks").write_text("not a folder")


def convert(kind: str = "kvasir", source: str = "kvasir", **options):
    """Action: convert tmp_path/source into tmp_path/raw."""
    def action(tmp_path, model, monkeypatch):
        convert_dataset(kind, tmp_path / source, 42, tmp_path / "raw", **options)
    return action


def convert_cli(*extra: str, source: str = "kvasir", kind: str = "kvasir"):
    """CLI arguments: `llm4seg convert kind tmp_path/source --dataset-id 42 --raw-folder tmp_path/raw extra`."""
    return lambda t, m: ["convert", kind, str(t / source), "--dataset-id", "42", "--raw-folder", str(t / "raw"), *extra]


def masks_setup(mask: np.ndarray, ending: str = ".png"):
    def setup(tmp_path: Path, model: Path) -> None:
        kvasir(tmp_path, mask, ending)
    return setup


def three_levels() -> np.ndarray:
    mask = box(1)
    mask[12:15, 14:18] = 2
    return mask


def palette_of_three() -> Image.Image:
    img = Image.fromarray(three_levels(), mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    return img


def first_image(change) -> callable:
    """Setup: a Kvasir-SEG layout whose image a.* is replaced by what `change(path of a.jpg)` writes."""
    def setup(tmp_path: Path, model: Path) -> None:
        source = kvasir(tmp_path)
        (source / "images" / "a.jpg").unlink()
        change(source / "images")
    return setup


def truncated(images: Path) -> None:
    data = save(images / "full.png", image(7)).read_bytes()
    (images / "full.png").unlink()
    (images / "a.png").write_bytes(data[: len(data) // 2])


def sixteen_bit_colour(images: Path) -> None:
    import SimpleITK as sitk

    rgb = np.random.default_rng(0).integers(0, 65536, (*SHAPE, 3), dtype=np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(images / "a.png"))


def float_with_nan(images: Path) -> None:
    values = np.ones(SHAPE, np.float32)
    values[3, 3] = np.nan
    save(images / "a.tif", values)


def gray_sixteen_bit(images: Path) -> None:
    save(images / "a.png", np.full(SHAPE, 4000, np.uint16))


def pixel_limit(limit: int):
    """Action: convert with PIL's decompression-bomb limit lowered so that the 16x20 images exceed it
    (above the limit PIL warns, above twice the limit it raises; both must become clean errors)."""
    def action(tmp_path, model, monkeypatch):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        convert_dataset("kvasir", tmp_path / "kvasir", 42, tmp_path / "raw")
    return action


def failing_writes(error: int):
    """Action: convert while every image write fails with `error` (a full disk, a read-only folder)."""
    def action(tmp_path, model, monkeypatch):
        def fail(path, array):
            raise OSError(error, os.strerror(error), str(path))

        monkeypatch.setattr(output, "save_image", fail)
        try:
            convert_dataset("kvasir", tmp_path / "kvasir", 42, tmp_path / "raw")
        finally:
            assert [p.name for p in (tmp_path / "raw").iterdir()] == ["keep.txt"], "partial output left behind"
    return action


def raw_folder_with_file(tmp_path: Path, model: Path) -> None:
    kvasir(tmp_path)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "keep.txt").write_text("the user's file")


def unwritable_raw(tmp_path, model, monkeypatch):
    """Action: the raw folder cannot be created (read-only parent; simulated, tests may run as root)."""
    def refuse(path, mode=0o777, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", refuse)
    convert_dataset("kvasir", tmp_path / "kvasir", 42, tmp_path / "ro" / "raw")


def busi_only_normal(tmp_path: Path, model: Path) -> None:
    for k in (1, 2):
        save(tmp_path / "busi" / "normal" / f"normal ({k}).png", image(k))
        save(tmp_path / "busi" / "normal" / f"normal ({k})_mask.png", np.zeros(SHAPE, np.uint8))


def tnscui(rows: str, images: int = 2):
    """Setup: a TN-SCUI 2020 layout of `images` images with train.csv holding `rows`."""
    def setup(tmp_path: Path, model: Path) -> None:
        for number in range(1, images + 1):
            save(tmp_path / "tnscui" / "image" / f"{number}.PNG", image(number)[..., 0])
            save(tmp_path / "tnscui" / "mask" / f"{number}.PNG", box())
        (tmp_path / "tnscui" / "train.csv").write_text("ID,CATE\n" + rows)
    return setup


def busbra_unsafe_id(tmp_path: Path, model: Path) -> None:
    save(tmp_path / "busbra" / "Images" / "bus_0001-l.png", image(1)[..., 0])
    save(tmp_path / "busbra" / "Masks" / "mask_0001-l.png", box())
    (tmp_path / "busbra" / "bus_data.csv").write_text("ID,Case\nbus_0001-l,1\n../../evil,2\n")


def existing_target(tmp_path: Path, model: Path) -> None:
    kvasir(tmp_path)
    target = tmp_path / "raw" / "Dataset042_KvasirSEG"
    target.mkdir(parents=True)
    (target / "dataset.json").write_text('{"precious": true}')


CASES: dict[str, BadInput] = {
    "unknown dataset (command line)": cli_case(convert_cli(kind="brats"), ["invalid choice: 'brats'", "tnscui"],
                                               plain_kvasir),
    "unknown dataset (API)": raises_case(convert(kind="brats"), ["unknown dataset 'brats'", "known: busbra"]),
    "source is a file": cli_case(convert_cli(source="kvasir/images/a.jpg"),
                                 ["is a file; pass the folder that holds the extracted download"],
                                 plain_kvasir),
    "file where a folder is expected": cli_case(
        convert_cli(), ["masks is a file where a folder is expected", "images/NAME.jpg and masks/NAME.jpg"],
        kvasir_with(masks_as_file)),
    "mask without an image": one_line(cli_case(convert_cli(), ["1 mask(s) have no image: d.png", "remove these masks"],
                                               kvasir_with(lambda source: save(source / "masks" / "d.png", box())))),
    "image without mask": raises_case(convert(), ["1 image(s) have no mask", "images/b.jpg"],
                                      kvasir_with(lambda source: (source / "masks" / "b.png").unlink())),
    "mask of another size": raises_case(convert(), ["differ in size", "c.jpg 20x16 vs c.png 8x8"],
                                        kvasir_with(lambda source: save(source / "masks" / "c.png",
                                                                        np.zeros((8, 8), np.uint8)))),
    "mask with labels 0, 1, 2": cli_case(convert_cli(), ["holds 3 levels (0, 1, 2)", "one lesion value",
                                                         "e.g. 255"], masks_setup(three_levels())),
    "palette mask with three colours": raises_case(convert(), ["holds 3 levels", "index 2 (0, 255, 0)"],
                                                   masks_setup(palette_of_three())),
    "uniformly white mask": raises_case(convert(), ["is uniformly 255", "empty mask as 0"],
                                        masks_setup(np.full(SHAPE, 255, np.uint8))),
    "JPEG mask peaking at 100": raises_case(convert(), ["is brightest at", "save the masks losslessly"],
                                            masks_setup(box(100), ".jpg")),
    "all masks empty": cli_case(convert_cli(), ["all 3 masks", "are empty", "lesion masks"],
                                masks_setup(np.zeros(SHAPE, np.uint8))),
    "0/1 masks saved as JPEG": raises_case(convert(), ["all 3 masks", "above 127"], masks_setup(box(1), ".jpg")),
    "BUSI with only normal images": cli_case(convert_cli(kind="busi", source="busi"),
                                             ["all 2 images of the source are normal", "--include-normal"],
                                             busi_only_normal),
    "--max-side below 16 px": cli_case(convert_cli("--max-side", "8"), ["--max-side must be", "at least 16"],
                                       plain_kvasir),
    "--max-side on a 3D dataset": raises_case(convert(kind="btcv", source="btcv", max_side=64),
                                              ["applies to 2D images", "leave it out"]),
    "--include-normal outside BUSI": cli_case(convert_cli("--include-normal"), ["applies to busi only"],
                                              plain_kvasir),
    "truncated image": cli_case(convert_cli(), ["a.png", "truncated", "download it again"], first_image(truncated)),
    "not an image": raises_case(convert(), ["cannot read", "a.png", "not an image"],
                                first_image(lambda images: (images / "a.png").write_text("<html>404</html>"))),
    "decompression bomb (PIL warning)": raises_case(pixel_limit(200), ["decompression bomb", "downscaled"],
                                                    plain_kvasir),
    "decompression bomb (PIL error)": raises_case(pixel_limit(100), ["decompression bomb", "remove the file"],
                                                  plain_kvasir),
    "16-bit colour image": raises_case(convert(), ["16-bit colour image", "decodes to 8 bits"],
                                       first_image(sixteen_bit_colour)),
    "float image with NaN": raises_case(convert(), ["a.tif holds NaN or infinite values", "finite values"],
                                        first_image(float_with_nan)),
    "colour mixed with 16-bit grayscale": raises_case(convert(), ["mixes colour images", "a.png",
                                                                  "one format per dataset"],
                                                      first_image(gray_sixteen_bit)),
    "disk full while writing": raises_case(failing_writes(errno.ENOSPC), ["no space left", "no partial output is "
                                                                          "left"], raw_folder_with_file),
    "read-only raw folder while writing": raises_case(failing_writes(errno.EROFS), ["permission denied or "
                                                                                    "read-only", "--raw-folder"],
                                                      raw_folder_with_file),
    "raw folder cannot be created": raises_case(unwritable_raw, ["cannot write into", "ro/raw", "Permission denied"],
                                                plain_kvasir),
    "raw folder is a file": cli_case(lambda t, m: ["convert", "kvasir", str(t / "kvasir"), "--dataset-id", "42",
                                                   "--raw-folder", str(t / "existing" / "keep.txt")],
                                     ["keep.txt is a file, not a folder", "--raw-folder"],
                                     plain_kvasir),
    "TN-SCUI category outside 0/1": raises_case(convert("tnscui", "tnscui"),
                                                ["CATE must be 0 (benign) or 1", "2.PNG: '2'"],
                                                tnscui("1.PNG,0\n2.PNG,2\n")),
    "TN-SCUI image missing from train.csv": raises_case(convert("tnscui", "tnscui"),
                                                        ["1 image(s) are missing from train.csv", "2.PNG"],
                                                        tnscui("1.PNG,1\n")),
    "BUS-BRA unsafe ID": raises_case(convert("busbra", "busbra"), ["IDs may only hold", "'../../evil'"],
                                     busbra_unsafe_id),
    "existing dataset without --force": cli_case(convert_cli(), ["already exists", "--force"], existing_target),
    "dataset id out of range": cli_case(lambda t, m: ["convert", "kvasir", str(t / "kvasir"), "--dataset-id",
                                                      "1000", "--raw-folder", str(t / "raw")],
                                        ["dataset id must be an integer from 1 to 999"],
                                        plain_kvasir),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_converter_input(name, tmp_path, small_model, capsys, monkeypatch):
    check_bad_input(name, CASES[name], tmp_path, small_model, capsys, monkeypatch)
