"""The nnU-Net trainer base class for LLM4Seg: nnU-Net's trainer with a booster in its network.

Subclasses (in trainers/) only choose a default preset and a row (the mixins below: which parts of the booster
train, how the layer is initialised); short schedules are built on demand (find_schedule_variant).
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, ClassVar, Mapping

import torch
import torch.distributed as dist
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.parameters import count_parameters, trainable_and_frozen
from nnunetv2_llm4seg.network import (BoostedUNet, boost_unet, booster_stage_index, check_token_budget,
                                      tokens_at_stage)
from nnunetv2_llm4seg.run_spec import (PLANS_KEY, check_resume, check_same_model, configured_spec, install_spec,
                                       read_checkpoint, requested_spec, spec_in_checkpoint, spec_in_results_plans)
from nnunetv2_llm4seg.spec import PRETRAINED_INITS, BoosterSpec, describe_differences

SCHEDULE_NAME = re.compile(r"(?P<base>nnUNetTrainer\w*?)_(?P<epochs>\d+)epochs?")


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)  # DDP
    return getattr(network, "_orig_mod", network)  # torch.compile


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    return [p for p in network.parameters() if p.requires_grad]


def broadcast_from_rank0(module: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers of `module`. DDP broadcasts once, when it wraps the
    network; whatever is loaded or re-initialised afterwards would otherwise differ between ranks seeded
    differently (trap 18)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


class Unfrozen:
    """Row mixin: the pre-trained layer is trainable (the paper's "T" ablation)."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"trainable": True}


class RandomInit:
    """Row mixin: the layer's shape, randomly initialised (xavier weights, zero biases, unit norms), trainable."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"init": "random", "trainable": True}


class PaperRandomInit:
    """Row mixin: the official code's need_init: the pre-trained layer with its nn.Linear weights re-initialised
    (xavier, zero bias; norm gains stay pre-trained), trainable as the paper's table counts it (+65.01M)."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"init": "random-linear", "trainable": True}


class AdaptersOnly:
    """Row mixin (our control, not in the paper): the two adapters without the LLM layer."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"init": "none"}


class Causal:
    """Row mixin: the frozen layer with causal attention (the official code's attention mode) and its own
    positions: isolates whether attention direction matters."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"attention": "causal"}


# The official code's computation (with any LLM a plans variant names): causal attention, its sin/cos positions
# passed swapped, float32. A Paper row stays the paper's computation even under another plans entry.
PAPER_COMPUTATION = {"attention": "causal", "positions": "paper", "dtype": "float32"}


class LoRA:
    """Row mixin (beyond the paper): the pre-trained layer frozen, with PEFT LoRA adapters (rank 8, alpha 16) on
    its attention and MLP projections trained in float32."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}


class Gated:
    """Row mixin (beyond the paper): features + g * booster(features) with a learnable per-channel gate g that
    starts at 0, so the network starts exactly as the CNN alone and opens the booster only if it helps."""

    spec_overrides: ClassVar[Mapping[str, Any]] = {"residual": "gated"}


class SafeCheckpointTrainer(nnUNetTrainer):
    """nnU-Net's trainer whose checkpoint reads (--c, --val, llm4seg resumes) never run pickled code: the file is
    read with weights_only=True first (read_checkpoint) and refused if it holds more than tensors and plain values;
    only then does nnU-Net load it. Every trainer this package ships derives from it."""

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        is_file = isinstance(filename_or_checkpoint, (str, os.PathLike))
        checkpoint = read_checkpoint(filename_or_checkpoint) if is_file else filename_or_checkpoint
        self.before_checkpoint_load(checkpoint, str(filename_or_checkpoint) if is_file else "given")
        super().load_checkpoint(str(filename_or_checkpoint) if is_file else checkpoint)

    def before_checkpoint_load(self, checkpoint: dict, where: str) -> None:
        """Called with the safely read checkpoint before nnU-Net loads it (subclasses check or adopt it)."""


class LLM4SegTrainer(SafeCheckpointTrainer):
    """nnUNetTrainer whose network carries an LLM4Seg booster (spec: plans entry, else the trainer's preset)."""

    default_preset: ClassVar[str] = "llama3.2-1b-l15"
    spec_overrides: ClassVar[Mapping[str, Any]] = {}
    schedule_epochs: ClassVar[int | None] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        configuration_dict = PlansManager(plans).get_configuration(configuration).configuration
        requested = requested_spec(configuration_dict, self.default_preset, {})
        spec = requested.replace(**self.row_overrides())
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule_epochs is not None:
            self.num_epochs = self.schedule_epochs
        self.weights_from_checkpoint = False
        self._install(spec)
        if PLANS_KEY in configuration_dict:
            self._log_row_overrides(requested, spec)

    # ---- the spec ----------------------------------------------------------------------------------
    @classmethod
    def row_overrides(cls) -> dict[str, Any]:
        """What the row fixes, whatever the plans entry says: the spec_overrides of every class in the
        hierarchy, the more specific winning (PaperUnfrozen = the paper's computation + trainable)."""
        overrides: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            overrides.update(vars(klass).get("spec_overrides", {}))
        return overrides

    def _log_row_overrides(self, entry: BoosterSpec, spec: BoosterSpec) -> None:
        """Say which values of the plans entry the row replaced (the row wins: e.g. LoRA rows fix their rank)."""
        replaced = entry.network_differences(spec)
        if replaced:
            self.print_to_log_file(f"LLM4Seg: {type(self).__name__} fixes {', '.join(replaced)}; the plans entry's "
                                   f"values are not used (plans entry vs trainer): {describe_differences(replaced)}. "
                                   "Use the plain row (e.g. nnUNetTrainerLLM4Seg) to train the entry as written.")

    @property
    def llm4seg_spec(self) -> BoosterSpec:
        return configured_spec(self.configuration_manager.configuration)

    def _install(self, spec: BoosterSpec) -> None:
        install_spec(self.plans_manager.plans, self.configuration_name, self.configuration_manager.configuration,
                     spec)

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
        stage = booster_stage_index(spec, len(unet.encoder.stages))
        check_token_budget(spec, configuration_manager.patch_size, cls.encoder_strides(configuration_manager), stage)
        return boost_unet(unet, spec)  # the LLM layer is allocated only now, after the checks

    @classmethod
    def encoder_strides(cls, configuration_manager: ConfigurationManager) -> list:
        """Per-stage strides of build_unet's encoder (nnU-Net's networks: the plans' pooling)."""
        return configuration_manager.pool_op_kernel_sizes

    @property
    def booster(self) -> LLMBooster:
        return unwrap(self.network).booster

    def initialize(self) -> None:
        """nnU-Net's initialize (network built, compiled, wrapped in DDP), then the pre-trained layer loaded,
        the same on every rank, in the precision this device supports."""
        super().initialize()
        spec = self.llm4seg_spec
        if spec.init in PRETRAINED_INITS and not self.weights_from_checkpoint:
            self._install(spec.replace(provenance=self.booster.load_pretrained(spec)))
        if self.is_ddp:
            broadcast_from_rank0(self.booster)
        self.booster_precision = self.booster.adopt_precision(self.device)
        self._log_booster()

    def on_epoch_end(self) -> None:
        """nnU-Net's epoch end, then the gate's size for gated boosters (is the LLM layer being used?)."""
        super().on_epoch_end()
        gate = self.booster.gate
        if gate is not None:
            size = gate.detach().abs().float()
            self.print_to_log_file(f"LLM4Seg gate |g|: mean {size.mean().item():.4g}, max {size.max().item():.4g}")

    def configure_optimizers(self):
        """nnU-Net's SGD + poly schedule, given only the trainable parameters (never the frozen LLM layer)."""
        optimizer = torch.optim.SGD(trainable_parameters(self.network), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # ---- checkpoints -------------------------------------------------------------------------------
    def before_checkpoint_load(self, checkpoint: dict, where: str) -> None:
        """Check that the checkpoint holds this trainer's network and adopt its spec (with the provenance of its
        weights) before the network is built."""
        if not self.was_initialized:
            stored = spec_in_checkpoint(checkpoint, self.configuration_name)
            if stored is not None:
                check_resume(self.llm4seg_spec, stored, where)
                self._install(stored)
            self.weights_from_checkpoint = True

    def on_train_start(self) -> None:
        """Load the layer first (initialize), so that a results folder of another network or other weights is
        refused before nnU-Net writes plans.json or any checkpoint."""
        if not self.was_initialized:
            self.initialize()
        stored = spec_in_results_plans(os.path.join(self.output_folder_base, "plans.json"), self.configuration_name)
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
        provenance = spec.weights.provenance or {}
        layer_state = "trainable" if spec.trainable else "frozen"
        rows = [
            ("source", f"{spec.weights.source}" + (f" @ {provenance['revision']}" if provenance.get("revision") else "")),
            ("family / layer", f"{spec.family}, layer index {spec.layer}"
                               + (f" (paper: {spec.paper_layer})" if spec.paper_layer else "")
                               + f", init {spec.init}, {layer_state}"),
            ("attention / positions", f"{spec.attention}, {spec.positions}"),
            ("precision", f"{self.booster_precision.path} on {self.device}; output adapter float32, outside "
                          "autocast; eager under torch.compile"),
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


@functools.cache
def schedule_variant(base: type[nnUNetTrainer], epochs: int, module: str) -> type[nnUNetTrainer]:
    """`base` trained for `epochs` epochs, named like nnU-Net's own variants (Base_1epoch, Base_<N>epochs); one
    class per (base, epochs), so that pickling and isinstance work across lookups."""
    name = f"{base.__name__}_{epochs}epoch{'s' if epochs != 1 else ''}"
    return type(name, (base,), {"schedule_epochs": epochs, "__module__": module, "__qualname__": name,
                                "__doc__": f"{base.__name__}, trained for {epochs} epoch(s)."})


def find_schedule_variant(name: str, bases: Mapping[str, type[nnUNetTrainer]], module: str) -> type[nnUNetTrainer]:
    """The class for a name like `nnUNetTrainerLLM4SegMiniLM_20epochs`, built on first use; AttributeError
    (what module attribute lookup expects) for any other name."""
    match = SCHEDULE_NAME.fullmatch(name)
    if match and match["base"] in bases:
        epochs = int(match["epochs"])
        if epochs >= 1 and name == f"{match['base']}_{epochs}epoch{'s' if epochs != 1 else ''}":
            return schedule_variant(bases[match["base"]], epochs, module)
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
