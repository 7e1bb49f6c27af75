"""The booster module: shapes, freezing and gradients, attention direction, positions, dtypes."""
import pytest
import torch
from helpers import SMALL_LLAMA
from torch import nn

from nnunetv2_llm4seg.booster import LLMBooster, features_to_tokens, tokens_to_features
from nnunetv2_llm4seg.layers import build_layer_block
from nnunetv2_llm4seg.presets import load_preset
from nnunetv2_llm4seg.spec import BoosterSpec


def small_spec(family: str = "llama", **changes) -> BoosterSpec:
    """A small layer's spec; randomly initialised unless the test asks for another init (nothing is loaded)."""
    changes.setdefault("init", "random")
    if family == "bert":
        config = {"model_type": "bert", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                  "num_hidden_layers": 2, "max_position_embeddings": 128}
    else:
        config = {"model_type": family, "num_hidden_layers": 2, **SMALL_LLAMA}
    return BoosterSpec.from_dict({"source": "unused/in-these-tests", "layer": 1, "family": family, "config": config,
                               **changes})


@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (3, 16, 5, 7), (2, 16, 2, 3, 4), (1, 16, 1, 1, 1)])
def test_any_2d_or_3d_shape_and_batch(shape):
    booster = LLMBooster(16, small_spec(init="random"))
    out = booster(torch.randn(shape))
    assert out.shape == shape and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(2, 8, 3, 5), (1, 8, 2, 3, 4)])
def test_token_round_trip(shape):
    features = torch.randn(shape)
    tokens = features_to_tokens(features)
    assert tokens.shape == (shape[0], torch.Size(shape[2:]).numel(), shape[1])
    assert torch.equal(tokens_to_features(tokens, features.shape[2:]), features)


def test_frozen_layer_passes_gradients_to_adapters_and_input():
    booster = LLMBooster(16, small_spec(init="random"))
    assert all(not p.requires_grad for p in booster.llm.parameters())
    features = torch.randn(2, 16, 3, 3, requires_grad=True)
    booster(features).square().mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert booster.adapter_in.weight.grad.abs().sum() > 0  # gradient went through the frozen layer
    assert all(p.grad is None for p in booster.llm.parameters())


def test_trainable_and_adapters_only_variants():
    trainable = LLMBooster(16, small_spec(trainable=True))
    assert all(p.requires_grad for p in trainable.parameters())
    adapters = LLMBooster(16, small_spec(init="none"))
    assert adapters.llm is None and adapters(torch.randn(1, 16, 2, 2)).shape == (1, 16, 2, 2)


def test_random_init_follows_the_paper_xavier_uniform():
    torch.manual_seed(0)
    booster = LLMBooster(16, small_spec(init="random", trainable=True))
    weight = booster.llm.layer.mlp.up_proj.weight
    bound = (6 / sum(weight.shape)) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound


def test_residual_adds_the_input():
    booster = LLMBooster(16, small_spec(residual=True))
    nn.init.zeros_(booster.adapter_out.weight)
    nn.init.zeros_(booster.adapter_out.bias)
    features = torch.randn(1, 16, 3, 3)
    assert torch.equal(booster(features), features)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "bert"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_bidirectional_first_token_sees_last_and_causal_does_not(family, implementation):
    tokens = torch.randn(1, 6, 64)
    changed = tokens.clone()
    changed[:, -1] += 5.0
    first_token_moves = {}
    for attention in ("bidirectional", "causal"):
        torch.manual_seed(0)
        block = build_layer_block(small_spec(family, attention=attention), attn_implementation=implementation)
        block.eval()
        with torch.no_grad():
            delta = (block(changed)[:, 0] - block(tokens)[:, 0]).abs().max()
        first_token_moves[attention] = delta.item()
    assert first_token_moves["bidirectional"] > 1e-4
    assert first_token_moves["causal"] == 0.0


def test_positions_none_is_order_free_and_native_is_not():
    tokens = torch.randn(1, 5, 64)
    permutation = torch.tensor([4, 2, 0, 1, 3])
    for positions, equivariant in (("none", True), ("native", False)):
        torch.manual_seed(0)
        block = build_layer_block(small_spec(positions=positions)).eval()
        with torch.no_grad():
            permuted_out = block(tokens[:, permutation])
            out_permuted = block(tokens)[:, permutation]
        assert torch.allclose(permuted_out, out_permuted, atol=1e-5) == equivariant, positions


