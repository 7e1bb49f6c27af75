"""Packaging and discovery: entry points for the base trainers, canonical classes through nnU-Net's lookup,
the start-up hook (cheap, opt-out), and a wheel install in a fresh virtual environment."""
import configparser
import importlib
import os
import pickle
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import nnunetv2_llm4seg.trainers as trainers

REPO = Path(__file__).resolve().parents[1]
SETUP_CFG = REPO / "setup.cfg"
FIND = ("import pickle\nfrom nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "cls = find({name!r})\nprint('FOUND', cls.__module__, cls.__qualname__, cls.schedule_epochs)\n"
        "print('PICKLE', pickle.loads(pickle.dumps(cls)) is cls)\n"
        "import importlib; print('FILE', importlib.import_module(cls.__module__).__file__)")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return {**env, "nnUNet_raw": str(tmp_path), "nnUNet_preprocessed": str(tmp_path),
            "nnUNet_results": str(tmp_path), **extra}


def registered_entry_points() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = parser["options.entry_points"]["nnunetv2.trainers"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


def test_entry_points_are_the_written_out_base_classes():
    entry_points = registered_entry_points()
    assert set(entry_points) == set(trainers.__all__)
    for name, target in entry_points.items():
        module, _, attribute = target.partition(":")
        cls = getattr(importlib.import_module(module), attribute)
        assert cls.__name__ == name and cls.__module__ == module  # written out in that module, not generated
        assert cls is getattr(trainers, name)


def test_schedules_of_any_length_are_built_once_and_pickle():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for name in trainers.__all__:
        assert issubclass(getattr(trainers, name), nnUNetTrainer) and name.startswith("nnUNetTrainer")
    for epochs, suffix in ((1, "_1epoch"), (5, "_5epochs"), (37, "_37epochs"), (1000, "_1000epochs")):
        cls = getattr(trainers, "nnUNetTrainerLLM4SegMiniLM" + suffix)
        assert cls.schedule_epochs == epochs and cls is getattr(trainers, "nnUNetTrainerLLM4SegMiniLM" + suffix)
        assert issubclass(cls, trainers.nnUNetTrainerLLM4SegMiniLM)
        assert pickle.loads(pickle.dumps(cls)) is cls
    for wrong in ("nnUNetTrainerLLM4SegMiniLM_0epochs", "nnUNetTrainerLLM4SegMiniLM_1epochs",
                  "nnUNetTrainerLLM4SegMiniLM_5epoch", "nnUNetTrainerNope_5epochs"):
        assert not hasattr(trainers, wrong), wrong


@pytest.mark.parametrize("name", ["nnUNetTrainerLLM4SegMiniLM_5epochs", "nnUNetTrainerCMUNeXtLLM4SegPaper"])
def test_nnunet_lookup_returns_the_canonical_class(name, tmp_path):
    result = subprocess.run([sys.executable, "-c", FIND.format(name=name)], env=clean_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"FOUND nnunetv2_llm4seg.trainers{'.llm4seg_cmunext_trainers' if 'CMUNeXt' in name else ''} {name}" \
        in result.stdout
    assert "PICKLE True" in result.stdout


def test_startup_imports_no_torch_and_the_hook_can_be_switched_off(tmp_path):
    probe = ("import os, sys\nprint('HEAVY', sorted(m for m in ('torch', 'nnunetv2', 'numpy') if m in sys.modules))\n"
             "print('EXT', os.environ.get('nnUNet_extTrainer', ''))")
    on = subprocess.run([sys.executable, "-c", probe], env=clean_env(tmp_path), capture_output=True, text=True)
    assert "HEAVY []" in on.stdout
    assert "nnunet_ext_trainers" in on.stdout
    off = subprocess.run([sys.executable, "-c", probe], env=clean_env(tmp_path, nnUNet_llm4seg_disable_hook="1"),
                         capture_output=True, text=True)
    assert "HEAVY []" in off.stdout and "nnunet_ext_trainers" not in off.stdout


def test_a_wheel_in_a_fresh_venv_lets_nnunet_find_the_trainers(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    environment = tmp_path / "venv"
    venv.create(environment, system_site_packages=True, with_pip=True)  # torch & nnU-Net from the system
    python = environment / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", *map(str, wheels.glob("*.whl"))],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    result = subprocess.run([str(python), "-c", FIND.format(name="nnUNetTrainerLLM4SegPaper_3epochs")],
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "FOUND nnunetv2_llm4seg.trainers nnUNetTrainerLLM4SegPaper_3epochs 3" in result.stdout
    assert f"FILE {environment}" in result.stdout  # the wheel's copy, not the source tree
