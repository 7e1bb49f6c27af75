"""nnU-Net's U-Net with the booster after one encoder stage: x -> encoder -> booster -> decoder."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.errors import SpecConflictError, SpecError
from nnunetv2_llm4seg.spec import BoosterSpec


MAX_TOKENS = 4096  # per patch: attention cost grows with the square of the token count


def check_token_budget(spec: BoosterSpec, tokens: int) -> None:
    """Refuse a booster position whose token count would make the LLM layer dominate memory and time."""
    positions = spec.config.get("max_position_embeddings")
    if spec.has_llm_layer and spec.family == "bert" and spec.positions == "native" and tokens > positions:
        raise SpecError(f"the booster would see {tokens} tokens per patch, but {spec.family} layers have learned "
                        f"positions for {positions} only: put the booster deeper ('stage': -1 is the bottleneck), "
                        "use a smaller patch, or set 'positions' to 'none'.")
    if spec.has_llm_layer and tokens > MAX_TOKENS:
        raise SpecError(f"the booster would see {tokens} tokens per patch ({spec.hidden_size} hidden each); the "
                        f"supported budget is {MAX_TOKENS} (attention memory grows with tokens squared). Put the "
                        "booster deeper ('stage': -1 is the bottleneck) or use a smaller patch size.")


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

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nnU-Net's load_state_dict, with a clear error when the checkpoint's booster has another shape."""
        for name, tensor in self.booster.state_dict().items():
            stored = state_dict.get(f"booster.{name}")
            if stored is not None and tuple(stored.shape) != tuple(tensor.shape):
                raise SpecConflictError(
                    f"the checkpoint's booster.{name} has shape {tuple(stored.shape)}, but the spec this network was "
                    f"built from gives {tuple(tensor.shape)} (hidden size {self.booster.adapter_in.out_features}): "
                    "the plans.json (llm4seg entry) and the checkpoint come from different runs. Use the plans.json "
                    "of the model folder the checkpoint belongs to.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


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
