"""The booster spec: which LLM layer goes where, and how it runs. Validated, serialisable, comparable."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.families import FAMILIES, check_architecture_config, check_layer_memory, get_family

INIT_CHOICES = ("pretrained", "random", "random-linear", "none")
# inits that read the pre-trained layer from the source (random-linear then re-initialises its nn.Linear weights)
PRETRAINED_INITS = ("pretrained", "random-linear")
ATTENTION_CHOICES = ("bidirectional", "causal")
POSITION_CHOICES = ("native", "none", "paper")
DTYPE_CHOICES = ("float32", "bfloat16")
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules")
# PEFT target module names of each family's attention and MLP projections (matched as name suffixes)
LORA_TARGETS = {"llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                "bert": ("query", "key", "value", "dense")}
ROTARY_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.rotary_class)
# A model config is a few levels deep; deeper values are refused before anything recurses into them.
MAX_JSON_DEPTH = 32

@dataclass(frozen=True)
class WeightsSource:
    """Where the layer's weights are read from: not part of what the network is (another copy of the same model
    builds the same network; provenance's sha256 tells copies apart).

    source:      a Hugging Face hub id ("meta-llama/Llama-3.2-1B"), a local model folder, or
                 "package:<python package>" for a model folder shipped inside an installed package.
    revision:    hub revision (branch, tag or commit) for hub sources.
    allow_pickle: allow PyTorch pickle (.bin) weights; off by default since pickle can run code.
    provenance:  filled in when weights are loaded: files, revision and sha256 of the loaded tensors.
    """

    source: str
    revision: str | None = None
    allow_pickle: bool = False
    provenance: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _typed("source", self.source, str, "a hub id, a local folder or 'package:<name>'")
        if not self.source.strip():
            raise SpecError("'source' is empty; give a hub id, a local folder or 'package:<name>'.")
        if self.revision is not None:
            _typed("revision", self.revision, str, "a string or null")
        _typed("allow_pickle", self.allow_pickle, bool, "true or false")
        if self.provenance is not None:
            _typed("provenance", self.provenance, Mapping, "an object or null")
            check_json_value("provenance", self.provenance)


WEIGHTS_KEYS = tuple(f.name for f in dataclasses.fields(WeightsSource))


@dataclass(frozen=True)
class BoosterSpec:
    """One frozen (or trainable) LLM layer between two adapters, placed at an nnU-Net encoder stage.

    Its compared fields are what the network is: two specs are equal exactly when they build the same network.
    Where the weights come from (`weights`) and the labels (name, description, paper_layer) are not compared.
    In JSON (presets, plans entries, checkpoints) all keys are flat: "source", "revision", "allow_pickle" and
    "provenance" fill `weights`.

    layer:       0-based index of the layer in the model (the paper's "layer 15" of LLaMA is index 14).
    family:      model family of the layer: llama, qwen2, mistral (rotary decoder layers) or bert.
    config:      the model's architecture config (the values of its config.json).
    init:        "pretrained" (weights from source), "random" (same shape, random init), "random-linear" (the
                 pre-trained layer with its nn.Linear weights re-initialised, xavier with zero bias, as the official
                 code's need_init: norm gains stay pre-trained), "none" (adapters only).
    trainable:   False freezes the LLM layer (the paper's default).
    attention:   "bidirectional" (every token sees every token) or "causal".
    positions:   "native" (the model's own position encoding over token order), "none", or "paper"
                 (exactly what the official LLM4Seg code does: sin/cos of the token index, swapped).
    stage:       encoder stage the booster follows: -1 is the bottleneck, -2 one stage above it.
    residual:    False replaces the features with the booster's output (the paper); True adds it to them;
                 "gated" adds it scaled by a learnable per-channel gate that starts at 0, so the network starts
                 exactly as the CNN without the booster.
    lora:        null, or low-rank adapters (PEFT LoRA) on the frozen layer: {"rank", "alpha", "dropout",
                 "target_modules" (null: the family's attention and MLP projections)}; trained in float32.
    dtype:       dtype the LLM layer computes in ("float32" or "bfloat16"; never float16).
    weights:     where the weights are read from (WeightsSource).
    """

    layer: int
    family: str
    config: Mapping[str, Any]
    weights: WeightsSource = field(compare=False)
    init: str = "pretrained"
    trainable: bool = False
    attention: str = "bidirectional"
    positions: str = "native"
    stage: int = -1
    residual: bool | str = False
    dtype: str = "float32"
    lora: Mapping[str, Any] | None = None
    name: str | None = field(default=None, compare=False)
    description: str | None = field(default=None, compare=False)
    paper_layer: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    # ---- construction and serialisation -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "spec") -> "BoosterSpec":
        """Build a spec from a flat JSON-like mapping; unknown keys and bad values raise SpecError."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)} - {"weights"} | set(WEIGHTS_KEYS)
        unknown = sorted(map(repr, set(data) - known))
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}. "
                            f"Allowed keys: {', '.join(sorted(known))}.")
        values = dict(data)
        if "family" not in values and isinstance(values.get("config"), Mapping):
            values["family"] = values["config"].get("model_type")
        missing = [k for k in ("source", "layer", "family", "config") if values.get(k) is None]
        if missing:
            raise SpecError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}.")
        location = {key: values.pop(key) for key in WEIGHTS_KEYS if key in values}
        try:
            return cls(weights=WeightsSource(**location), **values)
        except SpecError as error:
            raise SpecError(f"{where}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-serialisable dict that from_dict turns back into an equal spec (same weights too)."""
        data = {key: getattr(self.weights, key) for key in WEIGHTS_KEYS}
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "weights"})
        data["config"] = dict(self.config)
        return json.loads(json.dumps(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def replace(self, **changes: Any) -> "BoosterSpec":
        """A copy with changed fields; "source", "revision", "allow_pickle" and "provenance" change `weights`."""
        location = {key: changes.pop(key) for key in WEIGHTS_KEYS if key in changes}
        if location:
            changes["weights"] = dataclasses.replace(self.weights, **location)
        return dataclasses.replace(self, **changes)

    # ---- derived values --------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def has_llm_layer(self) -> bool:
        return self.init != "none"

    def network_dict(self) -> dict[str, Any]:
        """The compared fields: what the network is (no labels, no weight location)."""
        return {f.name: dict(getattr(self, f.name)) if f.name == "config" else getattr(self, f.name)
                for f in dataclasses.fields(self) if f.compare}

    def network_differences(self, other: "BoosterSpec") -> dict[str, tuple]:
        """Fields that make the two specs build different networks: {field: (self value, other value)}."""
        mine, theirs = self.network_dict(), other.network_dict()
        return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(f"{key!r} is {value!r}; allowed values: {', '.join(choices)}.")


def _typed(key: str, value: Any, kind: type, text: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecError(f"{key!r} must be {text}, got {value!r} ({type(value).__name__}).")


def check_json_value(path: str, value: Any, depth: int = 0) -> None:
    """Refuse anything that is not plain JSON (objects with string keys, lists, strings, finite numbers,
    booleans, null) or that is nested more than MAX_JSON_DEPTH levels, naming the key path."""
    if depth > MAX_JSON_DEPTH:
        raise SpecError(f"{path} is nested more than {MAX_JSON_DEPTH} levels deep; a model config is a few levels "
                        "deep: give the model's config.json values.")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(f"{path} has the key {key!r} ({type(key).__name__}); keys must be strings.")
            check_json_value(f"{path}.{key}", item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            check_json_value(f"{path}[{position}]", item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{path} is {value!r}; spec values must be finite numbers (JSON has no NaN or Infinity).")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise SpecError(f"{path} is {value!r} ({type(value).__name__}); spec values must be JSON: objects, lists, "
                        "strings, numbers, true/false or null.")


def lora_targets(spec: BoosterSpec) -> tuple[str, ...]:
    """The modules LoRA adapts: the spec's own list, or the family's attention and MLP projections."""
    targets = (spec.lora or {}).get("target_modules")
    return tuple(targets) if targets else LORA_TARGETS.get(spec.family, LORA_TARGETS["llama"])


def _check_lora(spec: BoosterSpec) -> None:
    _typed("lora", spec.lora, Mapping, 'an object like {"rank": 8, "alpha": 16, "dropout": 0.0} or null')
    unknown = sorted(set(spec.lora) - set(LORA_KEYS))
    if unknown:
        raise SpecError(f"'lora' has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(LORA_KEYS)}.")
    rank, alpha = spec.lora.get("rank", 8), spec.lora.get("alpha", 16)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 1024:
        raise SpecError(f"'lora.rank' is {rank!r}; give an integer from 1 to 1024 (8 or 16 are usual).")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= 1e4:
        raise SpecError(f"'lora.alpha' is {alpha!r}; give a positive number (often 2 x rank).")
    dropout = spec.lora.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise SpecError(f"'lora.dropout' is {dropout!r}; give a number in [0, 1).")
    targets = spec.lora.get("target_modules")
    if targets is not None and (not isinstance(targets, (list, tuple)) or not targets
                                or not all(isinstance(t, str) and t for t in targets)):
        raise SpecError(f"'lora.target_modules' is {targets!r}; give a non-empty list of module names "
                        f"(e.g. {list(LORA_TARGETS['llama'])}) or null for the family's default.")
    if spec.init not in PRETRAINED_INITS or spec.trainable:
        raise SpecError(f"'lora' adapts a frozen pre-trained layer, but this spec has init {spec.init!r} and "
                        f"trainable {str(spec.trainable).lower()}: use init 'pretrained' and trainable false.")


def _validate(spec: BoosterSpec) -> None:
    _typed("weights", spec.weights, WeightsSource, "a WeightsSource (in JSON: the 'source' key and its kin)")
    _typed("layer", spec.layer, int, "a 0-based layer index (integer)")
    _typed("family", spec.family, str, "a model family name")
    get_family(spec.family)
    _typed("config", spec.config, Mapping, "the model's config.json as an object")
    check_json_value("config", spec.config)
    _choice("init", spec.init, INIT_CHOICES)
    _typed("trainable", spec.trainable, bool, "true or false")
    _choice("attention", spec.attention, ATTENTION_CHOICES)
    _choice("positions", spec.positions, POSITION_CHOICES)
    _typed("stage", spec.stage, int, "a negative encoder stage index (-1 = bottleneck, -2 = one above)")
    if spec.stage >= 0:
        raise SpecError(f"'stage' is {spec.stage}; use a negative index counted from the bottleneck: "
                        "-1 = bottleneck (default), -2 = one stage above it.")
    if not (isinstance(spec.residual, bool) or spec.residual == "gated"):
        raise SpecError(f"'residual' is {spec.residual!r}; allowed values: false (replace, the paper), true (add), "
                        "\"gated\" (add through a learnable gate that starts at 0).")
    if spec.lora is not None:
        _check_lora(spec)
    _choice("dtype", spec.dtype, DTYPE_CHOICES)
    for key in ("name", "description", "paper_layer"):
        value = getattr(spec, key)
        if value is not None:
            _typed(key, value, str, "a string or null")
    if spec.positions == "paper" and spec.family not in ROTARY_FAMILIES:
        raise SpecError(f"'positions' is 'paper', which only exists for rotary families "
                        f"({', '.join(ROTARY_FAMILIES)}); family {spec.family!r} allows 'native' or 'none'.")
    model_type = spec.config.get("model_type")
    if model_type is not None and model_type != spec.family:
        raise SpecError(f"'family' is {spec.family!r} but config.model_type is {model_type!r}; they must agree.")
    check_architecture_config(spec.family, spec.config)
    if spec.layer < 0 or spec.layer >= spec.num_layers:
        raise SpecError(f"'layer' is {spec.layer}, but the model has {spec.num_layers} layers: "
                        f"valid indices are 0..{spec.num_layers - 1} (0-based; the paper's 'layer 15' is index 14).")
    if spec.has_llm_layer:
        check_layer_memory(spec.family, spec.config, spec.positions)


def describe_differences(diff: Mapping[str, tuple]) -> str:
    """'field: a vs b; ...' for a network_differences() result; objects (config, lora) are compared key by key."""
    parts = []
    for name, (first, second) in diff.items():
        if isinstance(first, Mapping) and isinstance(second, Mapping):
            parts += [f"{name}.{key}: {first.get(key)!r:.60} vs {second.get(key)!r:.60}"
                      for key in sorted(set(first) | set(second)) if first.get(key) != second.get(key)]
        else:
            parts.append(f"{name}: {first!r:.60} vs {second!r:.60}")
    return "; ".join(parts)
