"""`llm4seg explain`, unit level: the explicit attention equals what the layer really computes."""
from __future__ import annotations

import pytest
import torch
from test_booster import small_spec

from nnunetv2_llm4seg.attention_maps import trace_booster
from nnunetv2_llm4seg.booster import LLMBooster, features_to_tokens
from nnunetv2_llm4seg.errors import LLM4SegError

ROWS = [
    pytest.param(family, attention, positions, id=f"{family}-{attention}-{positions}")
    for family in ("llama", "qwen2")
    for attention in ("bidirectional", "causal")
    for positions in ("native", "none", "paper")
] + [pytest.param("bert", attention, positions, id=f"bert-{attention}-{positions}")
     for attention in ("bidirectional", "causal") for positions in ("native", "none")]


def booster_for(family: str, **changes) -> LLMBooster:
    torch.manual_seed(0)
    booster = LLMBooster(16, small_spec(family, **changes)).eval()
    with torch.no_grad():  # adapters and gate away from their neutral start, so every path carries signal
        for parameter in (booster.adapter_out.weight, *([booster.gate] if booster.gate is not None else [])):
            parameter.normal_(std=0.5)
    return booster


def reference_probabilities(booster: LLMBooster, features: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) written out from the layer's own projections and the block's positions."""
    block = booster.llm
    hidden = booster.adapter_in(features_to_tokens(features))
    tokens = hidden.shape[1]
    if block.__class__.__name__ == "BertEncoderBlock":
        attention = block.layer.attention.self
        if block.position_table is not None:
            hidden = hidden + block.position_table.weight[:tokens]
        split = lambda x: x.view(*x.shape[:2], -1, attention.attention_head_size).transpose(1, 2)  # noqa: E731
        query, key = split(attention.query(hidden)), split(attention.key(hidden))
    else:
        import importlib

        modeling = importlib.import_module(type(block.layer).__module__)
        attention = block.layer.self_attn
        normed = block.layer.input_layernorm(hidden)
        split = lambda x: x.view(*x.shape[:2], -1, attention.head_dim).transpose(1, 2)  # noqa: E731
        query, key = split(attention.q_proj(normed)), split(attention.k_proj(normed))
        cos, sin = block.position_embeddings(hidden)
        query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)
        key = modeling.repeat_kv(key, attention.num_key_value_groups)
    scores = query @ key.transpose(2, 3) * attention.scaling
    if block.causal:
        scores = scores.masked_fill(torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("family, attention, positions", ROWS)
def test_explicit_attention_is_what_the_layer_computes(family, attention, positions):
    booster = booster_for(family, attention=attention, positions=positions)
    features = torch.randn(2, 16, 3, 4)
    with torch.no_grad():
        normal = booster(features)
        trace = trace_booster(booster, features)
        reference = reference_probabilities(booster, features)
    assert booster.llm.attention_module().config._attn_implementation == "sdpa"  # restored
    assert trace.attention.shape == (2, 4, 12, 12)
    assert torch.allclose(trace.output, normal, atol=1e-5), (trace.output - normal).abs().max()
    assert torch.allclose(trace.attention, reference, atol=1e-5)
    assert torch.allclose(trace.attention.sum(-1), torch.ones(2, 4, 12))
    upper = trace.attention.triu(1)
    assert (upper.abs().max() == 0) == (attention == "causal")


@pytest.mark.parametrize("changes", [{"residual": "gated"}, {"residual": True, "dtype": "bfloat16"},
                                     {"trainable": True, "attention": "causal"}],
                         ids=["gated", "residual-bf16", "trainable-causal"])
def test_explicit_attention_for_gated_bf16_and_trainable_boosters(changes):
    assert_trace_matches(booster_for("llama", **changes), bf16=changes.get("dtype") == "bfloat16")


def test_explicit_attention_for_a_lora_booster_on_a_pretrained_layer(small_model):
    from helpers import spec_for

    spec = spec_for(small_model, 1, lora={"rank": 4, "alpha": 8}, dtype="float32")
    torch.manual_seed(0)
    booster = LLMBooster(16, spec).eval()
    booster.load_pretrained(spec)
    with torch.no_grad():
        for name, parameter in booster.named_parameters():
            if "lora_B" in name or name.startswith("adapter_out"):
                parameter.normal_(std=0.5)
    assert_trace_matches(booster)


def assert_trace_matches(booster: LLMBooster, bf16: bool = False) -> None:
    features = torch.randn(1, 16, 2, 2, 3)
    with torch.no_grad():
        normal = booster(features)
        trace = trace_booster(booster, features)
    error = ((trace.output - normal).abs().max() / normal.abs().max()).item()
    assert error < (2e-2 if bf16 else 1e-6), error  # bf16: eager and sdpa round differently
    assert trace.grid == (2, 2, 3) and trace.contribution().shape == (1, 12)


def test_adapters_only_booster_has_no_attention_to_explain():
    booster = LLMBooster(16, small_spec(init="none"))
    with pytest.raises(LLM4SegError, match="no LLM layer"):
        trace_booster(booster, torch.randn(1, 16, 2, 2))


def test_head_statistics_of_uniform_and_self_attention():
    from nnunetv2_llm4seg.attention_maps import head_statistics

    grid, tokens = (2, 3), 6
    attention = torch.stack([torch.full((tokens, tokens), 1 / tokens), torch.eye(tokens)])
    foreground = torch.tensor([1.0, 0.5, 0, 0, 0, 0])
    uniform, itself = head_statistics(attention, grid, foreground)
    assert uniform["entropy"] == pytest.approx(torch.log(torch.tensor(6.0)).item())
    assert itself["entropy"] == pytest.approx(0.0) and itself["mean_distance_tokens"] == 0.0
    cells = [(row, column) for row in range(2) for column in range(3)]
    pair_mean = sum(((a - c) ** 2 + (b - d) ** 2) ** 0.5 for a, b in cells for c, d in cells) / 36
    assert uniform["mean_distance_tokens"] == pytest.approx(pair_mean)
    assert uniform["foreground_share"] == pytest.approx(1.5 / 6) and itself["foreground_share"] == pytest.approx(
        1.5 / 6)


def test_summary_reports_attention_on_the_reference_independently_of_the_prediction():
    import numpy as np

    from nnunetv2_llm4seg.explanation import Explanation, summary

    spec = small_spec("llama")
    booster = booster_for("llama")
    trace = trace_booster(booster, torch.randn(1, 16, 4, 4))
    reference = np.zeros((8, 8), bool)
    reference[:4, :4] = True  # the top-left 2x2 of the 4x4 tokens
    explanation = Explanation("case", spec, trace, np.zeros((8, 8)), np.zeros((8, 8), bool), reference,
                              [[0, 8], [0, 8]], (0, 0), "--query", None)
    report = summary(explanation, {})
    on_reference = trace.attention[0].float().reshape(*trace.attention.shape[1:3], 4, 4)[..., :2, :2].sum((-1, -2))
    assert report["reference_area_share"] == pytest.approx(0.25)
    assert report["reference_share"] == pytest.approx(float(on_reference.mean()), rel=1e-5)
    assert report["foreground_share"] == 0.0  # nothing predicted
    no_reference = summary(Explanation(*[getattr(explanation, f) for f in ("case", "spec", "trace", "image",
                                                                           "prediction")], None,
                                       *[getattr(explanation, f) for f in ("tile", "query", "query_source", "gate")]),
                           {})
    assert "reference_share" not in no_reference


def test_a_case_smaller_than_the_patch_is_padded_as_the_sliding_window_pads_it():
    import numpy as np
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    from nnunetv2_llm4seg.explanation import pad_to_patch

    case = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    padded = pad_to_patch(case, (8, 4))
    assert padded.shape == (2, 8, 4) and padded.sum() == case.sum()
    tensor = pad_nd_image(torch.from_numpy(case), (8, 4), "constant", {"value": 0}, False, None)  # the predictor's
    assert np.array_equal(padded, tensor.numpy())
    assert pad_to_patch(case[:1] > 4, (8, 4)).dtype == bool  # the prediction and the reference, too
