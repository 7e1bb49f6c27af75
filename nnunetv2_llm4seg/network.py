"""nnU-Net's U-Net with the booster after one encoder stage: x -> encoder -> booster -> decoder."""
from __future__ import annotations

import math
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.spec import BoosterSpec


MAX_TOKENS = 4096  # per patch: attention cost grows with the square of the token count
MIN_TOKENS = 2  # attention over a single token is the identity: the layer would be a per-token MLP


def _stride_products(strides: Sequence[Sequence[int] | int], stage: int, dimensions: int) -> list[int]:
    """The total downsampling per axis from the input to the output of encoder stage `stage`."""
    total = [1] * dimensions
    for stride in strides[: stage + 1]:
        stride = [stride] * dimensions if isinstance(stride, int) else stride
        total = [t * s for t, s in zip(total, stride)]
    return total


def tokens_at_stage(patch_size: Sequence[int], strides: Sequence[Sequence[int] | int], stage: int) -> int:
    """Number of tokens the booster sees for a patch: the patch divided by the strides up to `stage`."""
    total = _stride_products(strides, stage, len(patch_size))
    return math.prod(size // t for size, t in zip(patch_size, total))


def check_token_budget(spec: BoosterSpec, patch_size: Sequence[int], strides: Sequence[Sequence[int] | int],
                       stage: int) -> None:
    """Refuse, before the LLM layer is allocated, a booster position whose token count is too small to attend
    over, beyond learned positions, or so large that the layer would dominate memory and time."""
    if not spec.has_llm_layer:
        return
    tokens = tokens_at_stage(patch_size, strides, stage)
    if tokens < MIN_TOKENS:
        total = _stride_products(strides, stage, len(patch_size))
        smallest = "x".join(map(str, total[:-1] + [2 * total[-1]]))
        raise SpecError(f"the booster would see {tokens} token(s) per patch of {'x'.join(map(str, patch_size))} at "
                        f"encoder stage {stage} (downsampled {'x'.join(map(str, total))}): attention needs at least "
                        f"{MIN_TOKENS}. Use a patch of at least {smallest} (e.g. in the plans), or put the booster one "
                        "stage higher ('stage': -2).")
    positions = spec.config.get("max_position_embeddings")
    if spec.family == "bert" and spec.positions == "native" and tokens > positions:
        raise SpecError(f"the booster would see {tokens} tokens per patch, but {spec.family} layers have learned "
                        f"positions for {positions} only: put the booster deeper ('stage': -1 is the bottleneck), "
                        "use a smaller patch, or set 'positions' to 'none'.")
    if tokens > MAX_TOKENS:
        raise SpecError(f"the booster would see {tokens} tokens per patch ({spec.hidden_size} hidden each); the "
                        f"supported budget is {MAX_TOKENS} (attention memory grows with tokens squared). Put the "
                        "booster deeper ('stage': -1 is the bottleneck) or use a smaller patch size.")


@runtime_checkable
class BoostableEncoder(Protocol):
    """What the booster needs from an encoder (nnU-Net's PlainConvEncoder and ResidualEncoder, CMUNeXtEncoder):
    the stages in order (stage 0 at full resolution) and their output widths; an optional `stem` runs first."""

    stages: Sequence[nn.Module]
    output_channels: Sequence[int]


@runtime_checkable
class BoostableUNet(Protocol):
    """A U-Net the booster can be put into: an `encoder` as above and a `decoder` that takes the list of stage
    outputs (nnU-Net's U-Nets and nnunetv2_llm4seg.cmunext.CMUNeXt)."""

    encoder: BoostableEncoder
    decoder: nn.Module


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
        before, after = self._stages_around_booster()
        skips = []
        for stage in before:
            x = stage(x)
            skips.append(x)
        # outside the loops: under torch.compile the (eager) booster is one graph break, the CNN two graphs
        x = skips[-1] = self.booster(x)
        for stage in after:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)

    def _stages_around_booster(self) -> tuple[list[nn.Module], list[nn.Module]]:
        stages = list(self.encoder.stages)
        return stages[: self.booster_stage + 1], stages[self.booster_stage + 1:]


def booster_stage_index(spec: BoosterSpec, n_stages: int) -> int:
    """The non-negative index of the stage the booster follows (spec.stage counts from the bottleneck)."""
    if -spec.stage > n_stages:
        raise SpecError(f"'stage' is {spec.stage}, but this network has {n_stages} encoder stages: "
                        f"use -1..-{n_stages}.")
    return n_stages + spec.stage


def boost_unet(unet: BoostableUNet, spec: BoosterSpec) -> BoostedUNet:
    """Wrap a U-Net (nnU-Net's PlainConvUNet, ResidualEncoderUNet, ..., or CMUNeXt) built and initialised by
    nnU-Net's trainer.

    The booster is created after nnU-Net's weight init ran, so that init never touches the LLM layer.
    """
    if not isinstance(unet, BoostableUNet) or not isinstance(unet.encoder, BoostableEncoder):
        raise SpecError(f"{type(unet).__name__} has no encoder.stages/encoder.output_channels and decoder, so the "
                        "booster cannot be placed in it: use one of nnU-Net's U-Nets (PlainConvUNet, "
                        "ResidualEncoderUNet) or CMUNeXt, or give your network that interface.")
    stage = booster_stage_index(spec, len(unet.encoder.stages))
    channels = unet.encoder.output_channels[stage]
    return BoostedUNet(unet.encoder, unet.decoder, LLMBooster(channels, spec), stage)
