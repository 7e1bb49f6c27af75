"""Benchmark 4 (GPU): a 3d_fullres-like training step with nnU-Net's AMP and torch.compile, stock vs LLM4Seg.

nnU-Net's 3d_fullres topology for a 128^3 patch (PlainConvUNet, 6 stages, 32..320 features, deep supervision,
Dice+CE loss, SGD, fp16 autocast with GradScaler, torch.compile), batch 2, with and without a
LLaMA-3.2-1B-shaped frozen layer (random weights) at the 4x4x4 bottleneck (64 tokens). Reports the median
step time of each (alternated), the ratio, and peak GPU memory. Meant for a lent GPU machine; under 5 minutes.

    python benchmarks/gpu_step.py [--steps 20] [--repeats 3] [--no-compile] [--output FILE]
    python benchmarks/gpu_step.py --smoke --device cpu          # tiny shapes, checks the script runs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_report  # noqa: E402


def build(boosted: bool, patch: int, smoke: bool, device: torch.device):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    from nnunetv2_llm4seg.network import boost_unet
    from nnunetv2_llm4seg.presets import load_preset

    stages = 3 if smoke else 6
    features = [min(32 * 2 ** i, 320) for i in range(stages)]
    unet = PlainConvUNet(1, stages, features, torch.nn.Conv3d, 3, [1] + [2] * (stages - 1), [2] * stages, 2,
                         [2] * (stages - 1), True, torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    unet.apply(InitWeights_He(1e-2))
    if boosted:
        spec = load_preset("minilm-l6" if smoke else "llama3.2-1b-l15").replace(init="random")
        unet = boost_unet(unet, spec)
    return unet.to(device)


def measure(boosted: bool, args: argparse.Namespace, device: torch.device) -> dict:
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(0)
    network = build(boosted, args.patch, args.smoke, device)
    stages = len(network.encoder.stages)
    weights = [1 / 2 ** i for i in range(stages - 1)]
    loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, weight_ce=1, weight_dice=1, ignore_label=None,
                                                 dice_class=MemoryEfficientSoftDiceLoss), weights)
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], 1e-2, momentum=0.99,
                                nesterov=True, weight_decay=3e-5)
    model = torch.compile(network) if args.compile else network
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    data = torch.randn(args.batch, 1, *[args.patch] * 3, device=device)
    target = [torch.randint(0, 2, (args.batch, 1, *[args.patch // 2 ** i] * 3), device=device).float()
              for i in range(stages - 1)]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=cuda):
            value = loss(model(data), target)
        if scaler is not None:
            scaler.scale(value).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            value.backward()
            optimizer.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"step_seconds": statistics.median(times), "peak_gpu_gib": peak,
            "trainable": sum(p.numel() for p in network.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in network.parameters() if not p.requires_grad)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="tiny network and patch; for CPU checks")
    parser.add_argument("--output", type=Path,
                        default=Path(os.environ.get("OUT", Path(__file__).parent / "results")) / "gpu_step.json")
    args = parser.parse_args()
    if args.smoke:
        args.patch, args.batch, args.steps, args.warmup, args.repeats, args.compile = 16, 1, 1, 1, 1, False
    device = torch.device(args.device)
    runs = {"stock": [], "llm4seg": []}
    for _ in range(args.repeats):  # alternated, each a fresh network (and compile)
        for name in runs:
            runs[name].append(measure(name == "llm4seg", args, device))
    summary = {name: {"step_seconds": statistics.median(r["step_seconds"] for r in results),
                      "peak_gpu_gib": max((r["peak_gpu_gib"] or 0) for r in results) or None,
                      "trainable": results[0]["trainable"], "frozen": results[0]["frozen"]}
               for name, results in runs.items()}
    ratio = statistics.median(b["step_seconds"] / a["step_seconds"] for a, b in zip(runs["stock"], runs["llm4seg"]))
    write_report(args.output, {"benchmark": "gpu_step", "machine": machine(), "patch": args.patch,
                               "batch": args.batch, "compile": args.compile, "amp": device.type == "cuda",
                               "smoke": args.smoke, **summary, "step_time_ratio": ratio,
                               "samples": {k: [r["step_seconds"] for r in v] for k, v in runs.items()}})


if __name__ == "__main__":
    main()
