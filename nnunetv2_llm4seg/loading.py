"""Lean loading of ONE layer: read config.json, the safetensors index and only the tensors of that layer.

The whole model is never instantiated and the other layers' tensors are never read: safetensors files are
opened lazily and only the layer's names are fetched; for hub sources only the shard(s) holding the layer are
downloaded. Every expected tensor must be present with the expected shape (no strict=False).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

from nnunetv2_llm4seg.errors import CheckpointError, SpecError
from nnunetv2_llm4seg.families import get_family
from nnunetv2_llm4seg.sources import HubRepo, LocalFolder, open_source
from nnunetv2_llm4seg.spec import BoosterSpec

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
# Keys of config.json that fix the layer's structure: the source must agree with the spec on these.
STRUCTURAL_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                   "head_dim", "num_hidden_layers", "attention_bias", "mlp_bias", "hidden_act")
# Non-persistent buffers that some older checkpoints saved; they are recomputed, never loaded.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class LayerReadPlan:
    """What to read for one layer: the source, every tensor's file, and checkpoint name -> block name."""

    source: LocalFolder | HubRepo
    weight_map: dict[str, str]
    fmt: str
    block_names: dict[str, str]

    @property
    def files(self) -> list[str]:
        return sorted({self.weight_map[name] for name in self.block_names})


class LayerDigest:
    """sha256 of a layer: over name, dtype, shape and the sha256 of each tensor's bytes, in name order
    (so it can be computed while tensors stream in, in any order)."""

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._lines[name] = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{hashlib.sha256(data).hexdigest()}\n"

    def hexdigest(self) -> str:
        return hashlib.sha256("".join(self._lines[name] for name in sorted(self._lines)).encode()).hexdigest()


def read_source_config(source: LocalFolder | HubRepo) -> dict[str, Any]:
    """The model's config.json as a dict; refuses models that need trust_remote_code."""
    path = source.file("config.json")
    if path is None:
        raise CheckpointError(f"{source.label} has no config.json; is it a Hugging Face model folder?")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); re-download the model.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; re-download the model.")
    if "auto_map" in config:
        raise SpecError(f"{source.label} defines its architecture in custom code (config.json has 'auto_map'), "
                        "which would need trust_remote_code; we never run remote code. Use a model whose "
                        "architecture is built into transformers (llama, qwen2, mistral, bert).")
    return config


def check_config_agrees(spec: BoosterSpec, found: Mapping[str, Any], label: str) -> None:
    differing = [f"{key}: spec {spec.config.get(key)!r} vs model {found.get(key)!r}"
                 for key in STRUCTURAL_KEYS
                 if key in found and key in spec.config and found[key] != spec.config[key]]
    if differing:
        raise SpecError(f"the model at {label} does not match the spec's config ({'; '.join(differing)}). "
                        "Point the source at the model the spec describes, or use a spec made for this model.")


