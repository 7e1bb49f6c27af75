"""torch.compile + nnU-Net's fp16 autocast: compiled gradients equal eager ones for every booster row.

nnU-Net trains under fp16 autocast and compiles the network on CUDA. A compiled backward re-applies the
forward's outer autocast to the region it traced (trap 16), which ran the booster's backward in fp16: gradients
that differed from eager (relative 1e-3..1e-2) and overflowed where eager did not. Reproduced here on CPU with
CPU fp16 autocast, the same mechanism.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.presets import load_preset
from helpers import spec_for
from test_booster import small_spec

CHANNELS = 32


class TinyBoostedNet(nn.Module):
    """conv -> booster -> conv: compiled parts on both sides of the booster, as in a U-Net."""

    def __init__(self, spec):
        super().__init__()
        self.stem = nn.Conv2d(2, CHANNELS, 1)
        self.booster = LLMBooster(CHANNELS, spec)
        self.head = nn.Conv2d(CHANNELS, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.booster(self.stem(x)))


def gradients(network: nn.Module, x: torch.Tensor, loss_scale: float, backend: str | None) -> dict[str, torch.Tensor]:
    """nnU-Net's step on CPU: forward and loss under fp16 autocast, the scaled loss's backward outside it."""
    torch._dynamo.reset()  # a fresh compile for every case (never the recompile limit's silent eager fallback)
    network.zero_grad(set_to_none=True)
    model = torch.compile(network, backend=backend) if backend else network
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(x).float().pow(2).mean()
    (loss * loss_scale).backward()
    return {name: p.grad.clone() for name, p in network.named_parameters() if p.requires_grad}


def llama_shaped(**changes):
    spec = load_preset("llama3.2-1b-l15")
    return spec.replace(init="random", config={**spec.config, "num_hidden_layers": 16}, **changes)


# row -> (its spec, a parameter whose gradient the row must have)
ROWS = {
    "frozen-bf16": (lambda: small_spec(dtype="bfloat16"), "booster.adapter_in.weight"),
    "frozen-fp32": (lambda: small_spec(dtype="float32"), "booster.adapter_in.weight"),
    "trainable-bf16": (lambda: small_spec(dtype="bfloat16", trainable=True), "booster.llm.layer.mlp.up_proj.weight"),
    "trainable-fp32": (lambda: small_spec(dtype="float32", trainable=True), "booster.llm.layer.mlp.up_proj.weight"),
    "lora-bf16": (None, "booster.llm.layer.mlp.up_proj.lora_A.default.weight"),  # built from small_model
    "gated-bf16": (lambda: small_spec(dtype="bfloat16", residual="gated"), "booster.gate"),
    "paper-fp32": (lambda: small_spec(dtype="float32", attention="causal", positions="paper"),
                   "booster.adapter_in.weight"),
}


def boosted_net(spec, seed: int = 0) -> TinyBoostedNet:
    torch.manual_seed(seed)
    network = TinyBoostedNet(spec)
    if spec.lora is not None:
        network.booster.load_pretrained(spec)
        for name, parameter in network.booster.named_parameters():
            if ".lora_B." in name:  # PEFT starts B at zero: make the adapted path carry gradients to A
                nn.init.normal_(parameter, std=0.02)
    if network.booster.gate is not None:
        nn.init.constant_(network.booster.gate, 0.5)  # an open gate, so the layer's gradients reach the CNN
    return network


@pytest.mark.parametrize("row", sorted(ROWS))
def test_compiled_gradients_equal_eager_under_fp16_autocast(row, small_model):
    make_spec, expected = ROWS[row]
    spec = make_spec() if make_spec else spec_for(small_model, 1, dtype="bfloat16", lora={"rank": 4, "alpha": 8})
    network = boosted_net(spec)
    x = torch.randn(2, 2, 4, 4)
    eager = gradients(network, x, 1.0, None)
    compiled = gradients(network, x, 1.0, "aot_eager")
    assert eager.keys() == compiled.keys() and expected in eager
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-6, atol=1e-9, msg=f"{row}: {name}")


def test_compiled_backward_of_a_llama_shaped_layer_does_not_overflow_where_eager_does_not():
    """LLaMA-3.2-1B's layer shape in bf16 with large activations: at loss x 300 the fp16 backward overflowed."""
    torch.manual_seed(0)
    booster = LLMBooster(64, llama_shaped())
    x = torch.randn(2, 64, 4, 4) * 300
    eager = gradients(booster, x, 300.0, None)
    compiled = gradients(booster, x, 300.0, "aot_eager")
    assert all(torch.isfinite(g).all() for g in eager.values())
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="inductor needs a C++ compiler on CPU")
def test_inductor_compiled_gradients_match_eager_for_the_booster():
    """inductor compiles the convolutions around the booster (its own kernels, so the CNN's gradients may differ
    in the last bits); the booster's own gradients must be eager's."""
    torch.manual_seed(0)
    network = nn.Sequential(LLMBooster(CHANNELS, small_spec(dtype="bfloat16")), nn.Conv2d(CHANNELS, 2, 1))
    x = torch.randn(2, CHANNELS, 4, 4)
    eager = gradients(network, x, 1.0, None)
    compiled = gradients(network, x, 1.0, "inductor")
    for name in ("0.adapter_out.weight", "0.adapter_in.weight"):
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_booster_is_one_graph_break_in_a_compiled_network():
    network = boosted_net(ROWS["frozen-fp32"][0]())
    explanation = torch._dynamo.explain(network)(torch.randn(1, 2, 4, 4))
    assert explanation.graph_break_count == 1 and explanation.graph_count == 2
