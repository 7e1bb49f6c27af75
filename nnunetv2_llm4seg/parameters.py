"""Parameter counts (trainable, frozen, per booster part); booster counts are computed on the meta device, so no
weights are downloaded or allocated."""
from __future__ import annotations

import math
from typing import Any

import torch

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.spec import BoosterSpec


def count_parameters(module: torch.nn.Module | torch.Tensor | None) -> int:
    if module is None:
        return 0
    return module.numel() if isinstance(module, torch.Tensor) else sum(p.numel() for p in module.parameters())


def trainable_and_frozen(module: torch.nn.Module) -> tuple[int, int]:
    """Parameter counts: those the optimizer trains (requires_grad) and the frozen rest."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, count_parameters(module) - trainable


def describe_booster(spec: BoosterSpec, channels: int, spatial: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Counts for the booster alone: adapters, the LLM layer, learned positions, trainable and frozen totals."""
    with torch.device("meta"):
        booster = LLMBooster(channels, spec)
    llm = booster.llm
    trainable, frozen = trainable_and_frozen(booster)
    lora = sum(p.numel() for name, p in booster.named_parameters() if ".lora_" in name)
    return {
        "preset": spec.name,
        "source": spec.weights.source,
        "family": spec.family,
        "layer": spec.layer,
        "paper_layer": spec.paper_layer,
        "hidden_size": spec.hidden_size,
        "channels": channels,
        "spatial": list(spatial) if spatial else None,
        "tokens": math.prod(spatial) if spatial else None,
        "init": spec.init,
        "trainable": spec.trainable,
        "attention": spec.attention,
        "positions": spec.positions,
        "dtype": spec.dtype,
        "residual": spec.residual,
        "lora": dict(spec.lora) if spec.lora is not None else None,
        "adapter_params": count_parameters(booster.adapter_in) + count_parameters(booster.adapter_out),
        "llm_layer_params": (count_parameters(llm.layer) - lora) if llm is not None else 0,
        "lora_params": lora,
        "gate_params": count_parameters(booster.gate),
        "position_params": count_parameters(getattr(llm, "position_table", None)),
        "trainable_params": trainable,
        "frozen_params": frozen,
    }
