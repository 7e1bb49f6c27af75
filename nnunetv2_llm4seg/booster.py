"""The LLM4Seg booster: features -> tokens -> adapter -> one LLM layer -> adapter -> features."""
from __future__ import annotations

import torch
from torch import nn

from nnunetv2_llm4seg.layers import DEFAULT_ATTN_IMPLEMENTATION, build_layer_block
from nnunetv2_llm4seg.spec import BoosterSpec


def features_to_tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C) with N = prod(spatial), in row-major spatial order."""
    return features.flatten(2).transpose(1, 2)


def tokens_to_features(tokens: torch.Tensor, spatial: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """(B, N, C) -> (B, C, *spatial); the inverse of features_to_tokens."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *spatial)


def init_like_paper(module: nn.Module) -> None:
    """The official code's random init for its "Transformer" ablation: xavier-uniform weights, zero biases."""
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            nn.init.xavier_uniform_(submodule.weight)
            if submodule.bias is not None:
                nn.init.zeros_(submodule.bias)
        elif isinstance(submodule, nn.LayerNorm):
            nn.init.ones_(submodule.weight)
            nn.init.zeros_(submodule.bias)
        elif isinstance(submodule, nn.Embedding):
            nn.init.normal_(submodule.weight, std=0.01)


class LLMBooster(nn.Module):
    """Adapters C -> hidden -> C around one (frozen) LLM layer; any 2D/3D shape, batch size and device.

    The LLM layer computes in the spec's dtype and the output adapter in float32, outside nnU-Net's fp16
    autocast. A frozen layer is stored in the compute dtype; a trainable one keeps float32 weights and computes
    under bf16 autocast when the spec asks for bfloat16. A frozen layer has requires_grad False but passes
    gradients through to the adapters and CNN.
    """

    def __init__(self, channels: int, spec: BoosterSpec, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION):
        super().__init__()
        self.adapter_in = nn.Linear(channels, spec.hidden_size)
        # pre-trained weights are loaded right after (or come with a checkpoint): zeros until then
        self.llm = (build_layer_block(spec, attn_implementation, placeholder=spec.init == "pretrained")
                    if spec.has_llm_layer else None)
        self.adapter_out = nn.Linear(spec.hidden_size, channels)
        self.residual = spec.residual
        self.compute_dtype = getattr(torch, spec.dtype)
        self.llm_trainable = spec.trainable
        if self.llm is not None:
            if spec.init == "random":
                init_like_paper(self.llm)
            if not spec.trainable:  # a frozen layer is stored in its compute dtype; a trainable one keeps fp32
                self.llm.store_weights_in(self.compute_dtype)
            self.llm.requires_grad_(spec.trainable)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features_to_tokens(features)
        hidden = self.adapter_in(tokens)
        # LLM activations can exceed fp16's range: the layer and the adapter that reads it run outside autocast.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if self.llm is not None:
                hidden = self._run_llm(hidden)
            boosted = self.adapter_out(hidden.to(self.adapter_out.weight.dtype))
        boosted = tokens_to_features(boosted, features.shape[2:])
        return features + boosted if self.residual else boosted

    def _run_llm(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.llm_trainable and self.compute_dtype != torch.float32:
            # float32 master weights (optimizer updates are not lost to rounding), compute in the spec's dtype
            with torch.autocast(device_type=hidden.device.type, dtype=self.compute_dtype):
                return self.llm(hidden.float())
        return self.llm(hidden.to(self.compute_dtype))
