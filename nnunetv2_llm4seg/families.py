"""Model families we can take a layer from: their config checks, layer classes and checkpoint names."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from nnunetv2_llm4seg.errors import SpecError

# Refuse configs that would allocate absurd amounts of memory before building anything.
MAX_HIDDEN_SIZE = 65536
MAX_INTERMEDIATE_SIZE = 262144
MAX_HEADS = 1024
MAX_LAYERS = 4096
MAX_POSITIONS = 1 << 20
MAX_LAYER_PARAMETERS = 10_000_000_000


@dataclass(frozen=True)
class Family:
    """Where a family's classes live in transformers and how its checkpoints name one layer."""

    name: str
    config_class: str
    layer_class: str
    rotary_class: str | None
    layer_prefixes: tuple[str, ...]
    position_table_names: tuple[str, ...] = ()

    def load_class(self, dotted: str) -> type:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _decoder_family(name: str, module: str, prefix: str) -> Family:
    return Family(
        name=name,
        config_class=f"transformers.models.{module}.configuration_{module}.{prefix}Config",
        layer_class=f"transformers.models.{module}.modeling_{module}.{prefix}DecoderLayer",
        rotary_class=f"transformers.models.{module}.modeling_{module}.{prefix}RotaryEmbedding",
        layer_prefixes=("model.layers.{index}.", "layers.{index}.", "model.model.layers.{index}."),
    )


FAMILIES: dict[str, Family] = {
    "llama": _decoder_family("llama", "llama", "Llama"),
    "qwen2": _decoder_family("qwen2", "qwen2", "Qwen2"),
    "mistral": _decoder_family("mistral", "mistral", "Mistral"),
    "bert": Family(
        name="bert",
        config_class="transformers.models.bert.configuration_bert.BertConfig",
        layer_class="transformers.models.bert.modeling_bert.BertLayer",
        rotary_class=None,
        layer_prefixes=("encoder.layer.{index}.", "bert.encoder.layer.{index}."),
        position_table_names=("embeddings.position_embeddings.weight", "bert.embeddings.position_embeddings.weight"),
    ),
}

_REQUIRED = {
    "llama": ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"),
    "bert": ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
             "max_position_embeddings"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise SpecError(f"model family {name!r} is not supported; supported families: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def _positive_int(config: Mapping[str, Any], key: str, limit: int) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SpecError(f"config.{key} must be a positive integer, got {value!r}.")
    if value > limit:
        raise SpecError(f"config.{key} = {value} is beyond the supported maximum of {limit}; "
                        "this does not look like a real model config.")
    return value


def check_architecture_config(family: str, config: Mapping[str, Any]) -> None:
    """Reject missing, non-positive or absurd sizes before anything is allocated."""
    get_family(family)
    required = _REQUIRED.get(family, _REQUIRED["llama"])
    missing = [key for key in required if key not in config]
    if missing:
        raise SpecError(f"config is missing {', '.join(missing)} (needed to build a {family} layer).")
    hidden = _positive_int(config, "hidden_size", MAX_HIDDEN_SIZE)
    intermediate = _positive_int(config, "intermediate_size", MAX_INTERMEDIATE_SIZE)
    heads = _positive_int(config, "num_attention_heads", MAX_HEADS)
    _positive_int(config, "num_hidden_layers", MAX_LAYERS)
    kv_heads = heads
    if family != "bert":
        if config.get("num_key_value_heads") is not None:
            kv_heads = _positive_int(config, "num_key_value_heads", MAX_HEADS)
        if heads % kv_heads:
            raise SpecError(f"config.num_attention_heads ({heads}) must be a multiple of "
                            f"config.num_key_value_heads ({kv_heads}).")
    head_dim = config.get("head_dim") if family != "bert" else None
    if head_dim is None:
        if hidden % heads:
            raise SpecError(f"config.hidden_size ({hidden}) must be divisible by "
                            f"config.num_attention_heads ({heads}).")
        head_dim = hidden // heads
    else:
        head_dim = _positive_int(config, "head_dim", MAX_HIDDEN_SIZE)
    if family == "bert":
        _positive_int(config, "max_position_embeddings", MAX_POSITIONS)
    estimate = 2 * hidden * head_dim * (heads + kv_heads) + 3 * hidden * intermediate
    if estimate > MAX_LAYER_PARAMETERS:
        raise SpecError(f"one layer of this config would hold about {estimate:.3g} parameters, beyond the "
                        f"supported {MAX_LAYER_PARAMETERS:.0e}; check hidden_size and intermediate_size.")


def head_dim(config: Any) -> int:
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads


def transformers_config(family: str, config: Mapping[str, Any], frozen: bool, attn_implementation: str) -> Any:
    """The transformers config object for the layer; dropout is switched off for a frozen layer."""
    values = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "transformers_version")}
    if frozen:
        for key in ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if key in values or family == "bert":
                values[key] = 0.0
    config_object = get_family(family).load_class(get_family(family).config_class)(**values)
    config_object._attn_implementation = attn_implementation
    return config_object

