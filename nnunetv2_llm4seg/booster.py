"""The LLM4Seg booster: features -> tokens -> adapter -> one LLM layer -> adapter -> features."""
from __future__ import annotations

import json
import weakref
from typing import Any

import torch
from torch import nn

from nnunetv2_llm4seg.errors import CheckpointError, SpecConflictError, SpecError
from nnunetv2_llm4seg.layers import DEFAULT_ATTN_IMPLEMENTATION, build_layer_block, stored_dtype
from nnunetv2_llm4seg.precision import Precision, layer_precision
from nnunetv2_llm4seg.spec import PRETRAINED_INITS, BoosterSpec, describe_differences


def features_to_tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C) with N = prod(spatial), in row-major spatial order."""
    return features.flatten(2).transpose(1, 2)


def tokens_to_features(tokens: torch.Tensor, spatial: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """(B, N, C) -> (B, C, *spatial); the inverse of features_to_tokens."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *spatial)


def init_linear_like_paper(module: nn.Module) -> None:
    """The official code's need_init: xavier-uniform weights and zero biases for every nn.Linear, nothing else."""
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            nn.init.xavier_uniform_(submodule.weight)
            if submodule.bias is not None:
                nn.init.zeros_(submodule.bias)


def init_like_paper(module: nn.Module) -> None:
    """A random layer of the same shape: nn.Linear as the official code, unit LayerNorms, small embeddings (RMSNorm
    gains are ones from their constructor)."""
    init_linear_like_paper(module)
    for submodule in module.modules():
        if isinstance(submodule, nn.LayerNorm):
            nn.init.ones_(submodule.weight)
            nn.init.zeros_(submodule.bias)
        elif isinstance(submodule, nn.Embedding):
            nn.init.normal_(submodule.weight, std=0.01)


def add_lora(layer: nn.Module, spec: BoosterSpec) -> None:
    """PEFT LoRA adapters (float32, trainable) on the frozen layer's projections; the layer itself stays frozen
    in its compute dtype. PEFT is imported only here: rows without LoRA never import it."""
    from peft import LoraConfig, inject_adapter_in_model

    from nnunetv2_llm4seg.spec import lora_targets

    options = spec.lora or {}
    names = [name for name, module in layer.named_modules() if isinstance(module, nn.Linear)]
    unknown = [target for target in lora_targets(spec)
               if not any(name == target or name.endswith("." + target) for name in names)]
    if unknown:
        linear = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise SpecError(f"'lora.target_modules' names {', '.join(map(repr, unknown))}, which this {spec.family} "
                        f"layer does not have; its linear modules are {', '.join(linear)} (or use null for the "
                        "family's default).")
    config = LoraConfig(r=options.get("rank", 8), lora_alpha=options.get("alpha", 16),
                        lora_dropout=options.get("dropout", 0.0), target_modules=list(lora_targets(spec)),
                        bias="none")
    inject_adapter_in_model(config, layer)
    for name, parameter in layer.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)


def encode_network_spec(spec: BoosterSpec) -> torch.Tensor:
    """The fields that define the network, as UTF-8 JSON bytes in a uint8 tensor (stored with the weights)."""
    text = json.dumps(spec.network_dict(), sort_keys=True)
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def decode_network_spec(stored: torch.Tensor) -> dict:
    return json.loads(bytes(stored.cpu().tolist()).decode())


