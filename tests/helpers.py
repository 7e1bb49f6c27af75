"""Shared test helpers: checkpoints built with transformers' save_pretrained, and running our CLIs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The real models' layer shapes with a tiny vocabulary and few layers.
LLAMA_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                   head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                   rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                   tie_word_embeddings=True)
QWEN2_SHAPE = dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                   rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=131072, tie_word_embeddings=False)
SMALL_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512)


def save_checkpoint(folder: Path, family: str, layers: int, shape: dict[str, Any], vocab: int = 64,
                    max_shard_size: str | None = None, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """save_pretrained of a randomly initialised causal LM (safetensors, optionally sharded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, vocab_size=vocab, num_hidden_layers=layers, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


def checkpoint_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """All tensors of a saved checkpoint whose names start with `prefix`, read directly with safetensors."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update({k: v for k, v in load_file(file).items() if k.startswith(prefix)})
    return tensors


def spec_for(folder: Path, layer: int, **changes: Any):
    """A spec for a saved checkpoint, reading its config.json."""
    from nnunetv2_llm4seg.spec import BoosterSpec

    config = json.loads((folder / "config.json").read_text())
    return BoosterSpec.from_dict({"source": str(folder), "layer": layer, "family": config["model_type"], "config": config,
                               **changes})


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a console script (llm4seg, nnUNetv2_*) in a subprocess with the given extra environment."""
    full_env = {**os.environ, **(env or {})}
    executable = Path(sys.executable).parent / args[0]
    command = [str(executable) if executable.exists() else args[0], *args[1:]]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
