"""CMUNeXt (Tang et al., ISBI 2024) as an nnU-Net network: 2D or 3D from the patch size, nnU-Net deep supervision.

Our own implementation of the published architecture (github.com/FengheTan9/CMUNeXt): a conv stem, five
CMUNeXt blocks (large-kernel depthwise convolution in a residual, then an inverted bottleneck, then a 3x3 conv
to the stage width) with a 2x max-pool before the last four, and a decoder of (upsample, 3x3 conv) + Skip-Fusion
blocks. With deep supervision off it has exactly the published network's parameters in use.

Shaped like nnU-Net's U-Nets so that nnU-Net's trainer and the LLM4Seg booster (nnunetv2_llm4seg.network) work
unchanged: `encoder.stem`, `encoder.stages` (stage 0 at full resolution, stages 1.. = max-pool + block),
`encoder.output_channels`, and a `decoder` that takes the list of stage outputs and has nnU-Net's
`deep_supervision` switch and `seg_layers` (one 1x1 head per decoder stage, lowest resolution first).

Weights keep PyTorch's default initialisation, as in the official code, rather than nnU-Net's He init
(InitWeights_He, neg. slope 1e-2): the published results were obtained with it, every convolution is followed by
BatchNorm (which makes the conv weights' scale irrelevant to the forward pass), and He init targets the leaky
ReLUs of nnU-Net's own networks, whereas CMUNeXt's blocks use GELU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nnunetv2_llm4seg.errors import LLM4SegError

DEFAULT_DIMS = (16, 32, 128, 160, 256)
DEFAULT_DEPTHS = (1, 1, 1, 3, 1)
DEFAULT_KERNELS = (3, 3, 7, 7, 7)
EXPANSION = 4  # inverted-bottleneck width of the CMUNeXt and Skip-Fusion blocks


class PatchSizeError(LLM4SegError, ValueError):
    """The patch size cannot go through the network's poolings."""


@dataclass(frozen=True)
class Ops:
    """The layer types of one dimensionality."""

    conv: type[nn.Module]
    norm: type[nn.Module]
    pool: type[nn.Module]
    upsample_mode: str


OPS = {2: Ops(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, "bilinear"),
       3: Ops(nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, "trilinear")}


def patch_multiple(stages: int = len(DEFAULT_DIMS)) -> int:
    """What every patch axis must be divisible by: each of the stages after the first halves it."""
    return 2 ** (stages - 1)


