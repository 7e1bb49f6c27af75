"""Lean loading of ONE layer: read config.json, the safetensors index and only the tensors of that layer.

The whole model is never instantiated and the other layers' tensors are never read: safetensors files are
opened lazily and only the layer's names are fetched; for hub sources only the shard(s) holding the layer are
downloaded. Every expected tensor must be present with the expected shape (no strict=False).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

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
class LoadedLayer:
    """The tensors of one layer, named as in the checkpoint, with where they came from."""

    tensors: dict[str, torch.Tensor]
    block_names: dict[str, str]
    provenance: dict[str, Any]


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
        return dict(json.loads(pickle_index.read_text())["weight_map"]), "pickle"
    names = torch.load(pickle_single, map_location="cpu", mmap=True, weights_only=True).keys()
    return {name: PICKLE_SINGLE for name in names}, "pickle"


def _open_safetensors(path: Path, read: Any) -> Any:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return read(handle)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); it may be truncated or "
                              "corrupted: delete it and download it again.") from None


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


def _read_tensors(source: LocalFolder | HubRepo, weight_map: Mapping[str, str], names: list[str],
                  fmt: str) -> dict[str, torch.Tensor]:
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(weight_map[name], []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for file_name, file_names in sorted(by_file.items()):
        path = source.file(file_name)
        if path is None:
            raise CheckpointError(f"{source.label}: shard {file_name} listed in the index is missing; "
                                  "download it into the model folder.")
        if fmt == "safetensors":
            tensors.update(_open_safetensors(path, lambda handle: {n: handle.get_tensor(n) for n in file_names}))
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            tensors.update({n: state[n].clone() for n in file_names})
    return tensors


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over name, dtype, shape and raw bytes of each tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_layer(spec: BoosterSpec, block: torch.nn.Module) -> LoadedLayer:
    """Read the spec's layer from its source, check names and shapes against `block`, and return the tensors."""
    source = open_source(spec.source, spec.revision)
    check_config_agrees(spec, read_source_config(source), source.label)
    weight_map, fmt = _weight_map(source, spec.allow_pickle)
    names = list(weight_map)
    prefix = _layer_prefix(spec, names, source.label)
    wanted = expected_tensors(spec, block, prefix, names)
    _check_names(wanted, names, prefix, source.label)
    tensors = _read_tensors(source, weight_map, list(wanted), fmt)
    shapes = {name: tuple(t.shape) for name, t in block.state_dict().items()}
    wrong = [f"{name}: expected {shapes[wanted[name]]}, found {tuple(t.shape)}"
             for name, t in tensors.items() if tuple(t.shape) != shapes[wanted[name]]]
    if wrong:
        raise CheckpointError(f"{source.label}: tensor shape(s) do not match the spec's config: {'; '.join(wrong)}.")
    provenance = {
        "source": source.label,
        "files": sorted({weight_map[name] for name in wanted}),
        "revision": source.revision,
        "format": fmt,
        "tensors": len(tensors),
        "sha256": tensors_sha256(tensors),
    }
    return LoadedLayer(tensors=tensors, block_names=wanted, provenance=provenance)


def load_into_block(spec: BoosterSpec, block: torch.nn.Module) -> dict[str, Any]:
    """Load the pretrained layer into `block` in place (any device/dtype); returns the provenance."""
    loaded = load_layer(spec, block)
    block.load_state_dict({loaded.block_names[name]: t for name, t in loaded.tensors.items()}, strict=True)
    return loaded.provenance
