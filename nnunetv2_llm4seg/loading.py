"""Lean loading of ONE layer: read config.json, the safetensors index and only the tensors of that layer.

The whole model is never instantiated and the other layers' tensors are never read: safetensors files are
opened lazily and only the layer's names are fetched; for hub sources only the shard(s) holding the layer are
downloaded. File names from an index must stay inside the model (sources.check_file_name). Before any tensor
is read, every expected tensor must be present with the expected shape and a floating-point dtype (from the
safetensors header; no strict=False); while streaming, each tensor must be finite (no NaN or Inf).
Each tensor is hashed, checked and copied (cast) into the block straight from its memory-mapped pages, with
no temporary of its size: nothing but the one mapped tensor comes on top of the block.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

from nnunetv2_llm4seg.errors import CheckpointError, SpecError
from nnunetv2_llm4seg.families import get_family
from nnunetv2_llm4seg.sources import (HubRepo, LocalFolder, check_file_name, first_sentence, open_source, read_json,
                                      refused_global)
from nnunetv2_llm4seg.spec import BoosterSpec

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
# Keys of config.json that fix the layer's structure: the source must agree with the spec on these.
STRUCTURAL_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                   "head_dim", "num_hidden_layers", "attention_bias", "mlp_bias", "hidden_act")
LORA_MARK = ".lora_"
# Non-persistent buffers that some older checkpoints saved; they are recomputed, never loaded.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# The weight dtypes a layer is loaded from, by their safetensors names; anything else (bool, integers,
# float8) is quantized or corrupted data that copy_ would silently turn into wrong weights.
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@dataclass(frozen=True)
class LayerReadPlan:
    """What to read for one layer: the source, every tensor's file, checkpoint name -> block name, and the
    local path of each file that holds the layer."""

    source: LocalFolder | HubRepo
    weight_map: dict[str, str]
    fmt: str
    block_names: dict[str, str]
    paths: dict[str, Path]

    @property
    def files(self) -> list[str]:
        return sorted({self.weight_map[name] for name in self.block_names})


class LayerDigest:
    """sha256 of a layer: over name, dtype, shape and the sha256 of each tensor's bytes, in name order
    (so it can be computed while tensors stream in, in any order)."""

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}

    def add(self, name: str, tensor: torch.Tensor, data_sha256: str) -> None:
        """Record a tensor by its dtype, shape and the sha256 of its bytes (hashed by the caller)."""
        self._lines[name] = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{data_sha256}\n"

    def hexdigest(self) -> str:
        return hashlib.sha256("".join(self._lines[name] for name in sorted(self._lines)).encode()).hexdigest()


def read_source_config(source: LocalFolder | HubRepo) -> dict[str, Any]:
    """The model's config.json as a dict; refuses models that need trust_remote_code."""
    path = source.file("config.json")
    if path is None:
        raise CheckpointError(f"{source.label} has no config.json; is it a Hugging Face model folder?")
    config = read_json(path, f"{source.label}: config.json", CheckpointError)
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


def _read_index(source: LocalFolder | HubRepo, path: Path, suffix: str) -> dict[str, str]:
    """An index's {tensor name: file name}; every file name must be a `suffix` file inside the model."""
    index = read_json(path, f"{source.label}: {path.name}", CheckpointError)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{source.label}: {path.name} is not a checkpoint index (expected "
                              "{\"weight_map\": {tensor name: file name}}); download it again.")
    for file_name in sorted(set(weight_map.values())):
        if not check_file_name(file_name, source.label).endswith(suffix):
            raise CheckpointError(f"{source.label}: {path.name} names the file {file_name!r}, which is not a "
                                  f"{suffix} file; refused. Download the index again.")
    return dict(weight_map)