def check_patch_size(patch_size: Sequence[int], stages: int = len(DEFAULT_DIMS)) -> None:
    """Refuse patches of the wrong dimensionality or with an axis the poolings cannot halve evenly."""
    if len(patch_size) not in OPS:
        raise PatchSizeError(f"CMUNeXt takes 2D or 3D patches; patch size {list(patch_size)} has "
                             f"{len(patch_size)} axes.")
    multiple = patch_multiple(stages)
    if any(size % multiple for size in patch_size):
        suggestion = [max(multiple, size // multiple * multiple) for size in patch_size]
        raise PatchSizeError(
            f"CMUNeXt halves every axis {stages - 1} times, so each patch axis must be divisible by {multiple}; "
            f"patch size {list(patch_size)} is not. Set \"patch_size\" of this configuration in the nnU-Net plans "
            f"(nnUNetPlans.json in the dataset's nnUNet_preprocessed folder) to e.g. {suggestion}, "
            f"or add a configuration inheriting from it with that patch size.")


def deep_supervision_scales(ndim: int, stages: int = len(DEFAULT_DIMS)) -> list[list[float]]:
    """Scales of the deep-supervision outputs relative to the patch, highest resolution first (for nnU-Net's
    target downsampling): one per decoder stage, i.e. 1, 1/2, ..., 1/2**(stages-2)."""
    return [[1 / 2 ** level] * ndim for level in range(stages - 1)]


class ConvNormReLU(nn.Sequential):
    """3x3 convolution, BatchNorm, ReLU: the stem and the end of every CMUNeXt block."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int):
        super().__init__(ops.conv(in_channels, out_channels, 3, padding=1), ops.norm(out_channels),
                         nn.ReLU(inplace=True))


class DepthwiseMixer(nn.Module):
    """x + BN(GELU(depthwise k x k conv(x))): large-kernel spatial mixing with a residual."""

    def __init__(self, ops: Ops, channels: int, kernel_size: int):
        super().__init__()
        self.mix = nn.Sequential(ops.conv(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels),
                                 nn.GELU(), ops.norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


def pointwise_gelu_norm(ops: Ops, in_channels: int, out_channels: int) -> list[nn.Module]:
    return [ops.conv(in_channels, out_channels, 1), nn.GELU(), ops.norm(out_channels)]


class CMUNeXtLayer(nn.Sequential):
    """Depthwise mixer, then an inverted bottleneck (1x1 to 4x channels and back), each conv followed by GELU+BN."""

    def __init__(self, ops: Ops, channels: int, kernel_size: int):
        super().__init__(DepthwiseMixer(ops, channels, kernel_size),
                         *pointwise_gelu_norm(ops, channels, channels * EXPANSION),
                         *pointwise_gelu_norm(ops, channels * EXPANSION, channels))


class CMUNeXtBlock(nn.Sequential):
    """`depth` CMUNeXt layers at the input width, then a 3x3 conv to the output width."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int, depth: int, kernel_size: int):
        super().__init__(*[CMUNeXtLayer(ops, in_channels, kernel_size) for _ in range(depth)],
                         ConvNormReLU(ops, in_channels, out_channels))


class SkipFusion(nn.Sequential):
    """Fuses [skip, upsampled] (concatenated in that order): a 3x3 conv in two groups (each half on its own), then
    an inverted bottleneck to the output width; every conv followed by GELU+BN."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int):
        super().__init__(ops.conv(in_channels, in_channels, 3, padding=1, groups=2), nn.GELU(),
                         ops.norm(in_channels),
                         *pointwise_gelu_norm(ops, in_channels, out_channels * EXPANSION),
                         *pointwise_gelu_norm(ops, out_channels * EXPANSION, out_channels))


class UpConv(nn.Sequential):
    """2x (bi/tri)linear upsampling, then 3x3 conv, BN, ReLU."""

    def __init__(self, ops: Ops, in_channels: int, out_channels: int):
        super().__init__(nn.Upsample(scale_factor=2, mode=ops.upsample_mode),
                         ConvNormReLU(ops, in_channels, out_channels))


class CMUNeXtEncoder(nn.Module):
    """stem -> stages; returns every stage's output (the skips, the last one being the bottleneck)."""

    def __init__(self, ops: Ops, input_channels: int, dims: Sequence[int], depths: Sequence[int],
                 kernels: Sequence[int]):
        super().__init__()
        self.stem = ConvNormReLU(ops, input_channels, dims[0])
        stages = [CMUNeXtBlock(ops, dims[0], dims[0], depths[0], kernels[0])]
        stages += [nn.Sequential(ops.pool(2, 2), CMUNeXtBlock(ops, dims[i - 1], dims[i], depths[i], kernels[i]))
                   for i in range(1, len(dims))]
        self.stages = nn.ModuleList(stages)
        self.output_channels = list(dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class CMUNeXtDecoder(nn.Module):
    """From the bottleneck up: upsample + conv, concatenate with the skip, Skip-Fusion; a 1x1 head per stage.

    Like nnU-Net's UNetDecoder: with `deep_supervision` a list of logits, highest resolution first; without it
    only the full-resolution logits (the other heads are not run).
    """

    def __init__(self, ops: Ops, dims: Sequence[int], num_classes: int, deep_supervision: bool):
        super().__init__()
        levels = range(len(dims) - 2, -1, -1)  # decoder stages, lowest resolution first
        self.upsamplers = nn.ModuleList([UpConv(ops, dims[level + 1], dims[level]) for level in levels])
        self.fusions = nn.ModuleList([SkipFusion(ops, 2 * dims[level], dims[level]) for level in levels])
        self.seg_layers = nn.ModuleList([ops.conv(dims[level], num_classes, 1) for level in levels])
        self.deep_supervision = deep_supervision

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        last = len(self.fusions) - 1
        outputs = []
        for index, (upsample, fuse, head) in enumerate(zip(self.upsamplers, self.fusions, self.seg_layers)):
            x = fuse(torch.cat((skips[-index - 2], upsample(x)), dim=1))
            if self.deep_supervision or index == last:
                outputs.append(head(x))
        return outputs[::-1] if self.deep_supervision else outputs[0]


class CMUNeXt(nn.Module):
    """CMUNeXt for nnU-Net: 2D or 3D (depthwise 3D convolutions) by the patch size's number of axes."""

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 deep_supervision: bool = False, dims: Sequence[int] = DEFAULT_DIMS,
                 depths: Sequence[int] = DEFAULT_DEPTHS, kernels: Sequence[int] = DEFAULT_KERNELS):
        super().__init__()
        if not len(dims) == len(depths) == len(kernels) >= 2:
            raise ValueError(f"dims, depths and kernels need one entry per stage (at least 2), got {len(dims)}, "
                             f"{len(depths)} and {len(kernels)}.")
        check_patch_size(patch_size, len(dims))
        ops = OPS[len(patch_size)]
        self.encoder = CMUNeXtEncoder(ops, input_channels, dims, depths, kernels)
        self.decoder = CMUNeXtDecoder(ops, dims, num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))
