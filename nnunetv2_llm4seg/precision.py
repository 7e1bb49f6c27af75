"""Which dtype the booster's LLM layer computes in on a given device.

The presets ask for bfloat16 (LLM activations overflow float16, trap 7). GPUs before compute capability 8.0
(V100, T4, RTX 20xx) have no native bfloat16: torch emulates it slowly in eager mode and refuses bf16 autocast
there. On such a GPU the layer computes in float32 instead (a frozen layer's stored weights are cast once; the
values are exactly those of the bf16 checkpoint), and the training log says so. Everywhere else the spec's dtype
is used as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BFLOAT16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    """The dtype the layer computes in on one device, and in words why (the "dtype path")."""

    dtype: torch.dtype
    path: str


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of a CUDA device; None on ROCm, whose GPUs report no CUDA capability."""
    if torch.version.hip is not None:
        return None
    return torch.cuda.get_device_capability(device)


def layer_precision(requested: torch.dtype, device: torch.device) -> Precision:
    """float32 in place of bfloat16 on a CUDA GPU without native bfloat16; the requested dtype otherwise."""
    if requested != torch.bfloat16:
        return Precision(requested, f"{_name(requested)} (as the spec asks)")
    if device.type != "cuda":
        return Precision(requested, f"bfloat16 on {device.type}")
    capability = cuda_capability(device)
    if capability is None or capability >= BFLOAT16_CAPABILITY:
        return Precision(requested, "bfloat16 (native)")
    return Precision(torch.float32,
                     f"float32 fallback: {torch.cuda.get_device_name(device)} (compute capability "
                     f"{capability[0]}.{capability[1]}) has no native bfloat16, which needs "
                     f"{BFLOAT16_CAPABILITY[0]}.{BFLOAT16_CAPABILITY[1]}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
