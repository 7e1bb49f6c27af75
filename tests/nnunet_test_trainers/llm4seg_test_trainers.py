"""Test-only trainers: the shipped ones with a few iterations per epoch (nnU-Net finds this folder through
nnUNet_extTrainer, set by the tests). Epochs/iterations can be changed with LLM4SEG_TEST_* variables, and
LLM4SEG_TEST_VALIDATE=0 leaves out nnU-Net's final validation where a test does not look at it."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_llm4seg.trainers import (nnUNetTrainerLLM4Seg, nnUNetTrainerLLM4SegMiniLM, nnUNetTrainerLLM4SegMiniLMGated,
                                       nnUNetTrainerLLM4SegMiniLMLoRA)


class ShortSchedule:
    """Few epochs and iterations, a checkpoint after every epoch (for the resume tests), and no mirroring
    (test-time mirroring multiplies CPU inference time by 4 in 2D and 8 in 3D)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("LLM4SEG_TEST_EPOCHS", "2"))
        self.num_iterations_per_epoch = int(os.environ.get("LLM4SEG_TEST_ITERATIONS", "25"))
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("LLM4SEG_TEST_VALIDATE", "1") != "0":
            super().perform_actual_validation(save_probabilities)


class nnUNetTrainerLLM4SegMiniLM_test(ShortSchedule, nnUNetTrainerLLM4SegMiniLM):
    pass


class nnUNetTrainerLLM4Seg_test(ShortSchedule, nnUNetTrainerLLM4Seg):
    pass


class nnUNetTrainer_test(ShortSchedule, nnUNetTrainer):
    pass


class nnUNetTrainerLLM4SegMiniLMLoRA_test(ShortSchedule, nnUNetTrainerLLM4SegMiniLMLoRA):
    pass


class nnUNetTrainerLLM4SegMiniLMGated_test(ShortSchedule, nnUNetTrainerLLM4SegMiniLMGated):
    pass
