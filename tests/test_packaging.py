"""Packaging: the entry points in setup.cfg list exactly the trainer classes, and each one loads."""
import configparser
import importlib
import re
from pathlib import Path

import nnunetv2_llm4seg.trainers as trainers

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def registered_entry_points() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = parser["options.entry_points"]["nnunetv2.trainers"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


def test_every_trainer_class_is_registered_and_loads():
    entry_points = registered_entry_points()
    assert set(entry_points) == set(trainers.__all__)
    assert len(entry_points) == 108  # 6 UNet + 6 CMUNeXt trainers, each with 8 schedules
    for name, target in entry_points.items():
        module, _, attribute = target.partition(":")
        assert getattr(importlib.import_module(module), attribute).__name__ == name


def test_trainer_names_follow_nnunet_conventions():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for name in trainers.__all__:
        cls = getattr(trainers, name)
        assert issubclass(cls, nnUNetTrainer) and name.startswith("nnUNetTrainer")
        schedule = re.fullmatch(r".*_(\d+)epochs?", name)
        assert cls.schedule_epochs == (int(schedule.group(1)) if schedule else None)
