"""Model families we can take a layer from: their config checks, layer classes and checkpoint names."""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from nnunetv2_llm4seg.errors import SpecError

# Sanity bounds on single sizes; the layer's total size is checked against the machine's memory.
MAX_HIDDEN_SIZE = 65536
MAX_INTERMEDIATE_SIZE = 262144
MAX_HEADS = 1024
MAX_LAYERS = 4096
MAX_POSITIONS = 1 << 20
# The layer is built in float32 (then cast to the spec's dtype), so this is what its construction allocates.
BUILD_BYTES_PER_PARAMETER = 4
# Used when neither /proc/meminfo nor os.sysconf says how much memory the machine has.
FALLBACK_MEMORY_BYTES = 16 << 30


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

ROTARY_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.rotary_class)

_REQUIRED = {
    "llama": ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"),
    "bert": ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
             "max_position_embeddings"),
}

Check = Callable[[str, Any], None]
"""A config value check: (key path, value) -> None, or SpecError naming the key path and the value."""


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise SpecError(f"model family {name!r} is not supported; supported families: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def _bad(path: str, value: Any, wanted: str) -> SpecError:
    return SpecError(f"{path} is {value!r}; it must be {wanted}. Fix it in the spec's config (it should hold the "
                     "values of the model's config.json).")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _int_up_to(limit: int) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _bad(path, value, "a positive integer")
        if value > limit:
            raise SpecError(f"{path} = {value} is beyond the supported maximum of {limit}; "
                            "this does not look like a real model config.")
    return check


def _positive(path: str, value: Any) -> None:
    if not _is_number(value) or value <= 0:
        raise _bad(path, value, "a finite number > 0")


def _at_least_one(path: str, value: Any) -> None:
    if not _is_number(value) or value < 1:
        raise _bad(path, value, "a finite number >= 1")


def _probability(path: str, value: Any) -> None:
    if not _is_number(value) or not 0 <= value < 1:
        raise _bad(path, value, "a number in [0, 1)")


def _flag(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(path, value, "true or false")


def _text(path: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _bad(path, value, "a string")


def _optional(check: Check) -> Check:
    def optional(path: str, value: Any) -> None:
        if value is not None:
            check(path, value)
    return optional


def _list_of(check: Check) -> Check:
    def checked_list(path: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)) or not value:
            raise _bad(path, value, "a non-empty list")
        for position, item in enumerate(value):
            check(f"{path}[{position}]", item)
    return checked_list


def _activation(path: str, value: Any) -> None:
    from transformers.activations import ACT2CLS

    if not isinstance(value, str) or value not in ACT2CLS:
        raise _bad(path, value, f"one of transformers' activations ({', '.join(sorted(ACT2CLS))})")


def rope_types() -> tuple[str, ...]:
    """The rope types this transformers version implements ("default" = plain rotary, no scaling)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ("default", *sorted(set(ROPE_INIT_FUNCTIONS) - {"default"}))


_ROPE_VALUES: dict[str, Check] = {
    "rope_theta": _positive, "factor": _at_least_one, "low_freq_factor": _positive, "high_freq_factor": _positive,
    "attention_factor": _positive, "beta_fast": _positive, "beta_slow": _positive, "mscale": _positive,
    "mscale_all_dim": _positive, "partial_rotary_factor": _positive,
    "original_max_position_embeddings": _int_up_to(MAX_POSITIONS),
    "short_factor": _list_of(_positive), "long_factor": _list_of(_positive),
}
_ROPE_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
                  "longrope": ("short_factor", "long_factor"),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def _rope(path: str, value: Any) -> None:
    """rope_scaling / rope_parameters: a known rope type, with its required values, each finite and in range."""
    if not isinstance(value, Mapping):
        raise _bad(path, value, "an object such as {\"rope_type\": \"llama3\", \"factor\": 32.0, ...} or null")
    type_key = "rope_type" if "rope_type" in value or "type" not in value else "type"
    rope_type = value.get(type_key, "default")
    if not isinstance(rope_type, str) or rope_type not in rope_types():
        raise _bad(f"{path}.{type_key}", rope_type, f"one of {', '.join(rope_types())}")
    missing = [key for key in _ROPE_REQUIRED.get(rope_type, ()) if key not in value]
    if missing:
        raise SpecError(f"{path} has rope_type {rope_type!r} but no {', '.join(missing)}; give the values of the "
                        "model's config.json.")
    for key, item in value.items():
        if key in _ROPE_VALUES:
            _ROPE_VALUES[key](f"{path}.{key}", item)
    if rope_type == "llama3" and value["high_freq_factor"] <= value["low_freq_factor"]:
        raise SpecError(f"{path}.high_freq_factor ({value['high_freq_factor']!r}) must be greater than "
                        f"{path}.low_freq_factor ({value['low_freq_factor']!r}): llama3 scaling divides by their "
                        "difference.")


# Every config key that shapes the layer or its numerics, with its check; other keys are left to the model.
CONFIG_CHECKS: dict[str, Check] = {
    "model_type": _text,
    "hidden_size": _int_up_to(MAX_HIDDEN_SIZE),
    "intermediate_size": _int_up_to(MAX_INTERMEDIATE_SIZE),
    "num_attention_heads": _int_up_to(MAX_HEADS),
    "num_key_value_heads": _optional(_int_up_to(MAX_HEADS)),
    "head_dim": _optional(_int_up_to(MAX_HIDDEN_SIZE)),
    "num_hidden_layers": _int_up_to(MAX_LAYERS),
    "max_position_embeddings": _int_up_to(MAX_POSITIONS),
    "sliding_window": _optional(_int_up_to(MAX_POSITIONS)),
    "hidden_act": _activation,
    "rms_norm_eps": _positive,
    "layer_norm_eps": _positive,
    "rope_theta": _positive,
    "rope_scaling": _optional(_rope),
    "rope_parameters": _optional(_rope),
    "initializer_range": _positive,
    "attention_bias": _flag,
    "mlp_bias": _flag,
    "use_sliding_window": _flag,
    "attention_dropout": _probability,
    "hidden_dropout_prob": _probability,
    "attention_probs_dropout_prob": _probability,
    "position_embedding_type": _text,
}


def _head_sizes(family: str, config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(attention heads, key/value heads, head dim) of a config whose values passed CONFIG_CHECKS."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = heads if family == "bert" else config.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise SpecError(f"config.num_attention_heads ({heads}) must be a multiple of "
                        f"config.num_key_value_heads ({kv_heads}).")
    head_size = config.get("head_dim") if family != "bert" else None
    if head_size is None:
        if hidden % heads:
            raise SpecError(f"config.hidden_size ({hidden}) must be divisible by "
                            f"config.num_attention_heads ({heads}).")
        head_size = hidden // heads
    if family in ROTARY_FAMILIES and head_size % 2:
        raise SpecError(f"the head dimension (config.head_dim, or hidden_size / num_attention_heads) is "
                        f"{head_size}; rotary position embeddings need an even head dimension.")
    return heads, kv_heads, head_size


def check_architecture_config(family: str, config: Mapping[str, Any]) -> None:
    """Reject missing keys and wrong, non-finite or absurd values before anything is built."""
    get_family(family)
    required = _REQUIRED.get(family, _REQUIRED["llama"])
    missing = [key for key in required if key not in config]
    if missing:
        raise SpecError(f"config is missing {', '.join(missing)} (needed to build a {family} layer).")
    for key, check in CONFIG_CHECKS.items():
        if key in config:
            check(f"config.{key}", config[key])
    _head_sizes(family, config)
    from huggingface_hub.errors import StrictDataclassError  # what transformers >= 5 config classes raise

    try:  # transformers' own config class checks the rest (types of its fields, rope consistency)
        transformers_config(family, config, frozen=False, attn_implementation="eager")
    except (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError) as error:
        raise SpecError(f"config is not a valid {family} config for transformers: {error} Fix the named value "
                        "in the spec's config (it should hold the values of the model's config.json).") from None


def layer_parameters(family: str, config: Mapping[str, Any], positions: str) -> int:
    """Parameters of one layer (plus BERT's learned position table when positions are 'native'), from the
    config alone: what building the layer will allocate."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    if family == "bert":
        table = config["max_position_embeddings"] * hidden if positions == "native" else 0
        return 4 * (hidden * hidden + hidden) + 2 * (hidden * inner) + inner + hidden + 4 * hidden + table
    heads, kv_heads, head_size = _head_sizes(family, config)
    out_bias = int(family == "llama" and config.get("attention_bias", False))
    qkv_bias = int(family == "qwen2") or out_bias
    mlp_bias = int(family == "llama" and config.get("mlp_bias", False))
    attention = 2 * hidden * head_size * (heads + kv_heads) + qkv_bias * head_size * (heads + 2 * kv_heads)
    return attention + out_bias * hidden + 3 * hidden * inner + mlp_bias * (2 * inner + hidden) + 2 * hidden


def available_memory() -> int:
    """Bytes this machine can allocate now: MemAvailable from /proc/meminfo, else os.sysconf's available
    pages, else FALLBACK_MEMORY_BYTES."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return FALLBACK_MEMORY_BYTES


def check_layer_memory(family: str, config: Mapping[str, Any], positions: str) -> None:
    """Refuse a layer whose construction (in float32) needs more memory than this machine has available."""
    needed = layer_parameters(family, config, positions) * BUILD_BYTES_PER_PARAMETER
    available = available_memory()
    if needed > available:
        raise SpecError(f"one layer of this config needs {needed / 2**30:.1f} GiB in float32 "
                        f"({layer_parameters(family, config, positions):,} parameters); this machine has "
                        f"{available / 2**30:.1f} GiB available. Check config.hidden_size "
                        f"({config['hidden_size']}) and config.intermediate_size ({config['intermediate_size']}), "
                        "or use a machine with more memory.")


def head_dim(config: Any) -> int:
    value = getattr(config, "head_dim", None)
    return int(value) if value else config.hidden_size // config.num_attention_heads


def transformers_config(family: str, config: Mapping[str, Any], frozen: bool, attn_implementation: str) -> Any:
    """The transformers config object for the layer; dropout is switched off for a frozen layer. A null
    head_dim means hidden_size / num_attention_heads, as in `_head_sizes`: it is left out, because Qwen2's attention
    would read None as the head size."""
    values = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "transformers_version")
              and not (k == "head_dim" and v is None)}
    if frozen:
        for key in ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            if key in values or family == "bert":
                values[key] = 0.0
    config_object = get_family(family).load_class(get_family(family).config_class)(**values)
    config_object._attn_implementation = attn_implementation
    return config_object

