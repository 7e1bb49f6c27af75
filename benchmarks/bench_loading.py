"""Benchmark 1: loading one LLM layer, lean (ours) vs the official code's from_pretrained of the whole model.

Builds once, cached in $LLM4SEG_BENCH_CACHE (default ~/.cache/llm4seg-benchmarks), checkpoints with the exact
LLaMA-3.2-1B and DeepSeek-R1-Distill-Qwen-1.5B configs (full vocabulary and depth, bf16, one model.safetensors
as published) and random weights. Then, each in a fresh process, alternated over repeats:
  (a) ours, per dtype: build the layer block as the booster does (a frozen layer in the spec's dtype) and stream
      layer 14 (27) into it with nnunetv2_llm4seg.loading (header checks, NaN/Inf refusal, sha256);
      With --baseline DIR, also the package found in DIR (another version's source, e.g. from git archive);
  (b) floor, per dtype: the lower limit, one read of the layer's bytes: safetensors get_tensor of just the
      layer's tensors, each copied once into new memory in that dtype; no checks, no hash, no module;
  (c) official: AutoModelForCausalLM.from_pretrained(folder), then keep model.model.layers[14] (27) and use it
      (read every weight once); with the installed transformers' default dtype (5.x: bf16, lazily memory-mapped)
      and with float32, the default of the transformers 4.x the official code was written for.
Reports median wall time and peak resident memory above the process's baseline after imports.

    python benchmarks/bench_loading.py [--repeats 3] [--models llama,qwen2] [--dtypes bfloat16,float32] [--smoke]
                                       [--baseline DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, MEMORY_PROBE, alternate, machine, median, run_python, write_report  # noqa: E402

MODELS = {"llama": ("llama3.2-1b-l15", 14), "qwen2": ("deepseek-r1-qwen1.5b-l28", 27)}
SMOKE_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 4, "vocab_size": 256, "max_position_embeddings": 512}


def build_checkpoint(folder: Path, config: dict) -> Path:
    """A published-style checkpoint (config.json + one bf16 model.safetensors) with random weights, written
    tensor by tensor from the model's own state-dict layout (the model itself is only built on the meta device)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        values = torch.ones(tensor.shape) if name.endswith("norm.weight") else \
            torch.randn(tensor.shape, generator=generator) * 0.02
        tensors[name] = values.to(torch.bfloat16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


OURS = MEMORY_PROBE + '''
import json, time, torch
from nnunetv2_llm4seg.layers import build_layer_block
from nnunetv2_llm4seg.loading import load_into_block
from nnunetv2_llm4seg.spec import BoosterSpec
from nnunetv2_llm4seg.families import get_family
config = json.load(open("{folder}/config.json"))
spec = BoosterSpec.from_dict({{"source": "{folder}", "layer": {layer}, "family": config["model_type"],
                              "config": config, "dtype": "{dtype}"}})
family = get_family(spec.family)
family.load_class(family.layer_class)  # imports are not what we measure
base = rss_kib(); reset_peak(); start = time.perf_counter()
block = build_layer_block(spec, placeholder=True)
block.store_weights_in(getattr(torch, spec.dtype))  # as LLMBooster does for a frozen layer
provenance = load_into_block(spec, block)
seconds = time.perf_counter() - start
layer_bytes = sum(t.numel() * t.element_size() for t in block.state_dict().values())
print(json.dumps({{"seconds": seconds, "peak_mib": (peak_kib() - base) / 1024, "layer_mib": layer_bytes / 2**20,
                  "dtype": str(next(block.parameters()).dtype), "sha256": provenance["sha256"]}}))
'''

FLOOR = MEMORY_PROBE + '''
import json, time, torch
from safetensors import safe_open
path = "{folder}/model.safetensors"
with safe_open(path, framework="pt") as handle:
    names = [name for name in handle.keys() if name.startswith("model.layers.{layer}.")]
base = rss_kib(); reset_peak(); start = time.perf_counter()
layer = []
for name in names:  # mapped per tensor, as ours does
    with safe_open(path, framework="pt") as handle:
        layer.append(handle.get_tensor(name).to(torch.{dtype}, copy=True))
seconds = time.perf_counter() - start
layer_bytes = sum(t.numel() * t.element_size() for t in layer)
print(json.dumps({{"seconds": seconds, "peak_mib": (peak_kib() - base) / 1024, "layer_mib": layer_bytes / 2**20,
                  "dtype": str(layer[0].dtype)}}))
'''

OFFICIAL = MEMORY_PROBE + '''
import importlib, json, time, torch
from transformers import AutoModelForCausalLM
model_type = json.load(open("{folder}/config.json"))["model_type"]
importlib.import_module(f"transformers.models.{{model_type}}.modeling_{{model_type}}")  # not what we measure
base = rss_kib(); reset_peak(); start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained("{folder}"{dtype_argument})
layer = model.model.layers[{layer}]
del model
checksum = sum(float(p.float().sum()) for p in layer.parameters())  # use the layer: lazily mapped weights load
seconds = time.perf_counter() - start
layer_bytes = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
print(json.dumps({{"seconds": seconds, "peak_mib": (peak_kib() - base) / 1024, "layer_mib": layer_bytes / 2**20,
                  "dtype": str(next(layer.parameters()).dtype)}}))
'''


def _summary(samples: list[dict]) -> dict:
    return {"seconds": median([s["seconds"] for s in samples]), "peak_mib": median([s["peak_mib"] for s in samples]),
            "layer_mib": samples[0]["layer_mib"], "dtype": samples[0]["dtype"], "samples": samples}


def _runs(folder: Path, layer: int, dtypes: list[str], baseline: Path | None) -> dict:
    """Every variant as a fresh-process measurement, in the order they are alternated."""
    runs = {}
    for dtype in dtypes:
        runs[f"ours_{dtype}"] = lambda dtype=dtype: run_python(OURS.format(folder=folder, layer=layer, dtype=dtype))
        if baseline is not None:
            runs[f"baseline_{dtype}"] = lambda dtype=dtype: run_python(
                OURS.format(folder=folder, layer=layer, dtype=dtype), env={"PYTHONPATH": str(baseline)})
        runs[f"floor_{dtype}"] = lambda dtype=dtype: run_python(FLOOR.format(folder=folder, layer=layer, dtype=dtype))
    runs["official"] = lambda: run_python(OFFICIAL.format(folder=folder, layer=layer, dtype_argument=""))
    runs["official_fp32"] = lambda: run_python(OFFICIAL.format(folder=folder, layer=layer,
                                                               dtype_argument=", dtype=torch.float32"))
    return runs


def _comparisons(results: dict, dtypes: list[str]) -> dict:
    """Ours against its floor, the baseline and the official load in the same dtype, as ratios of medians."""
    official = {"bfloat16": "official", "float32": "official_fp32"}
    out = {}
    for dtype in dtypes:
        ours = results[f"ours_{dtype}"]
        if f"baseline_{dtype}" in results:
            baseline = results[f"baseline_{dtype}"]
            out[f"baseline_{dtype}_over_ours"] = baseline["seconds"] / ours["seconds"]
            out[f"baseline_{dtype}_peak_over_layer"] = baseline["peak_mib"] / baseline["layer_mib"]
            out[f"baseline_{dtype}_same_sha256"] = baseline["samples"][0]["sha256"] == ours["samples"][0]["sha256"]
        out[f"ours_{dtype}_peak_over_layer"] = ours["peak_mib"] / ours["layer_mib"]
        out[f"ours_{dtype}_over_floor"] = ours["seconds"] / results[f"floor_{dtype}"]["seconds"]
        out[f"{official[dtype]}_over_ours_{dtype}"] = results[official[dtype]]["seconds"] / ours["seconds"]
        out[f"{official[dtype]}_peak_over_ours_{dtype}"] = results[official[dtype]]["peak_mib"] / ours["peak_mib"]
    return out


def bench_model(name: str, repeats: int, smoke: bool, dtypes: list[str], baseline: Path | None) -> dict:
    from nnunetv2_llm4seg.presets import load_preset

    preset, layer = MODELS[name]
    spec = load_preset(preset)
    config = dict(spec.config)
    if smoke:
        config.update(SMOKE_SHAPE)
        layer = 2
    folder = build_checkpoint(CACHE / (f"{preset}-smoke" if smoke else preset), config)
    results = {variant: _summary(samples) for variant, samples in alternate(_runs(folder, layer, dtypes, baseline),
                                                                            repeats).items()}
    return {"preset": preset, "preset_dtype": spec.dtype, "layer": layer,
            "checkpoint_gib": (folder / "model.safetensors").stat().st_size / 2**30,
            **results, **_comparisons(results, dtypes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="llama,qwen2")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="dtypes the layer is loaded in (ours, floor)")
    parser.add_argument("--baseline", type=Path, help="a folder holding another version of nnunetv2_llm4seg "
                        "(e.g. git archive <commit> nnunetv2_llm4seg | tar -x -C DIR), measured as 'baseline'")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny checkpoints, one repeat, the first dtype only: checks the script runs")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "loading.json")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    dtypes = args.dtypes.split(",")[:1] if args.smoke else args.dtypes.split(",")  # smoke: few fresh processes
    report = {"benchmark": "loading", "machine": machine(), "repeats": repeats, "smoke": args.smoke,
              "models": {name: bench_model(name, repeats, args.smoke, dtypes, args.baseline)
                         for name in args.models.split(",")}}
    write_report(args.output, report)


if __name__ == "__main__":
    main()
