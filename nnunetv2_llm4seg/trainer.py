"""The nnU-Net trainer base class for LLM4Seg: nnU-Net's trainer with a booster in its network.

Subclasses (in trainers/) only choose a default preset, ablation overrides and a schedule.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.describe import count_parameters, trainable_and_frozen
from nnunetv2_llm4seg.loading import load_into_block
from nnunetv2_llm4seg.network import BoostedUNet, boost_unet, check_token_budget, tokens_at_stage
from nnunetv2_llm4seg.run_spec import (check_resume, check_same_model, configured_spec, install_spec,
                                       requested_spec, spec_in_checkpoint, spec_in_results_plans)
from nnunetv2_llm4seg.spec import BoosterSpec

CHECKPOINTS_FOR_RESUME = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
SCHEDULES = (1, 5, 10, 20, 50, 100, 250, 500)
# The paper's ablation rows: class-name suffix -> (spec overrides, what the row is).
ABLATIONS = {
    "Unfrozen": ({"trainable": True}, 'the pre-trained layer made trainable (the paper\'s "T" ablation)'),
    "RandomInit": ({"init": "random", "trainable": True},
                   'the same layer shape, randomly initialised and trainable (the paper\'s "Transformer" row)'),
    "AdaptersOnly": ({"init": "none"}, "the two adapters without the LLM layer (isolates what they add)"),
}


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)  # DDP
    return getattr(network, "_orig_mod", network)  # torch.compile


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    return [p for p in network.parameters() if p.requires_grad]


class LLM4SegTrainer(nnUNetTrainer):
    """nnUNetTrainer whose network carries an LLM4Seg booster (spec: plans entry > environment > default)."""

    default_preset: ClassVar[str] = "llama3.2-1b-l15"
    spec_overrides: ClassVar[Mapping[str, Any]] = {}
    schedule_epochs: ClassVar[int | None] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        configuration_dict = PlansManager(plans).get_configuration(configuration).configuration
        self.requested = requested_spec(configuration_dict, self.default_preset, self.spec_overrides)
        self._checkpoint_specs: dict[str, BoosterSpec | None] = {}
        spec = self.requested.spec
        if plans.get("continue_training"):
            spec = self._spec_to_resume(plans, configuration, fold) or spec
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule_epochs is not None:
            self.num_epochs = self.schedule_epochs
        self.weights_from_checkpoint = False
        self._install(spec)

    # ---- the spec ----------------------------------------------------------------------------------
    @property
    def llm4seg_spec(self) -> BoosterSpec:
        return configured_spec(self.configuration_manager.configuration)

    def _install(self, spec: BoosterSpec) -> None:
        install_spec(self.plans_manager.plans, self.configuration_name, self.configuration_manager.configuration,
                     spec)

    def _spec_to_resume(self, plans: dict, configuration: str, fold: int | str) -> BoosterSpec | None:
        """For --c: the spec of the checkpoint nnU-Net will continue from; checked before anything is written."""
        from nnunetv2.paths import nnUNet_results

        if not nnUNet_results.is_set():
            return None
        folder = os.path.join(str(nnUNet_results), plans["dataset_name"],
                              f"{type(self).__name__}__{plans['plans_name']}__{configuration}", f"fold_{fold}")
        for name in CHECKPOINTS_FOR_RESUME:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return self._checkpoint_spec(path, configuration)
        return None

    def _checkpoint_spec(self, path: str, configuration: str) -> BoosterSpec | None:
        """The spec a checkpoint was trained with, checked against the requested one (each file read once)."""
        if path not in self._checkpoint_specs:
            stored = spec_in_checkpoint(path, configuration)
            if stored is not None:
                check_resume(self.requested, stored, path)
            self._checkpoint_specs[path] = stored
        return self._checkpoint_specs[path]

    # ---- network -----------------------------------------------------------------------------------
    @classmethod
    def build_unet(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                   num_input_channels: int, num_output_channels: int, enable_deep_supervision: bool) -> nn.Module:
        """The CNN the booster goes into: nnU-Net's own network from the plans (initialised by nnU-Net)."""
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> BoostedUNet:
        """Also used by nnUNetv2_predict in a fresh process: reads the spec from the plans alone."""
        spec = configured_spec(configuration_manager.configuration)
        unet = cls.build_unet(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                              enable_deep_supervision)
        network = boost_unet(unet, spec)
        check_token_budget(spec, tokens_at_stage(configuration_manager.patch_size,
                                                 cls.encoder_strides(configuration_manager), network.booster_stage))
        return network

    @classmethod
    def encoder_strides(cls, configuration_manager: ConfigurationManager) -> list:
        """Per-stage strides of build_unet's encoder (nnU-Net's networks: the plans' pooling)."""
        return configuration_manager.pool_op_kernel_sizes

    @property
    def booster(self) -> LLMBooster:
        return unwrap(self.network).booster

    def initialize(self) -> None:
        super().initialize()
        spec = self.llm4seg_spec
        if spec.init == "pretrained" and not self.weights_from_checkpoint:
            provenance = load_into_block(spec, self.booster.llm)
            self._install(spec.replace(provenance=provenance))
        self._log_booster()

    def configure_optimizers(self):
        """nnU-Net's SGD + poly schedule, given only the trainable parameters (never the frozen LLM layer)."""
        optimizer = torch.optim.SGD(trainable_parameters(self.network), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # ---- checkpoints -------------------------------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Adopt the checkpoint's spec before the network is built; its weights include the LLM layer."""
        if not self.was_initialized and isinstance(filename_or_checkpoint, str):
            stored = self._checkpoint_spec(filename_or_checkpoint, self.configuration_name)
            if stored is not None:
                self._install(stored)
            self.weights_from_checkpoint = True
        super().load_checkpoint(filename_or_checkpoint)

    def on_train_start(self) -> None:
        results_plans = os.path.join(self.output_folder_base, "plans.json")
        stored = spec_in_results_plans(results_plans, self.configuration_name)
        if stored is not None:
            check_same_model(self.llm4seg_spec, stored, self.output_folder_base)
        super().on_train_start()

    # ---- log ---------------------------------------------------------------------------------------
    def _log_booster(self) -> None:
        spec = self.llm4seg_spec
        network = unwrap(self.network)
        booster = network.booster
        trainable, frozen = trainable_and_frozen(network)
        stage = network.booster_stage
        tokens = tokens_at_stage(self.configuration_manager.patch_size,
                                 self.encoder_strides(self.configuration_manager), stage)
        provenance = spec.provenance or {}
        layer_state = "trainable" if spec.trainable else "frozen"
        rows = [
            ("source", f"{spec.source}" + (f" @ {provenance['revision']}" if provenance.get("revision") else "")),
            ("family / layer", f"{spec.family}, layer index {spec.layer}"
                               + (f" (paper: {spec.paper_layer})" if spec.paper_layer else "")
                               + f", init {spec.init}, {layer_state}"),
            ("attention / positions", f"{spec.attention}, {spec.positions}, {spec.dtype}"),
            ("stage", f"{stage} of {len(network.encoder.stages)} ({'bottleneck' if spec.stage == -1 else spec.stage}),"
                      f" {booster.adapter_in.in_features} channels, {tokens} tokens per patch"),
            ("adapter parameters", f"{count_parameters(booster.adapter_in) + count_parameters(booster.adapter_out):,}"),
            ("network trainable / frozen", f"{trainable:,} / {frozen:,}"),
            ("weights sha256", provenance.get("sha256", "from checkpoint" if self.weights_from_checkpoint
                                              else "n/a (no pre-trained weights)")),
        ]
        width = max(len(name) for name, _ in rows)
        self.print_to_log_file("LLM4Seg booster\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows),
                               add_timestamp=False)


def schedule_variants(bases: tuple[type[nnUNetTrainer], ...], module: str) -> dict[str, type]:
    """Short-schedule subclasses named like nnU-Net's own: Base_1epoch, Base_5epochs, ..., Base_500epochs."""
    variants = {}
    for base in bases:
        for epochs in SCHEDULES:
            name = f"{base.__name__}_{epochs}epoch{'s' if epochs != 1 else ''}"
            variants[name] = type(name, (base,), {"schedule_epochs": epochs, "__module__": module,
                                                  "__doc__": f"{base.__name__}, trained for {epochs} epoch(s)."})
    return variants


def ablation_variants(base: type[LLM4SegTrainer], module: str) -> dict[str, type]:
    """The ablation rows of a trainer: BaseUnfrozen, BaseRandomInit and BaseAdaptersOnly."""
    return {f"{base.__name__}{suffix}": type(f"{base.__name__}{suffix}", (base,), {
        "spec_overrides": overrides, "__module__": module, "__doc__": f"{base.__name__} with {what}."})
        for suffix, (overrides, what) in ABLATIONS.items()}
