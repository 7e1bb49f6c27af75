"""The attention the booster's LLM layer really uses, computed explicitly, and what the booster changes.

The layer normally runs a fused kernel (sdpa), which never materialises attention probabilities. Here the same
layer runs once more with transformers' own eager attention (`eager_attention_forward` of its modeling module:
q/k/v projections, the positions exactly as the block feeds them, key/value heads repeated for GQA, scaling, the
block's mask or none, softmax, probabilities @ values, o_proj) on a copy of its config, so the probabilities are
the ones the returned output is computed from; tests show that output equals the normal forward.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from nnunetv2_llm4seg.booster import LLMBooster, features_to_tokens
from nnunetv2_llm4seg.errors import LLM4SegError

EXPLICIT_ATTENTION = "eager"


@dataclass
class BoosterTrace:
    """One booster call, made explicit."""

    features: torch.Tensor  # (B, C, *grid): the booster's input
    output: torch.Tensor  # (B, C, *grid): its output, computed from `attention`
    attention: torch.Tensor  # (B, heads, N, N) float32: row i = what token i attends to, N = prod(grid)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.features.shape[2:])

    def contribution(self) -> torch.Tensor:
        """(B, N): |booster(f) - f| per token, the Euclidean norm over channels."""
        return features_to_tokens((self.output - self.features).float()).norm(dim=-1)


@contextmanager
def explicit_attention(booster: LLMBooster) -> Iterator[list[torch.Tensor]]:
    """Within the block, the booster's layer computes attention with transformers' eager attention and every call
    appends its probabilities (B, heads, N, N) to the yielded list; the layer and its config are restored after."""
    if booster.llm is None:
        raise LLM4SegError("this booster has no LLM layer (init 'none': adapters only), so there is no attention "
                           "to show; explain a row with a pre-trained or random layer.")
    attention = booster.llm.attention_module()
    original_config = attention.config
    explicit_config = copy.copy(original_config)
    explicit_config._attn_implementation = EXPLICIT_ATTENTION
    recorded: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        recorded.append(output[1].detach().float())

    handle = attention.register_forward_hook(record)
    attention.config = explicit_config
    try:
        yield recorded
    finally:
        attention.config = original_config
        handle.remove()


@torch.no_grad()
def trace_booster(booster: LLMBooster, features: torch.Tensor) -> BoosterTrace:
    """Run the booster on `features` with explicit attention (in its current mode: use eval() for inference)."""
    with explicit_attention(booster) as recorded:
        output = booster(features)
    return BoosterTrace(features=features.detach(), output=output.detach(), attention=recorded[-1])


def token_coordinates(grid: tuple[int, ...]) -> torch.Tensor:
    """(N, dims) float positions of the tokens in row-major order, the order of features_to_tokens."""
    axes = torch.meshgrid(*(torch.arange(size, dtype=torch.float32) for size in grid), indexing="ij")
    return torch.stack([axis.flatten() for axis in axes], dim=-1)


def head_statistics(attention: torch.Tensor, grid: tuple[int, ...],
                    foreground: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Per head of one sample's attention (heads, N, N), averaged over the query tokens: entropy in nats (how
    spread out; log N is uniform), mean attention distance in tokens (how far it looks), and with `foreground`
    (N,) fractions of each token's area, the share of attention on foreground (uniform attention gives the
    foreground's share of the area)."""
    attention = attention.float()
    entropy = -(attention * attention.clamp_min(1e-30).log()).sum(-1).mean(-1)
    coordinates = token_coordinates(grid).to(attention.device)
    distance = (attention * torch.cdist(coordinates, coordinates)).sum(-1).mean(-1)
    share = (attention @ foreground.float().to(attention.device)).mean(-1) if foreground is not None else None
    return [{"head": head, "entropy": float(entropy[head]), "mean_distance_tokens": float(distance[head]),
             **({"foreground_share": float(share[head])} if share is not None else {})}
            for head in range(attention.shape[0])]
