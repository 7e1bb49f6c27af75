"""Property-based tests (hypothesis): the spec parser and the token reshape round trip."""
import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnunetv2_llm4seg.booster import features_to_tokens, tokens_to_features
from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.presets import load_preset
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
