"""What our trainers take from files, in process on a tiny planned dataset: every trainer this package ships, and
every llm4seg command that resumes, validates or predicts, reads a checkpoint with weights_only=True before nnU-Net
unpickles it (a crafted checkpoint is refused and its code never runs; nnU-Net's own nnUNetv2_predict* stays
trusted-input, as the README says); a plans entry the row overrides is logged."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from badinputs import OpensForWriting

from nnunetv2_llm4seg.errors import CheckpointError
from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset

DATASET = "Dataset650_Tiny"


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}, "init_args": OpensForWriting(marker)}, path)
    return path


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """nnU-Net's three folders with a tiny 2D dataset fingerprinted and planned (not preprocessed: no data is read)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    root = tmp_path_factory.mktemp("planned")
    make_ultrasound_dataset(root / "raw", 650, cases=6, size=32, name="Tiny")
    with pytest.MonkeyPatch.context() as patch:
        for variable, folder in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                                 ("nnUNet_results", "results")):
            patch.setenv(variable, str(root / folder))
        extract_fingerprints([650], num_processes=1, check_dataset_integrity=True)
        plan_experiments([650])
    return root


@pytest.fixture
def nnunet_env(planned, monkeypatch) -> Path:
    for variable, folder in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                             ("nnUNet_results", "results")):
        monkeypatch.setenv(variable, str(planned / folder))
    monkeypatch.setenv("nnUNet_compile", "f")
    return planned


def test_every_shipped_trainer_reads_checkpoints_safely():
    from nnunetv2_llm4seg import trainers
    from nnunetv2_llm4seg.trainer import SafeCheckpointTrainer

    assert all(issubclass(getattr(trainers, name), SafeCheckpointTrainer) for name in trainers.__all__)


def make_trainer(folder: Path, trainer_class, plans_changes: dict | None = None):
    plans = {**json.loads((folder / "nnUNetPlans.json").read_text()), "continue_training": False}
    plans["configurations"]["2d"].update(plans_changes or {})
    return trainer_class(plans, "2d", 0, json.loads((folder / "dataset.json").read_text()), device=torch.device("cpu"))


def test_cmunext_continue_refuses_a_crafted_checkpoint_before_unpickling(nnunet_env, tmp_path):
    """`nnUNetv2_train D 2d 0 -tr nnUNetTrainerCMUNeXt --c` ends in trainer.load_checkpoint(checkpoint_latest)."""
    from nnunetv2_llm4seg.trainers import nnUNetTrainerCMUNeXt

    trainer = make_trainer(nnunet_env / "preprocessed" / DATASET, nnUNetTrainerCMUNeXt)
    marker = tmp_path / "code-ran"
    checkpoint = crafted_checkpoint(Path(trainer.output_folder) / "checkpoint_latest.pth", marker)
    with pytest.raises(CheckpointError, match=r"refused unread.*\(io.open\)"):
        trainer.load_checkpoint(str(checkpoint))
    assert not marker.exists()


def test_study_resume_of_a_stock_fold_refuses_a_crafted_checkpoint(nnunet_env, tmp_path):
    """`llm4seg study` / `ablate` / `demo` continue an interrupted fold through train_fold, nnU-Net's own
    trainer included."""
    from nnunetv2_llm4seg.experiments import Schedule, train_fold

    marker = tmp_path / "code-ran"
    crafted_checkpoint(nnunet_env / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0" /
                       "checkpoint_latest.pth", marker)
    with pytest.raises(CheckpointError, match="refused unread"):
        train_fold(DATASET, "2d", 0, "nnUNetTrainer", "nnUNetPlans", Schedule(1, 1, 1), "cpu", tmp_path / "log",
                   validate=True, progress=False)
    assert not marker.exists()


def test_llm4seg_prediction_refuses_a_crafted_checkpoint(nnunet_env, tmp_path):
    """The demo predicts with nnU-Net's predictor only after the fold's checkpoint was read safely."""
    from nnunetv2_llm4seg.experiments import predict_folder

    model = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    model.mkdir()
    folder = nnunet_env / "preprocessed" / DATASET
    shutil.copy(folder / "dataset.json", model / "dataset.json")
    shutil.copy(folder / "nnUNetPlans.json", model / "plans.json")
    marker = tmp_path / "code-ran"
    crafted_checkpoint(model / "fold_0" / "checkpoint_final.pth", marker)
    with pytest.raises(CheckpointError, match="refused unread"):
        predict_folder(model, 0, nnunet_env / "raw" / DATASET / "imagesTr", tmp_path / "out", "cpu", tmp_path / "log")
    assert not marker.exists()


def test_a_lora_rank_of_the_plans_entry_replaced_by_the_row_is_logged(nnunet_env):
    from nnunetv2_llm4seg.trainers import nnUNetTrainerLLM4SegMiniLMLoRA

    entry = {"llm4seg": {"preset": "minilm-l6", "lora": {"rank": 16, "alpha": 32}}}
    trainer = make_trainer(nnunet_env / "preprocessed" / DATASET, nnUNetTrainerLLM4SegMiniLMLoRA, entry)
    assert trainer.llm4seg_spec.lora["rank"] == 8  # the row wins, as documented
    log = Path(trainer.log_file).read_text()
    assert "nnUNetTrainerLLM4SegMiniLMLoRA fixes lora" in log and "rank: 16 vs 8" in log