def _weight_map(source: LocalFolder | HubRepo, allow_pickle: bool) -> tuple[dict[str, str], str]:
    """{tensor name: file name} for every tensor of the model, and the format ('safetensors' or 'pickle')."""
    index = source.file(SAFETENSORS_INDEX)
    if index is not None:
        try:
            return dict(json.loads(index.read_text())["weight_map"]), "safetensors"
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index ({error}); re-download it.") from None
    single = source.file(SAFETENSORS_SINGLE)
    if single is not None:
        names = _open_safetensors(single, lambda handle: list(handle.keys()))
        return {name: SAFETENSORS_SINGLE for name in names}, "safetensors"
    pickle_index = source.file(PICKLE_INDEX)
    pickle_single = None if pickle_index else source.file(PICKLE_SINGLE)
    if pickle_index is None and pickle_single is None:
        raise CheckpointError(f"{source.label} has config.json but no weights: expected {SAFETENSORS_SINGLE} or "
                              f"{SAFETENSORS_INDEX} with its shards. Download the weights into the folder.")
    if not allow_pickle:
        raise CheckpointError(f"{source.label} only has PyTorch pickle weights (pytorch_model.bin), which can run "
                              "code when loaded; refused. Convert them to safetensors, or set "
                              "\"allow_pickle\": true in the spec if you trust this file.")
    if pickle_index is not None:
        try:
            return dict(json.loads(pickle_index.read_text())["weight_map"]), "pickle"
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{pickle_index} is not a valid index ({error}); re-download it.") from None
    return {name: PICKLE_SINGLE for name in _load_pickle(pickle_single)}, "pickle"


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """PyTorch weights (only after the user opted in), with weights_only=True: no arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path} cannot be read as PyTorch weights ({error}); re-download it, or convert "
                              "it to safetensors.") from None


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({error}); it may be truncated or "
                           "corrupted: delete it and download it again.")


def _open_safetensors(path: Path, read: Any) -> Any:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return read(handle)
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None


def _layer_prefix(spec: BoosterSpec, names: list[str], label: str) -> str:
    candidates = [p.format(index=spec.layer) for p in get_family(spec.family).layer_prefixes]
    for prefix in candidates:
        if any(name.startswith(prefix) for name in names):
            return prefix
    layer_numbers = sorted({int(m.group(1)) for name in names
                            for m in [re.search(r"layers?\.(\d+)\.", name)] if m})
    found = f"layers {layer_numbers[0]}..{layer_numbers[-1]}" if layer_numbers else "no layers"
    raise CheckpointError(f"{label} has no tensors for layer {spec.layer} (looked for {', '.join(candidates)}; "
                          f"found {found}). Check 'layer' (0-based) against the model.")


def expected_tensors(spec: BoosterSpec, block: torch.nn.Module, prefix: str,
                     names: list[str]) -> dict[str, str]:
    """{checkpoint tensor name: block state_dict name} for every tensor the block needs."""
    wanted = {}
    for block_name in block.state_dict():
        if block_name.startswith("layer."):
            wanted[prefix + block_name[len("layer."):]] = block_name
        else:  # the learned position table (BERT)
            options = [n for n in get_family(spec.family).position_table_names if n in names]
            wanted[options[0] if options else get_family(spec.family).position_table_names[0]] = block_name
    return wanted


def _check_names(wanted: Mapping[str, str], names: list[str], prefix: str, label: str) -> None:
    present = set(names)
    missing = sorted(name for name in wanted if name not in present)
    if missing:
        raise CheckpointError(f"{label} is missing tensor(s) {', '.join(missing)} needed for the layer; the "
                              "checkpoint is incomplete or belongs to another architecture.")
    unexpected = sorted(name for name in names if name.startswith(prefix) and name not in wanted
                        and not name.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise CheckpointError(f"{label} has tensor(s) {', '.join(unexpected)} that the spec's config does not "
                              "expect (e.g. biases); the spec's config does not describe this checkpoint.")


def _stream_tensors(plan: LayerReadPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """The layer's tensors one at a time, shard by shard (only the shards that hold the layer are opened)."""
    by_file: dict[str, list[str]] = {}
    for name in plan.block_names:
        by_file.setdefault(plan.weight_map[name], []).append(name)
    for file_name, names in sorted(by_file.items()):
        path = plan.source.file(file_name)
        if path is None:
            raise CheckpointError(f"{plan.source.label}: shard {file_name} listed in the index is missing; "
                                  "download it into the model folder.")
        if plan.fmt == "pickle":
            state = _load_pickle(path)
            yield from ((name, state[name]) for name in names)
            continue
        for name in names:  # the file is mapped per tensor: only one tensor's pages are resident at a time
            try:
                with safe_open(str(path), framework="pt") as handle:
                    tensor = handle.get_tensor(name)
            except (SafetensorError, OSError, ValueError) as error:
                raise _unreadable(path, error) from None
            yield name, tensor


def plan_layer_read(spec: BoosterSpec, block: torch.nn.Module) -> LayerReadPlan:
    """Check the source against the spec (config, tensor names) and work out which tensors to read."""
    source = open_source(spec.source, spec.revision)
    check_config_agrees(spec, read_source_config(source), source.label)
    weight_map, fmt = _weight_map(source, spec.allow_pickle)
    names = list(weight_map)
    prefix = _layer_prefix(spec, names, source.label)
    wanted = expected_tensors(spec, block, prefix, names)
    _check_names(wanted, names, prefix, source.label)
    return LayerReadPlan(source, weight_map, fmt, wanted)


def _load(spec: BoosterSpec, block: torch.nn.Module, copy: bool) -> dict[str, Any]:
    plan = plan_layer_read(spec, block)
    targets = block.state_dict(keep_vars=True)
    digest = LayerDigest()
    for name, tensor in _stream_tensors(plan):
        target = targets[plan.block_names[name]]
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{plan.source.label}: tensor {name} has shape {tuple(tensor.shape)}, but the "
                                  f"spec's config expects {tuple(target.shape)}; the config does not describe "
                                  "this checkpoint.")
        digest.add(name, tensor)
        if copy:
            with torch.no_grad():
                target.copy_(tensor)
    return {"source": plan.source.label, "files": plan.files, "revision": plan.source.revision,
            "format": plan.fmt, "tensors": len(plan.block_names), "sha256": digest.hexdigest()}


def load_into_block(spec: BoosterSpec, block: torch.nn.Module) -> dict[str, Any]:
    """Load the pretrained layer into `block` in place, one tensor at a time (any device and dtype: the
    checkpoint's values are converted on copy). Returns the provenance: source, files, revision, sha256."""
    return _load(spec, block, copy=True)


def fetch_layer(spec: BoosterSpec) -> dict[str, Any]:
    """Read and check the layer without keeping it (fills the hub cache); returns the provenance."""
    from nnunetv2_llm4seg.layers import build_layer_block

    with torch.device("meta"):
        block = build_layer_block(spec)
    return _load(spec, block, copy=False)
