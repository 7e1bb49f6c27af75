"""Benchmark 2: one nnU-Net training step, stock nnUNetTrainer vs nnUNetTrainerLLM4Seg (LLaMA-3.2-1B-shaped
layer, random weights, frozen), on a 2D and a 3D configuration planned by nnU-Net for synthetic data.

Same plans, same fixed batch, same seed. Each measurement is a fresh process that builds the trainer
(nnU-Net's network, loss with deep supervision, SGD), runs warm-up steps, then times `train_step` (forward,
loss, backward, gradient clipping, optimizer step); variants alternate (stock, LLM4Seg, stock, ...) and the
report gives medians, the step-time ratio and the peak resident memory above the process baseline.

    python benchmarks/bench_training_step.py [--repeats 3] [--steps 5] [--configs 2d,3d] [--dtype D] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, MEMORY_PROBE, alternate, machine, median, run_python, write_report  # noqa: E402

# (dataset id, configuration, generator arguments, batch size) sized for a 2-core CPU.
SETUPS = {
    "2d": (901, "2d", {"kind": "2d", "size": 256, "cases": 8}, 4),
    "3d": (902, "3d_fullres", {"kind": "3d", "shape": [48, 96, 96], "cases": 6}, 2),
}
SMOKE = {"2d": (911, "2d", {"kind": "2d", "size": 48, "cases": 6}, 2),
         "3d": (912, "3d_fullres", {"kind": "3d", "shape": [16, 32, 32], "cases": 6}, 1)}
LLM_SPEC = {"preset": "llama3.2-1b-l15", "init": "random"}  # LLaMA-3.2-1B-shaped layer, frozen, no download
SMOKE_SPEC = {"preset": "minilm-l6", "init": "random"}


def nnunet_folders(root: Path) -> dict[str, str]:
    return {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f",
            "nnUNet_def_n_proc": "1"}


def prepare(root: Path, dataset_id: int, configuration: str, data: dict) -> str:
    """Generate and plan a synthetic dataset once (cached); returns its name."""
    os.environ.update(nnunet_folders(root))
    from nnunetv2_llm4seg.experiments import plan_and_preprocess
    from nnunetv2_llm4seg.synthetic import make_blob_dataset, make_ultrasound_dataset

    existing = sorted((root / "preprocessed").glob(f"Dataset{dataset_id:03d}_*/nnUNetPlans.json"))
    if existing:
        return existing[0].parent.name
    if data["kind"] == "2d":
        folder = make_ultrasound_dataset(root / "raw", dataset_id, cases=data["cases"], size=data["size"])
    else:
        folder = make_blob_dataset(root / "raw", dataset_id, cases=data["cases"], shape=data["shape"])
    plan_and_preprocess(dataset_id, configuration, root / "plan.log")
    return folder.name


STEP = MEMORY_PROBE + '''
import json, os, statistics, time, contextlib, io
import torch
torch.manual_seed(0)
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], "{dataset}")
plans = json.load(open(os.path.join(preprocessed, "nnUNetPlans.json")))
plans["plans_name"] = "nnUNetPlans_bench"
configuration = plans["configurations"]["{configuration}"]
configuration["batch_size"] = {batch}
configuration["llm4seg"] = {spec}
plans["continue_training"] = False
dataset_json = json.load(open(os.path.join(preprocessed, "dataset.json")))
with contextlib.redirect_stdout(io.StringIO()):
    trainer_class = recursive_find_trainer_class_by_name("{trainer}")
    trainer = trainer_class(plans, "{configuration}", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
patch = trainer.configuration_manager.patch_size
generator = torch.Generator().manual_seed(1)
data = torch.randn({batch}, 1, *patch, generator=generator)
scales = trainer._get_deep_supervision_scales()
target = [torch.randint(0, 2, ({batch}, 1, *[round(p * s) for p, s in zip(patch, scale)]), generator=generator).float()
          for scale in scales]
batch = {{"data": data, "target": target}}
for _ in range({warmup}):
    trainer.train_step(batch)
base = rss_kib(); reset_peak()
times = []
for _ in range({steps}):
    start = time.perf_counter()
    trainer.train_step(batch)
    times.append(time.perf_counter() - start)
trainable = sum(p.numel() for p in trainer.network.parameters() if p.requires_grad)
frozen = sum(p.numel() for p in trainer.network.parameters() if not p.requires_grad)
tokens = None
if hasattr(trainer.network, "booster"):
    from nnunetv2_llm4seg.network import tokens_at_stage
    tokens = tokens_at_stage(patch, trainer.configuration_manager.pool_op_kernel_sizes, trainer.network.booster_stage)
print(json.dumps({{"step_seconds": statistics.median(times), "peak_mib_above_baseline": (peak_kib() - base) / 1024,
                  "rss_mib": rss_kib() / 1024, "patch": patch, "batch": {batch}, "trainable": trainable,
                  "frozen": frozen, "tokens_per_patch": tokens}}))
'''


def llm_spec(smoke: bool, dtype: str | None) -> dict:
    return {**(SMOKE_SPEC if smoke else LLM_SPEC), **({"dtype": dtype} if dtype else {})}


def bench_config(name: str, repeats: int, steps: int, smoke: bool, dtype: str | None) -> dict:
    dataset_id, configuration, data, batch = (SMOKE if smoke else SETUPS)[name]
    root = CACHE / ("training-smoke" if smoke else "training")
    dataset = prepare(root, dataset_id, configuration, data)
    spec = json.dumps(llm_spec(smoke, dtype))
    env = nnunet_folders(root)

    def measure(trainer: str):
        code = STEP.format(dataset=dataset, configuration=configuration, batch=batch, spec=spec, trainer=trainer,
                           warmup=1 if smoke else 2, steps=steps)
        return lambda: run_python(code, env=env)

    samples = alternate({"stock": measure("nnUNetTrainer"), "llm4seg": measure("nnUNetTrainerLLM4Seg")}, repeats)
    summary = {variant: {"step_seconds": median([s["step_seconds"] for s in runs]),
                         "peak_mib_above_baseline": median([s["peak_mib_above_baseline"] for s in runs]),
                         "rss_mib": median([s["rss_mib"] for s in runs]),
                         **{k: runs[0][k] for k in ("patch", "batch", "trainable", "frozen", "tokens_per_patch")},
                         "samples": [s["step_seconds"] for s in runs]}
               for variant, runs in samples.items()}
    ratios = [b["step_seconds"] / a["step_seconds"] for a, b in zip(samples["stock"], samples["llm4seg"])]
    return {"configuration": configuration, **summary, "step_time_ratio": median(ratios),
            "step_time_ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--configs", default="2d,3d")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="LLM compute dtype (default: the preset's)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and MiniLM, one repeat")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "training_step.json")
    args = parser.parse_args()
    repeats, steps = (1, 2) if args.smoke else (args.repeats, args.steps)
    report = {"benchmark": "training_step", "machine": machine(), "repeats": repeats, "steps": steps,
              "smoke": args.smoke, "llm_spec": llm_spec(args.smoke, args.dtype),
              "configs": {name: bench_config(name, repeats, steps, args.smoke, args.dtype)
                          for name in args.configs.split(",")}}
    write_report(args.output, report)


if __name__ == "__main__":
    main()