def test_paper_mode_matches_the_official_formulas():
    """Re-implementation of the official LLM4Seg forward: adapter1 -> layer(hidden_states=x,
    position_embeddings=[sin, cos]) with sin/cos of arange(N) shaped (1, N, 1) -> [0] -> adapter2 -> reshape;
    the layer's default sdpa attention with no mask (causal)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    spec = small_spec(attention="causal", positions="paper", init="random")
    torch.manual_seed(0)
    booster = LLMBooster(16, spec).eval()

    config = LlamaConfig(**spec.config)
    config._attn_implementation = "sdpa"
    official_layer = LlamaDecoderLayer(config, layer_idx=1).eval()
    official_layer.load_state_dict(booster.llm.layer.state_dict())

    def official_forward(x):
        batch, channels, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = booster.adapter_in(x)
        token = height * width
        sin = torch.sin(torch.arange(token).view(1, token, 1))
        cos = torch.cos(torch.arange(token).view(1, token, 1))
        out = official_layer(hidden_states=x, position_embeddings=[sin, cos])
        x_llm = out[0] if isinstance(out, tuple) else out  # old transformers returned (hidden,)
        x = booster.adapter_out(x_llm)
        return x.transpose(1, 2).reshape(batch, channels, height, width)

    features = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        reference, ours = official_forward(features), booster(features)
    assert (reference - ours).abs().max() < 1e-6


def test_a_pretrained_layer_that_was_never_loaded_refuses_to_run(small_model):
    from helpers import spec_for

    from nnunetv2_llm4seg.errors import CheckpointError

    booster = LLMBooster(16, spec_for(small_model, 1))
    assert all(not t.any() for t in booster.llm.layer.state_dict().values())
    features = torch.randn(1, 16, 3, 3)
    with pytest.raises(CheckpointError, match="never loaded.*load_pretrained"):
        booster(features)
    booster.load_pretrained(spec_for(small_model, 1))
    assert torch.isfinite(booster(features)).all()
    from_checkpoint = LLMBooster(16, spec_for(small_model, 1))
    from_checkpoint.load_state_dict(booster.state_dict())
    assert torch.equal(from_checkpoint(features), booster(features))


def test_bf16_compute_dtype_and_no_fp16_under_autocast():
    seen = []
    booster = LLMBooster(16, small_spec(dtype="bfloat16", init="random"))
    assert booster.llm.layer.mlp.up_proj.weight.dtype == torch.bfloat16
    booster.llm.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.float16):
        out = booster(torch.randn(2, 16, 3, 3))
    fp32 = LLMBooster(16, small_spec(init="random"))
    fp32.llm.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.float16):
        fp32(torch.randn(2, 16, 3, 3))
    assert seen == [torch.bfloat16, torch.float32]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_frozen_bf16_layer_keeps_the_rotary_frequencies_in_float32():
    spec = load_preset("llama3.2-1b-l15").replace(init="random", config={**load_preset("llama3.2-1b-l15").config,
                                                                          "num_hidden_layers": 16})
    torch.manual_seed(0)
    booster = LLMBooster(8, spec)
    assert booster.llm.layer.mlp.up_proj.weight.dtype == torch.bfloat16
    reference = build_layer_block(spec.replace(dtype="float32")).rotary.inv_freq
    assert booster.llm.rotary.inv_freq.dtype == torch.float32
    assert torch.equal(booster.llm.rotary.inv_freq, reference)


def test_nothing_is_allocated_under_the_meta_device():
    with torch.device("meta"):
        booster = LLMBooster(1024, load_preset("llama3.2-1b-l15"))
    assert all(t.is_meta for t in booster.state_dict().values())


def test_trainable_bf16_layer_keeps_fp32_master_weights_and_computes_in_bf16():
    booster = LLMBooster(16, small_spec(dtype="bfloat16", init="random", trainable=True))
    linear = booster.llm.layer.mlp.up_proj
    outputs = []
    linear.register_forward_hook(lambda module, args, output: outputs.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.float16):  # nnU-Net's AMP must not reach the layer
        booster(torch.randn(2, 16, 3, 3)).sum().backward()
    assert linear.weight.dtype == torch.float32 and linear.weight.grad.dtype == torch.float32
    assert outputs == [torch.bfloat16]


def test_bert_learned_positions_limit_is_explained():
    booster = LLMBooster(8, small_spec("bert"))
    booster(torch.randn(1, 8, 8, 16))  # 128 tokens: exactly the table size
    with pytest.raises(ValueError, match="learned positions for 128 only"):
        booster(torch.randn(1, 8, 9, 16))


def test_llama_preset_booster_counts_match_the_paper():
    with torch.device("meta"):
        booster = LLMBooster(1024, load_preset("llama3.2-1b-l15"))
    adapters = sum(p.numel() for p in booster.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in booster.parameters() if not p.requires_grad)
    assert (adapters, frozen) == (4_197_376, 60_821_504)