class LLMBooster(nn.Module):
    """Adapters C -> hidden -> C around one (frozen) LLM layer; any 2D/3D shape, batch size and device.

    Precision: the LLM layer computes in the spec's dtype (float32 where the device has no native bfloat16, see
    precision.py) and the output adapter in float32, outside nnU-Net's fp16 autocast. A frozen layer is stored in
    its compute dtype; a trainable one keeps float32 weights and computes under bf16 autocast when the spec asks
    for bfloat16. A frozen layer has requires_grad False but passes gradients through to the adapters and CNN.

    torch.compile: the booster always runs eagerly (one graph break). A compiled backward re-applies the forward's
    outer autocast to everything it traced (torch._functorch.config.backward_pass_autocast, "same_as_forward" by
    default), so inside any compiled network under nnU-Net's fp16 autocast the booster's backward would run in
    fp16: gradients that differ from eager and overflow where eager does not. Eager, its backward is exactly
    eager autograd's, whoever compiles the network around it (nnU-Net's trainer, its predictor, a user's loop).
    """

    def __init__(self, channels: int, spec: BoosterSpec, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION):
        super().__init__()
        self.adapter_in = nn.Linear(channels, spec.hidden_size)
        # pre-trained weights are loaded right after (or come with a checkpoint): zeros until then
        self.llm = (build_layer_block(spec, attn_implementation, placeholder=spec.init in PRETRAINED_INITS)
                    if spec.has_llm_layer else None)
        self.adapter_out = nn.Linear(spec.hidden_size, channels)
        self.residual = spec.residual
        # "gated": one learnable gate per channel, 0 at the start: the network starts as the CNN alone
        self.gate = nn.Parameter(torch.zeros(channels)) if spec.residual == "gated" else None
        self.requested_dtype = getattr(torch, spec.dtype)
        self.compute_dtype = self.requested_dtype
        self.precision_device: torch.device | None = None
        self.llm_trainable = spec.trainable
        self._frozen_loads: dict[str, tuple] = {}  # what each frozen tensor last received from a state dict
        self._pending_loads: dict[str, torch.Tensor] = {}
        self.awaiting_weights = spec.init in PRETRAINED_INITS
        # what this network computes travels with its weights, so a checkpoint is never loaded into another network
        self.register_buffer("network_spec", encode_network_spec(spec))
        self._register_load_state_dict_pre_hook(self._check_stored_spec)
        self.register_load_state_dict_post_hook(self._weights_arrived)
        self._register_load_state_dict_pre_hook(self._skip_unchanged_frozen_tensors)
        if self.llm is not None:
            if spec.init == "random":
                init_like_paper(self.llm)
            self.llm.store_weights_in(stored_dtype(spec))
            self.llm.requires_grad_(spec.trainable)
            if spec.lora is not None:
                add_lora(self.llm.layer, spec)

    def load_pretrained(self, spec: BoosterSpec) -> dict[str, Any]:
        """Read the layer from the spec's source into place (and re-initialise its nn.Linear weights for
        init "random-linear"); returns the provenance of what was read."""
        from nnunetv2_llm4seg.loading import load_into_block

        provenance = load_into_block(spec, self.llm)
        if spec.init == "random-linear":
            init_linear_like_paper(self.llm)
        self.awaiting_weights = False
        return provenance

    def _check_stored_spec(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Before a state dict is loaded: it must come from a network with the same spec (checkpoints written
        before the spec was stored are checked by shape only)."""
        key = prefix + "network_spec"
        if key not in state_dict:
            state_dict[key] = self.network_spec
        mine, stored = decode_network_spec(self.network_spec), decode_network_spec(state_dict[key])
        differing = {k: (stored.get(k), mine.get(k)) for k in sorted(set(mine) | set(stored))
                     if mine.get(k) != stored.get(k)}
        if differing:
            text = describe_differences(differing)
            raise SpecConflictError(
                f"these weights were trained with another LLM4Seg spec than the one this network was built from "
                f"(the llm4seg entry of the plans.json next to them). Differing fields (weights vs plans): {text}. "
                "Nothing was loaded. Use the plans.json of the model folder the checkpoint belongs to (restore the "
                "edited llm4seg entry).")
        for name, tensor in self.state_dict().items():
            loaded = state_dict.get(prefix + name)
            if loaded is not None and tuple(loaded.shape) != tuple(tensor.shape):
                raise SpecConflictError(
                    f"the checkpoint's booster.{name} has shape {tuple(loaded.shape)}, but the spec this network was "
                    f"built from gives {tuple(tensor.shape)} (hidden size {self.adapter_in.out_features}): the "
                    "plans.json (llm4seg entry) and the checkpoint come from different runs. Use the plans.json "
                    "of the model folder the checkpoint belongs to.")

    def _frozen_llm_tensors(self) -> dict[str, torch.Tensor]:
        if self.llm is None:
            return {}
        return {f"llm.{name}": parameter for name, parameter in self.llm.named_parameters()
                if not parameter.requires_grad}

    def _skip_unchanged_frozen_tensors(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """nnU-Net's predictor loads the same checkpoint tensors into the network for every case and fold: a
        frozen tensor that received exactly this source tensor last time (same object, neither side modified
        since) is not copied again (the layer is 116 MiB for LLaMA). Anything else is loaded as usual."""
        pending = {}
        for name, parameter in self._frozen_llm_tensors().items():
            source = state_dict.get(prefix + name)
            if not isinstance(source, torch.Tensor):
                continue
            last = self._frozen_loads.get(name)
            if last is not None and last[0]() is source and last[1:] == (source._version, parameter.data_ptr(),
                                                                         parameter._version):
                state_dict[prefix + name] = parameter.detach()  # a copy onto itself costs nothing
            pending[name] = source
        self._pending_loads = pending

    def _weights_arrived(self, module: nn.Module, incompatible: Any) -> None:
        if not any(key.startswith("llm.") or ".llm." in key for key in incompatible.missing_keys):
            self.awaiting_weights = False
        frozen = self._frozen_llm_tensors()
        self._frozen_loads = {name: (weakref.ref(source), source._version, frozen[name].data_ptr(),
                                     frozen[name]._version)
                              for name, source in self._pending_loads.items()}
        self._pending_loads = {}

    def adopt_precision(self, device: torch.device) -> Precision:
        """Compute in the dtype this device supports (precision.py); a frozen layer's stored weights follow."""
        precision = layer_precision(self.requested_dtype, device)
        if precision.dtype != self.compute_dtype:
            if self.llm is not None and not self.llm_trainable:
                self.llm.store_weights_in(precision.dtype)
            self.compute_dtype = precision.dtype
        self.precision_device = device
        return precision

    @torch.compiler.disable
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.awaiting_weights:
            raise CheckpointError(
                "the pre-trained LLM layer of this booster was never loaded (its weights are zero placeholders). "
                "Call booster.load_pretrained(spec) (the LLM4Seg trainers do this in initialize()) or load a "
                "checkpoint's state dict before running the network.")
        if features.device != self.precision_device:
            self.adopt_precision(features.device)
        tokens = features_to_tokens(features)
        hidden = self.adapter_in(tokens)
        # LLM activations can exceed fp16's range: the layer and the adapter that reads it run outside autocast.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if self.llm is not None:
                hidden = self._run_llm(hidden)
            boosted = self.adapter_out(hidden.to(self.adapter_out.weight.dtype))
        boosted = tokens_to_features(boosted, features.shape[2:])
        if self.gate is not None:
            return features + self.gate.view(1, -1, *([1] * (features.dim() - 2))) * boosted
        return features + boosted if self.residual else boosted

    def _run_llm(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.llm_trainable and self.compute_dtype != torch.float32:
            # float32 master weights (optimizer updates are not lost to rounding), compute in the spec's dtype
            with torch.autocast(device_type=hidden.device.type, dtype=self.compute_dtype):
                return self.llm(hidden.float())
        return self.llm(hidden.to(self.compute_dtype))