def _weight_map(source: LocalFolder | HubRepo, allow_pickle: bool) -> tuple[dict[str, str], str]:
    """{tensor name: file name} for every tensor of the model, and the format ('safetensors' or 'pickle')."""
    index = source.file(SAFETENSORS_INDEX)
    if index is not None:
        return _read_index(source, index, ".safetensors"), "safetensors"
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
        return _read_index(source, pickle_index, ".bin"), "pickle"
    return {name: PICKLE_SINGLE for name in _load_pickle(pickle_single)}, "pickle"


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """PyTorch weights (only after the user opted in), with weights_only=True: no arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path} was refused unread: it holds pickled Python objects besides tensors "
                              f"({refused_global(error)}), and unpickling them could run code. Use the model's "
                              "safetensors files from a source you trust.") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read as PyTorch weights ({first_sentence(error)}); re-download "
                              "it, or convert it to safetensors.") from None
    if not isinstance(state, dict) or not all(isinstance(name, str) for name in state):
        raise CheckpointError(f"{path} does not hold a state dict ({{tensor name: tensor}}); re-download it, or "
                              "convert it to safetensors.")
    return state


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
        if LORA_MARK in block_name:  # LoRA adapters are trained, never read from the model
            continue
        if block_name.startswith("layer."):  # a LoRA-wrapped projection keeps its weights in .base_layer
            wanted[prefix + block_name[len("layer."):].replace(".base_layer.", ".")] = block_name
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


def _names_by_file(plan: LayerReadPlan) -> dict[str, list[str]]:
    by_file: dict[str, list[str]] = {}
    for name in plan.block_names:
        by_file.setdefault(plan.weight_map[name], []).append(name)
    return dict(sorted(by_file.items()))


def _layer_files(source: LocalFolder | HubRepo, weight_map: Mapping[str, str],
                 names: Mapping[str, str]) -> dict[str, Path]:
    """The local path of every file that holds the layer (a hub source downloads just these)."""
    paths = {}
    for file_name in sorted({weight_map[name] for name in names}):
        path = source.file(file_name)
        if path is None:
            raise CheckpointError(f"{source.label}: shard {file_name} listed in the index is missing; "
                                  "download it into the model folder.")
        paths[file_name] = path
    return paths


def _slice_header(name: str, part: Any) -> tuple[str, Any, tuple[int, ...]]:
    dtype = part.get_dtype()
    return name, FLOAT_DTYPES.get(dtype, dtype), tuple(part.get_shape())


def _headers(plan: LayerReadPlan) -> Iterator[tuple[str, Any, tuple[int, ...]]]:
    """(name, dtype, shape) of each of the layer's tensors, without reading their data: the safetensors
    header (dtype by its safetensors name), or the tensors of a memory-mapped pickle."""
    for file_name, names in _names_by_file(plan).items():
        path = plan.paths[file_name]
        if plan.fmt == "pickle":
            state = _load_pickle(path)
            for name in names:
                if not isinstance(state[name], torch.Tensor):
                    raise CheckpointError(f"{path}: {name} is a {type(state[name]).__name__}, not a tensor; "
                                          "re-download the weights, or convert them to safetensors.")
                yield name, state[name].dtype, tuple(state[name].shape)
            continue
        yield from _open_safetensors(path, lambda handle: [_slice_header(name, handle.get_slice(name))
                                                           for name in names])


def _check_headers(plan: LayerReadPlan, block: torch.nn.Module) -> None:
    """Every tensor of the layer has a floating-point dtype and the shape the spec's config expects."""
    targets = block.state_dict(keep_vars=True)
    for name, dtype, shape in _headers(plan):
        if dtype not in FLOAT_DTYPES.values():
            raise CheckpointError(f"{plan.source.label}: tensor {name} is stored as {dtype}, not as floating-point "
                                  "weights (float16, bfloat16, float32 or float64): the checkpoint is quantized or "
                                  "corrupted. Use the model's original weights.")
        expected = tuple(targets[plan.block_names[name]].shape)
        if shape != expected:
            raise CheckpointError(f"{plan.source.label}: tensor {name} has shape {shape}, but the spec's config "
                                  f"expects {expected}; the config does not describe this checkpoint.")


def _stream_tensors(plan: LayerReadPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """The layer's tensors one at a time, shard by shard (only the shards that hold the layer are opened)."""
    for file_name, names in _names_by_file(plan).items():
        path = plan.paths[file_name]
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


def _finite(tensor: torch.Tensor) -> bool:
    """True when no value is NaN or Inf: one reduction and no temporary (min and max propagate NaN)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _not_finite(label: str, name: str, tensor: torch.Tensor) -> CheckpointError:
    bad = tensor.numel() - int(torch.isfinite(tensor).sum())
    return CheckpointError(f"{label}: tensor {name} holds {bad:,} NaN or Inf value(s) (of {tensor.numel():,}); "
                           "the weights are corrupted: download them again.")


def _read_tensor(label: str, name: str, tensor: torch.Tensor, target: torch.Tensor | None) -> str:
    """Hash a tensor as read (a view of the mapped file), refuse NaN/Inf, then copy (and cast) it into `target`
    (None only checks). Returns the sha256 of the tensor's bytes."""
    values = tensor.detach().contiguous()  # already contiguous when read from safetensors: no copy
    data_sha256 = hashlib.sha256(values.reshape(-1).view(torch.uint8).numpy()).hexdigest()
    if not _finite(values):
        raise _not_finite(label, name, values)
    if target is not None:
        with torch.no_grad():
            target.copy_(values)
    return data_sha256


def plan_layer_read(spec: BoosterSpec, block: torch.nn.Module) -> LayerReadPlan:
    """Check the source against the spec (config, tensor names, dtypes, shapes) and work out which tensors
    to read; no tensor data is read yet."""
    source = open_source(spec.weights.source, spec.weights.revision)
    check_config_agrees(spec, read_source_config(source), source.label)
    weight_map, fmt = _weight_map(source, spec.weights.allow_pickle)
    names = list(weight_map)
    prefix = _layer_prefix(spec, names, source.label)
    wanted = expected_tensors(spec, block, prefix, names)
    _check_names(wanted, names, prefix, source.label)
    plan = LayerReadPlan(source, weight_map, fmt, wanted, _layer_files(source, weight_map, wanted))
    _check_headers(plan, block)
    return plan


def _load(spec: BoosterSpec, block: torch.nn.Module, copy: bool) -> dict[str, Any]:
    plan = plan_layer_read(spec, block)
    targets = block.state_dict(keep_vars=True)
    digest = LayerDigest()
    for name, tensor in _stream_tensors(plan):
        target = targets[plan.block_names[name]] if copy else None
        digest.add(name, tensor, _read_tensor(plan.source.label, name, tensor, target))
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
