"""Property-based tests (hypothesis): the spec parser and the token reshape round trip."""
import json

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nnunetv2_llm4seg.booster import features_to_tokens, tokens_to_features
from nnunetv2_llm4seg.errors import SourceError, SpecError
from nnunetv2_llm4seg.families import CONFIG_CHECKS, layer_parameters
from nnunetv2_llm4seg.layers import build_layer_block
from nnunetv2_llm4seg.presets import load_preset
from nnunetv2_llm4seg.sources import open_source
from nnunetv2_llm4seg.spec import BoosterSpec

BASE = load_preset("minilm-l6").to_dict()
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) |
                           st.text(max_size=12), lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(BASE) + ["extra", "Layer"]), JSON_VALUES, max_size=4))
def test_spec_parser_accepts_and_round_trips_or_raises_spec_error(changes):
    data = {**BASE, **changes}
    try:
        spec = BoosterSpec.from_dict(data)
    except SpecError as error:
        assert str(error)  # a message, and never another exception type
        return
    assert BoosterSpec.from_dict(json.loads(spec.to_json())) == spec


@settings(max_examples=100, deadline=None)
@given(config_changes=st.dictionaries(st.sampled_from(["hidden_size", "intermediate_size", "num_attention_heads",
                                                        "num_hidden_layers", "max_position_embeddings"]),
                                      st.integers(-5, 10**9) | st.text(max_size=3) | st.none(), max_size=3))
def test_config_values_are_validated_before_anything_is_built(config_changes):
    data = {**BASE, "config": {**BASE["config"], **config_changes}}
    try:
        BoosterSpec.from_dict(data)
    except SpecError:
        pass


CONFIG_VALUES = JSON_VALUES | st.floats() | st.sampled_from([0, -1, 1e-6, 2.0, "silu", "gelu", {"rope_type": "llama3"},
                                                         {"rope_type": "linear", "factor": 2.0}])


@settings(max_examples=150, deadline=None)
@given(preset=st.sampled_from(["llama3.2-1b-l15", "deepseek-r1-qwen1.5b-l28", "minilm-l6"]),
       changes=st.dictionaries(st.sampled_from(sorted(CONFIG_CHECKS)), CONFIG_VALUES, max_size=3))
@example(preset="deepseek-r1-qwen1.5b-l28", changes={"head_dim": None})  # found in CI: Qwen2 read null as a size
def test_a_config_that_validates_builds_its_layer(preset, changes):
    """Any config value either raises SpecError at validation or gives a layer transformers can build."""
    small = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "max_position_embeddings": 64}
    base = load_preset(preset)
    config = {**base.config, **{k: v for k, v in small.items() if k in base.config or k == "num_key_value_heads"
                                and base.family != "bert"}, **changes}
    try:
        spec = base.replace(config=config)
    except SpecError:
        return
    with torch.device("meta"):
        block = build_layer_block(spec)
    assert sum(p.numel() for p in block.parameters()) == layer_parameters(spec.family, spec.config, spec.positions)


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(["llama", "qwen2", "mistral", "bert"]), heads=st.integers(1, 4),
       group=st.integers(1, 3), head_size=st.integers(1, 4).map(lambda n: 2 * n), inner=st.integers(1, 40),
       attention_bias=st.booleans(), mlp_bias=st.booleans(), positions=st.sampled_from(["native", "none"]))
def test_layer_size_from_the_config_equals_the_built_layer(family, heads, group, head_size, inner,
                                                           attention_bias, mlp_bias, positions):
    config = {"model_type": family, "hidden_size": heads * group * head_size, "intermediate_size": inner,
              "num_attention_heads": heads * group, "num_hidden_layers": 2, "max_position_embeddings": 16}
    if family != "bert":
        config.update(num_key_value_heads=heads, head_dim=head_size, attention_bias=attention_bias,
                      mlp_bias=mlp_bias)
    spec = BoosterSpec.from_dict({"source": "x/y", "layer": 1, "family": family, "config": config, "positions": positions})
    with torch.device("meta"):
        block = build_layer_block(spec)
    assert layer_parameters(family, config, positions) == sum(p.numel() for p in block.parameters())


@settings(max_examples=200, deadline=None)
@given(source=st.text(max_size=300) | st.sampled_from(["org/" + "m" * 200, "package:", "package:a..b", "~nobody/x"]))
def test_any_source_string_is_classified_or_refused_with_source_error(source):
    try:
        opened = open_source(source)
    except SourceError as error:
        assert str(error)
        return
    assert opened.label


@settings(max_examples=200, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 6),
       spatial=st.lists(st.integers(1, 7), min_size=2, max_size=3))
def test_tokens_round_trip_to_the_same_tensor(batch, channels, spatial):
    features = torch.randn(batch, channels, *spatial)
    tokens = features_to_tokens(features)
    assert tokens.shape == (batch, torch.Size(spatial).numel(), channels)
    assert torch.equal(tokens_to_features(tokens, features.shape[2:]), features)
    # token n is voxel n in row-major order
    flat_index = torch.randint(0, tokens.shape[1], ()).item()
    position = torch.unravel_index(torch.tensor(flat_index), tuple(spatial))
    assert torch.equal(tokens[:, flat_index], features[(slice(None), slice(None), *position)])
