"""nnU-Net's U-Net with the booster after one encoder stage: x -> encoder -> booster -> decoder."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.spec import BoosterSpec


class BoostedUNet(nn.Module):
    """Keeps nnU-Net's `encoder` and `decoder` (so deep supervision, DDP, compile and inference work unchanged)
    and runs the booster on the output of encoder stage `booster_stage`, which then feeds both that stage's skip
    connection and the next stage (for the last stage: the decoder)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, booster: LLMBooster, booster_stage: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.booster = booster
        self.booster_stage = booster_stage

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if getattr(self.encoder, "stem", None) is not None:
            x = self.encoder.stem(x)
        skips = []
        for index, stage in enumerate(self.encoder.stages):
            x = stage(x)
            if index == self.booster_stage:
                x = self.booster(x)
            skips.append(x)
        return self.decoder(skips)


def booster_stage_index(spec: BoosterSpec, n_stages: int) -> int:
    """The non-negative index of the stage the booster follows (spec.stage counts from the bottleneck)."""
    if -spec.stage > n_stages:
        raise SpecError(f"'stage' is {spec.stage}, but this network has {n_stages} encoder stages: "
                        f"use -1..-{n_stages}.")
    return n_stages + spec.stage


def tokens_at_stage(patch_size: Sequence[int], strides: Sequence[Sequence[int] | int], stage: int) -> int:
    """Number of tokens the booster sees for a patch: the patch divided by the strides up to `stage`."""
    spatial = list(patch_size)
    for stride in strides[: stage + 1]:
        stride = [stride] * len(spatial) if isinstance(stride, int) else stride
        spatial = [size // s for size, s in zip(spatial, stride)]
    return math.prod(spatial)


def boost_unet(unet: nn.Module, spec: BoosterSpec) -> BoostedUNet:
    """Wrap an nnU-Net U-Net (PlainConvUNet, ResidualEncoderUNet, ...) built and initialised by nnU-Net.

    The booster is created after nnU-Net's weight init ran, so that init never touches the LLM layer.
    """
    stage = booster_stage_index(spec, len(unet.encoder.stages))
    channels = unet.encoder.output_channels[stage]
    return BoostedUNet(unet.encoder, unet.decoder, LLMBooster(channels, spec), stage)
