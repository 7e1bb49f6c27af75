"""One transformers layer with explicit attention direction and position encoding, over (B, N, hidden) tokens.

transformers' sdpa attention is causal when no mask is passed and eager attention is bidirectional, so neither
default is trusted here: causal attention always gets an explicit mask, bidirectional attention none, and each
attention module's `is_causal` flag is set to match.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.families import get_family, head_dim, transformers_config
from nnunetv2_llm4seg.spec import BoosterSpec

DEFAULT_ATTN_IMPLEMENTATION = "sdpa"


def causal_mask(tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, N, N) mask: token i sees tokens 0..i only."""
    blocked = torch.full((tokens, tokens), torch.finfo(dtype).min, dtype=dtype, device=device)
    return blocked.triu(1)[None, None]


def _hidden_states(output: torch.Tensor | tuple) -> torch.Tensor:
    # transformers < 4.54 returns (hidden_states, ...); newer versions return the tensor itself.
    return output[0] if isinstance(output, tuple) else output


def stored_dtype(spec: BoosterSpec) -> torch.dtype:
    """The dtype a layer's weights are kept in: a frozen layer's compute dtype; float32 master weights when
    the layer is trained."""
    return torch.float32 if spec.trainable else getattr(torch, spec.dtype)


def _new_layer(layer_class: type, config, index: int, placeholder: torch.dtype | None) -> nn.Module:
    """The transformers layer; as a zero-filled placeholder of dtype `placeholder` when pre-trained weights will
    overwrite it anyway (allocating without random init is much faster for a 60M-parameter layer, and a bf16
    layer is never materialised in float32 first)."""
    if placeholder is None or torch.empty(()).is_meta:  # under torch.device("meta") nothing is materialised
        return layer_class(config, layer_idx=index)
    with torch.device("meta"):
        layer = layer_class(config, layer_idx=index).to(placeholder)
    layer = layer.to_empty(device="cpu")
    for tensor in layer.state_dict().values():
        tensor.zero_()
    return layer


def _set_causal_flags(module: nn.Module, causal: bool) -> None:
    for submodule in module.modules():
        if hasattr(submodule, "is_causal"):
            submodule.is_causal = causal


class _LayerBlock(nn.Module):
    """One transformers layer built from a spec, its attention direction fixed."""

    def __init__(self, spec: BoosterSpec, attn_implementation: str, placeholder: bool):
        super().__init__()
        family = get_family(spec.family)
        self.config = transformers_config(spec.family, spec.config, not spec.trainable, attn_implementation)
        self.layer = _new_layer(family.load_class(family.layer_class), self.config, spec.layer,
                                stored_dtype(spec) if placeholder else None)
        self.causal = spec.attention == "causal"
        _set_causal_flags(self.layer, self.causal)

    def attention_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return causal_mask(hidden.shape[1], hidden.dtype, hidden.device) if self.causal else None

    def store_weights_in(self, dtype: torch.dtype) -> None:
        """Cast the weights only: buffers such as the rotary frequencies stay float32, as in the model itself."""
        for module in self.weight_modules():
            module.to(dtype)

    def weight_modules(self) -> list[nn.Module]:
        return [self.layer]

    def attention_module(self) -> nn.Module:
        """The layer's self-attention module: it returns (output, attention weights) and picks its kernel from
        its config's `_attn_implementation`."""
        return self.layer.self_attn


class RotaryDecoderBlock(_LayerBlock):
    """A LLaMA / Qwen2 / Mistral decoder layer fed with rotary, no or paper-compatible positions."""

    def __init__(self, spec: BoosterSpec, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
                 placeholder: bool = False):
        super().__init__(spec, attn_implementation, placeholder)
        family = get_family(spec.family)
        self.rotary = family.load_class(family.rotary_class)(self.config) if spec.positions == "native" else None
        self.positions = spec.positions
        self.head_dim = head_dim(self.config)

    def position_embeddings(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) pair the layer unpacks, shape (1, N, head_dim) or (1, N, 1)."""
        tokens = hidden.shape[1]
        if self.positions == "native":
            position_ids = torch.arange(tokens, device=hidden.device)[None]
            return self.rotary(hidden, position_ids)
        if self.positions == "none":
            shape = (1, tokens, self.head_dim)
            return (torch.ones(shape, dtype=hidden.dtype, device=hidden.device),
                    torch.zeros(shape, dtype=hidden.dtype, device=hidden.device))
        # "paper": the official code builds sin and cos of the token index, shape (1, N, 1), and passes
        # them as [sin, cos] to a layer that unpacks (cos, sin): the swap is part of its behaviour.
        index = torch.arange(tokens, device=hidden.device, dtype=torch.float32).view(1, tokens, 1)
        return torch.sin(index).to(hidden.dtype), torch.cos(index).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = self.layer(hidden, attention_mask=self.attention_mask(hidden),
                            position_embeddings=self.position_embeddings(hidden))
        return _hidden_states(output)


class BertEncoderBlock(_LayerBlock):
    """A BERT encoder layer, optionally with the model's learned absolute position embeddings added first."""

    def __init__(self, spec: BoosterSpec, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
                 placeholder: bool = False):
        super().__init__(spec, attn_implementation, placeholder)
        self.position_table = (nn.Embedding(self.config.max_position_embeddings, self.config.hidden_size)
                               if spec.positions == "native" else None)

    def weight_modules(self) -> list[nn.Module]:
        return [self.layer] + ([self.position_table] if self.position_table is not None else [])

    def attention_module(self) -> nn.Module:
        return self.layer.attention.self

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        tokens = hidden.shape[1]
        if self.position_table is not None:
            if tokens > self.position_table.num_embeddings:
                raise SpecError(f"{tokens} tokens reach the booster, but this model has learned positions for "
                                f"{self.position_table.num_embeddings} only; use a smaller patch or a deeper "
                                "stage, or set positions to 'none'.")
            hidden = hidden + self.position_table.weight[:tokens].to(hidden.dtype)
        return _hidden_states(self.layer(hidden, attention_mask=self.attention_mask(hidden)))


def build_layer_block(spec: BoosterSpec, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
                      placeholder: bool = False) -> nn.Module:
    """The LLM layer block for a spec: initialised by its constructor, or (placeholder=True) zero-filled in
    stored_dtype(spec) for pre-trained weights that are loaded next."""
    block_class = BertEncoderBlock if spec.family == "bert" else RotaryDecoderBlock
    return block_class(spec, attn_implementation, placeholder)
