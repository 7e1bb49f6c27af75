"""Tiny nnU-Net projects for the integration tests: raw data generated here, planned by nnU-Net's own CLI."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from helpers import run_cli

TEST_TRAINERS = Path(__file__).resolve().parent / "nnunet_test_trainers"


@dataclass
class NnUNetProject:
    """nnU-Net's three folders under one root, and a clean environment that points at them."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def env(self, **extra: str) -> dict[str, str]:
        """Only what a user's fresh shell would have, plus nnU-Net's path variables and test settings."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
        base = {k: v for k, v in os.environ.items() if k in keep}
        return {**base, "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f",
                "nnUNet_def_n_proc": "1", "nnUNet_extTrainer": str(TEST_TRAINERS),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),  # 1 per worker under xdist (conftest)
                **self.extra_env, **extra}

    def run(self, *args: str, timeout: int = 900, check: bool = True, **extra_env: str):
        result = run_cli(*args, env=self.env(**extra_env), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-5000:]}")
        return result

    def plan(self, dataset_id: int, *configurations: str, planner: str | None = None) -> None:
        args = ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations, "-np", "1",
                "-npfp", "1"]
        self.run(*args, *(["-pl", planner] if planner else []))

    def results_folder(self, dataset: str, trainer: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
        return self.results / dataset / f"{trainer}__{plans}__{configuration}"


def mean_foreground_dice(summary_file: Path) -> float:
    return float(json.loads(summary_file.read_text())["foreground_mean"]["Dice"])


def add_ignore_label(labels_folder: Path, dataset_json: Path, ignore_value: int = 2) -> None:
    """Mark a band of every 2D label map as 'ignore' (nnU-Net's ignore label must be the highest label)."""
    from PIL import Image

    for path in sorted(labels_folder.glob("*.png")):
        label = np.array(Image.open(path))
        label[:, : label.shape[1] // 6] = ignore_value
        Image.fromarray(label.astype(np.uint8)).save(path)
    data = json.loads(dataset_json.read_text())
    data["labels"]["ignore"] = ignore_value
    dataset_json.write_text(json.dumps(data, indent=2))


def make_regions(labels_folder: Path, dataset_json: Path) -> None:
    """Turn a binary lesion dataset into a region-based one: lesion (1|2) and its inner core (2)."""
    from PIL import Image
    from scipy.ndimage import binary_erosion

    for path in sorted(labels_folder.glob("*.png")):
        lesion = np.array(Image.open(path)) > 0
        core = binary_erosion(lesion, iterations=3)
        Image.fromarray((lesion.astype(np.uint8) + core.astype(np.uint8))).save(path)
    data = json.loads(dataset_json.read_text())
    data["labels"] = {"background": 0, "lesion": [1, 2], "core": 2}
    data["regions_class_order"] = [1, 2]
    dataset_json.write_text(json.dumps(data, indent=2))
