"""Benchmark 4 (GPU): a 3d_fullres-like training step with nnU-Net's AMP and torch.compile, stock vs LLM4Seg.

nnU-Net's 3d_fullres topology for a 128^3 patch (PlainConvUNet, 6 stages, 32..320 features, deep supervision,
Dice+CE loss, SGD, fp16 autocast with GradScaler, gradient clipping at 12, cudnn.benchmark on, torch.compile
without fullgraph), batch 2, with and without a LLaMA-3.2-1B-shaped frozen layer (random weights) at the 4x4x4
bottleneck (64 tokens). One process: each variant is built and compiled once, then warmed up (the first
step, compile included, and the rest of the warm-up are timed and reported apart); then blocks of --steps timed
steps alternate between the variants (A, B, A, B, ...) over --repeats. Per variant: median step time, the
ratio per repeat (median over repeats), the memory it keeps (weights and optimizer state) and its peak above
its own start in each block, and the GradScaler's final scale and skipped steps (a step is skipped when the
scale drops). Compile time = first step - median steady step; the warm-up is long enough when its last step
is within 1.5x the steady median ("warm").

    python benchmarks/gpu_step.py [--steps 20] [--warmup 5] [--repeats 3] [--no-compile] [--output FILE]
    python benchmarks/gpu_step.py --smoke --device cpu          # tiny shapes, checks the script runs
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_report  # noqa: E402

from nnunetv2_llm4seg.parameters import trainable_and_frozen  # noqa: E402

VARIANTS = ("stock", "llm4seg")
WARM_WITHIN = 1.5  # the last warm-up step must be within this factor of the steady median


@dataclass
class Variant:
    """One network under test with its optimizer, grad scaler and fixed batch, and what was measured so far."""

    name: str
    network: torch.nn.Module
    step: Callable[[], None]
    scaler: torch.amp.GradScaler | None
    kept_gib: float | None
    warmup_seconds: list[float] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)
    skipped_steps: int = 0


def build(boosted: bool, smoke: bool, device: torch.device) -> torch.nn.Module:
    """nnU-Net's 3d_fullres PlainConvUNet (3 stages with --smoke), boosted with the LLaMA (MiniLM) layer."""
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


def nnunet_loss(stages: int) -> torch.nn.Module:
    """nnU-Net's Dice+CE with deep supervision weights 1, 1/2, 1/4, ..."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, weight_ce=1, weight_dice=1, ignore_label=None,
                                                 dice_class=MemoryEfficientSoftDiceLoss),
                                  [1 / 2 ** i for i in range(stages - 1)])


def train_step(network: torch.nn.Module, args: argparse.Namespace, device: torch.device,
               scaler: torch.amp.GradScaler | None) -> Callable[[], None]:
    """nnU-Net's train_step on a fixed batch: autocast and GradScaler on CUDA, clipping at 12, SGD."""
    stages = len(network.encoder.stages)
    loss = nnunet_loss(stages)
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], 1e-2, momentum=0.99,
                                nesterov=True, weight_decay=3e-5)
    model = torch.compile(network) if args.compile else network
    data = torch.randn(args.batch, 1, *[args.patch] * 3, device=device)
    target = [torch.randint(0, 2, (args.batch, 1, *[args.patch // 2 ** i] * 3), device=device).float()
              for i in range(stages - 1)]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler is not None):
            value = loss(model(data), target)
        if scaler is None:
            value.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
            return
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()

    return step


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed_step(variant: Variant, device: torch.device) -> float:
    """Run one step; returns its wall time (synchronised) and counts it as skipped when the scale dropped."""
    scale = variant.scaler.get_scale() if variant.scaler is not None else None
    start = time.perf_counter()
    variant.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if scale is not None and variant.scaler.get_scale() < scale:
        variant.skipped_steps += 1
    return seconds


def prepare(name: str, args: argparse.Namespace, device: torch.device) -> Variant:
    """Build, compile (once) and warm up one variant; what it keeps in memory is measured around that."""
    before = allocated_gib(device)
    torch.manual_seed(0)  # the same CNN weights for both variants
    network = build(name == "llm4seg", args.smoke, device)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    variant = Variant(name, network, train_step(network, args, device, scaler), scaler, None)
    variant.warmup_seconds = [timed_step(variant, device) for _ in range(args.warmup)]
    kept = allocated_gib(device)
    variant.kept_gib = None if kept is None else kept - before
    return variant


def timed_block(variant: Variant, steps: int, device: torch.device) -> None:
    """--steps timed steps; peak memory is taken above this block's own start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = allocated_gib(device)
    skipped = variant.skipped_steps
    times = [timed_step(variant, device) for _ in range(steps)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 - start if device.type == "cuda" else None
    variant.blocks.append({"step_seconds": statistics.median(times), "samples": times,
                           "peak_above_start_gib": peak, "skipped_steps": variant.skipped_steps - skipped})


def summarise(variant: Variant, compiled: bool) -> dict[str, Any]:
    """Median step, compile time (first step - steady median), memory, grad scaler health."""
    steady = statistics.median(b["step_seconds"] for b in variant.blocks)
    peaks = [b["peak_above_start_gib"] for b in variant.blocks if b["peak_above_start_gib"] is not None]
    scaled = variant.scaler is not None
    return {"step_seconds": steady,
            "first_step_seconds": variant.warmup_seconds[0],
            "compile_seconds": variant.warmup_seconds[0] - steady if compiled else None,
            "warmup_seconds": variant.warmup_seconds,
            "warm": variant.warmup_seconds[-1] <= WARM_WITHIN * steady,
            "kept_gib": variant.kept_gib,
            "peak_above_start_gib": max(peaks) if peaks else None,
            "grad_scaler_final_scale": variant.scaler.get_scale() if scaled else None,
            "skipped_steps": variant.skipped_steps if scaled else None,
            "skipped_timed_steps": sum(b["skipped_steps"] for b in variant.blocks) if scaled else None,
            **dict(zip(("trainable", "frozen"), trainable_and_frozen(variant.network))),
            "blocks": variant.blocks}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="tiny network and patch, no compile; for CPU checks")
    parser.add_argument("--output", type=Path,
                        default=Path(os.environ.get("OUT", Path(__file__).parent / "results")) / "gpu_step.json")
    args = parser.parse_args()
    if args.smoke:
        args.patch, args.batch, args.steps, args.warmup, args.repeats, args.compile = 16, 1, 1, 1, 1, False
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net sets it on CUDA
    variants = {name: prepare(name, args, device) for name in VARIANTS}
    for _ in range(args.repeats):  # alternated blocks over the same compiled networks
        for variant in variants.values():
            timed_block(variant, args.steps, device)
    ratios = [b["step_seconds"] / a["step_seconds"]
              for a, b in zip(variants["stock"].blocks, variants["llm4seg"].blocks)]
    cuda = device.type == "cuda"
    write_report(args.output, {"benchmark": "gpu_step", "machine": machine(), "patch": args.patch,
                               "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                               "repeats": args.repeats, "compile": args.compile, "cudnn_benchmark": cuda,
                               "amp": cuda, "smoke": args.smoke,
                               **{name: summarise(variant, args.compile) for name, variant in variants.items()},
                               "step_time_ratio": statistics.median(ratios), "step_time_ratios": ratios})


if __name__ == "__main__":
    main()
