"""Beyond the paper: the LoRA row (PEFT adapters on the frozen layer) and the gated booster that starts as the
CNN alone. Unit tests here; one nnU-Net command-line run of each is in test_nnunet_cli.py."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.cmunext import CMUNeXt
from nnunetv2_llm4seg.parameters import describe_booster
from nnunetv2_llm4seg.network import boost_unet
from nnunetv2_llm4seg.presets import load_preset

LORA = {"rank": 8, "alpha": 16, "dropout": 0.0}


def test_lora_parameter_count_of_the_llama_layer_matches_peft_and_the_formula():
    """LLaMA-3.2-1B layer, rank 8 on q, k, v, o (2048->2048, 2048->512 x2, 2048->2048) and gate, up, down
    (2048<->8192): 8 x (4096 + 2560 + 2560 + 4096 + 3 x 10240) = 352,256."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    report = describe_booster(load_preset("llama3.2-1b-l15").replace(lora=LORA), 1024)
    assert report["lora_params"] == 8 * (4096 + 2560 + 2560 + 4096 + 3 * 10240) == 352_256
    assert report["llm_layer_params"] == 60_821_504 and report["adapter_params"] == 4_197_376
    assert report["trainable_params"] == 4_197_376 + 352_256

    config = LlamaConfig(**{k: v for k, v in load_preset("llama3.2-1b-l15").config.items()
                            if k not in ("architectures", "transformers_version")})
    config.num_hidden_layers, config.vocab_size = 1, 16
    with torch.device("meta"):
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"]))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == report["lora_params"]


def test_lora_starts_equal_to_the_frozen_booster_and_only_lora_and_adapters_train():
    spec = load_preset("minilm-l6")
    frozen, adapted = LLMBooster(32, spec), LLMBooster(32, spec.replace(lora=LORA))
    frozen.load_pretrained(spec)
    provenance = adapted.load_pretrained(spec.replace(lora=LORA))
    assert provenance["sha256"] == frozen.load_pretrained(spec)["sha256"]  # the same tensors were read
    adapted.adapter_in.load_state_dict(frozen.adapter_in.state_dict())
    adapted.adapter_out.load_state_dict(frozen.adapter_out.state_dict())
    features = torch.randn(2, 32, 4, 4)
    assert torch.allclose(adapted(features), frozen(features), atol=1e-6)  # LoRA's B starts at zero
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.startswith("adapter_") or ".lora_" in n}
    assert any(".lora_A." in n for n in trainable) and any(".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in adapted.named_parameters() if ".lora_" in n)

    optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.5)
    adapted(features).square().mean().backward()
    optimizer.step()
    restored = LLMBooster(32, spec.replace(lora=LORA))
    restored.load_state_dict(adapted.state_dict())  # what a checkpoint holds rebuilds the same network
    assert torch.equal(restored(features), adapted(features))
    assert not torch.allclose(adapted(features), frozen(features), atol=1e-4)


def test_lora_on_a_bf16_llama_layer_keeps_the_layer_bf16_and_lora_float32():
    with torch.device("meta"):
        booster = LLMBooster(64, load_preset("llama3.2-1b-l15").replace(lora=LORA))
    projection = booster.llm.layer.self_attn.q_proj
    assert projection.base_layer.weight.dtype == torch.bfloat16 and not projection.base_layer.weight.requires_grad
    assert projection.lora_A["default"].weight.dtype == torch.float32


def test_peft_is_imported_only_by_rows_that_use_lora():
    code = ("import sys, torch\nfrom nnunetv2_llm4seg.presets import load_preset\n"
            "from nnunetv2_llm4seg.booster import LLMBooster\nimport nnunetv2_llm4seg.trainers\n"
            "LLMBooster(8, load_preset('minilm-l6').replace(init='random'))\nprint('PEFT', 'peft' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "PEFT False" in result.stdout, result.stderr


def plain_unet(dimensions: int) -> PlainConvUNet:
    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dimensions == 2 else \
        (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    return PlainConvUNet(1, 4, [8, 16, 32, 64], conv, 3, [1, 2, 2, 2], 2, 2, 2, True, norm, {"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=True)


@pytest.mark.parametrize("backbone", ["nnunet", "cmunext"])
@pytest.mark.parametrize("patch", [(32, 32), (16, 32, 32)])
def test_gated_booster_starts_exactly_as_the_cnn_alone(backbone, patch):
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return plain_unet(len(patch)) if backbone == "nnunet" else CMUNeXt(1, 2, patch, deep_supervision=True)

    spec = load_preset("minilm-l6").replace(residual="gated")
    stock, boosted = build(), boost_unet(build(), spec)  # the same seed: the same CNN weights
    boosted.booster.load_pretrained(spec)
    x = torch.randn(2, 1, *patch)
    for stock_output, boosted_output in zip(stock(x), boosted(x)):
        assert torch.equal(stock_output, boosted_output)
    sum(o.square().mean() for o in boosted(x)).backward()
    gate = boosted.booster.gate
    assert gate.shape == (boosted.booster.adapter_out.out_features,) and gate.grad.abs().sum() > 0
    assert not boosted.booster.adapter_out.weight.grad.any()  # adapters learn once the gate has opened
