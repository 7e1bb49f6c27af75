"""Small synthetic datasets in nnU-Net's raw format, generated on the fly (for the demo and the tests).

2D: ultrasound-like images (speckle, depth attenuation, a dark lesion with a bright rim below it) with binary
masks, as PNG. 3D: noisy volumes with one or two ellipsoid "organs", as NIfTI. Deterministic for a seed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def _ellipse(shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    offsets = [g - c for g, c in zip(grids, center)]
    if len(shape) == 2:
        cos, sin = np.cos(angle), np.sin(angle)
        offsets = [cos * offsets[0] + sin * offsets[1], -sin * offsets[0] + cos * offsets[1]]
    return sum((o / r) ** 2 for o, r in zip(offsets, radii)) <= 1.0


def ultrasound_case(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One 2D ultrasound-like image (uint8) and its lesion mask (0/1)."""
    center = rng.uniform(0.3 * size, 0.7 * size, 2)
    radii = rng.uniform(0.08 * size, 0.2 * size, 2)
    mask = _ellipse((size, size), center, radii, rng.uniform(0, np.pi))
    depth = np.linspace(1.0, 0.55, size, dtype=np.float32)[:, None]
    tissue = 0.55 + 0.15 * np.sin(np.arange(size)[:, None] / rng.uniform(4, 9) + rng.uniform(0, 6))
    echo = tissue * depth * np.ones((size, size), dtype=np.float32)
    echo[mask] *= rng.uniform(0.15, 0.35)  # hypoechoic lesion
    shadow_rim = _ellipse((size, size), center + [radii[0] * 1.1, 0], radii * [0.35, 0.9])
    echo[shadow_rim & ~mask] *= 1.35  # posterior enhancement
    speckle = rng.rayleigh(0.35, (size, size)).astype(np.float32)
    image = np.clip(echo * speckle * 255 / 0.8, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8)


def blob_case(rng: np.random.Generator, shape: Sequence[int] = (24, 48, 48),
              labels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One 3D volume (float32) with `labels` non-overlapping ellipsoids labelled 1..labels."""
    image = rng.normal(0.0, 0.35, shape).astype(np.float32)
    seg = np.zeros(shape, dtype=np.uint8)
    for label in range(1, labels + 1):
        center = [rng.uniform(0.3 * s, 0.7 * s) for s in shape]
        center[2] = (label - 0.5) / labels * shape[2]
        radii = [rng.uniform(0.15 * s, 0.25 * s) for s in shape]
        radii[2] = min(radii[2], 0.4 * shape[2] / labels)
        region = _ellipse(shape, center, radii) & (seg == 0)
        seg[region] = label
        image[region] += 1.0 + 0.5 * label
    return image, seg


def write_dataset_json(folder: Path, channel_names: dict, labels: dict, num_training: int, file_ending: str,
                       name: str, **extra) -> None:
    data = {"channel_names": channel_names, "labels": labels, "numTraining": num_training,
            "file_ending": file_ending, "name": name, **extra}
    (folder / "dataset.json").write_text(json.dumps(data, indent=2))


def make_ultrasound_dataset(raw_folder: Path, dataset_id: int, cases: int = 24, size: int = 96,
                            seed: int = 0, name: str = "SyntheticUltrasound", test_cases: int = 0) -> Path:
    """Write DatasetNNN_name/ with imagesTr, labelsTr (and imagesTs/labelsTs) as PNG; returns the folder."""
    from PIL import Image

    folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    rng = np.random.default_rng(seed)
    for subset, count in (("Tr", cases), ("Ts", test_cases)):
        if not count:
            continue
        (folder / f"images{subset}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{subset}").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask = ultrasound_case(rng, size)
            case = f"us_{subset.lower()}_{index:03d}"
            Image.fromarray(image).save(folder / f"images{subset}" / f"{case}_0000.png")
            Image.fromarray(mask).save(folder / f"labels{subset}" / f"{case}.png")
    write_dataset_json(folder, {"0": "ultrasound"}, {"background": 0, "lesion": 1}, cases, ".png", name)
    return folder


def make_blob_dataset(raw_folder: Path, dataset_id: int, cases: int = 8, shape: Sequence[int] = (24, 48, 48),
                      labels: int = 1, seed: int = 0, name: str = "SyntheticBlobs3D",
                      spacing: Sequence[float] = (2.0, 1.0, 1.0)) -> Path:
    """Write a 3D DatasetNNN_name/ with NIfTI images and labels; returns the folder."""
    import SimpleITK as sitk

    folder = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(cases):
        image, seg = blob_case(rng, shape, labels)
        for array, path in ((image, folder / "imagesTr" / f"blob_{index:03d}_0000.nii.gz"),
                            (seg, folder / "labelsTr" / f"blob_{index:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(tuple(float(s) for s in reversed(spacing)))
            sitk.WriteImage(itk, str(path))
    label_names = {"background": 0, **{f"organ{k}": k for k in range(1, labels + 1)}}
    write_dataset_json(folder, {"0": "CT"}, label_names, cases, ".nii.gz", name)
    return folder
