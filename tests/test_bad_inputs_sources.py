"""Bad-input matrix for model sources, checkpoints and spec files: index names that leave the model folder,
weights that are not finite floating-point tensors, config values that would give NaN outputs, wrongly typed
or malformed spec files, malformed sources and layers too large for the machine."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from badinputs import (BadInput, OpensForWriting, check_bad_input, cli_case, one_line, raises_case, run_llm4seg,
                       small_spec_dict, spec_file)
from safetensors.torch import load_file, save_file

from nnunetv2_llm4seg.presets import load_preset

LAYER_WEIGHT = "model.layers.1.mlp.up_proj.weight"


def model_copy(tmp_path: Path, small_model: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(small_model, tmp_path / name))


def with_index(target: Path, small_model: Path, layer_file: str, index_name: str = "model.safetensors.index.json",
               other: str = "model.safetensors") -> None:
    """A model folder whose index sends layer 1's tensors to `layer_file` (a real copy of the weights is put
    next to the model folder, so following the name would succeed)."""
    model = model_copy(target, small_model)
    names = load_file(small_model / "model.safetensors")
    weight_map = {name: layer_file if name.startswith("model.layers.1.") else other for name in names}
    (model / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copytree(small_model, target / "other")


def fetch_model(model_dir: str, **changes):
    """`llm4seg fetch` of layer 1 of the model folder tmp_path/model_dir."""
    return lambda t, m: ["fetch", "--preset", spec_file(t, small_spec_dict(t / model_dir, **changes))]


def with_tensor(change, pickle: bool = False):
    """Setup: a model copy whose layer-1 tensor LAYER_WEIGHT is replaced by change(tensor)."""
    def setup(tmp_path: Path, small_model: Path) -> None:
        model = model_copy(tmp_path, small_model)
        tensors = load_file(model / "model.safetensors")
        tensors[LAYER_WEIGHT] = change(tensors[LAYER_WEIGHT])
        (model / "model.safetensors").unlink()
        if pickle:
            torch.save(tensors, model / "pytorch_model.bin")
        else:
            save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return setup


def with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[3, 5] = value
    return tensor


def describe_with_config(**config_changes):
    """`llm4seg describe` of a spec whose config has config_changes (None removes a key)."""
    def args(t: Path, m: Path) -> list[str]:
        spec = small_spec_dict(m)
        spec["config"] = {k: v for k, v in {**spec["config"], **config_changes}.items() if v is not None}
        return ["describe", "--preset", spec_file(t, spec), "--channels", "8"]
    return args


def describe_preset_with_config(preset: str, **config_changes):
    def args(t: Path, m: Path) -> list[str]:
        spec = load_preset(preset).to_dict()
        spec["config"] = {**spec["config"], **config_changes}
        return ["describe", "--preset", spec_file(t, spec), "--channels", "8"]
    return args


def describe_with(**changes):
    return lambda t, m: ["describe", "--preset", spec_file(t, small_spec_dict(m, **changes)), "--channels", "8"]


def describe_file(make):
    """`llm4seg describe --preset PATH` where PATH = make(tmp_path)."""
    return lambda t, m: ["describe", "--preset", str(make(t)), "--channels", "8"]


def written(name: str, data: bytes):
    def make(t: Path) -> Path:
        (t / name).write_bytes(data)
        return t / name
    return make


def fetch_source(source) -> list:
    return lambda t, m: ["fetch", "--preset", "minilm-l6", "--source", str(source(t)) if callable(source) else source]


def fake_hub(folder_of) -> object:
    """An action: fetch layer 1 from a hub id served from folder_of(tmp_path); a request for any file name
    that is not a plain file of the repository fails the case."""
    def action(tmp_path, model, monkeypatch):
        import huggingface_hub

        folder = folder_of(tmp_path)

        def download(repo_id, filename, revision=None, **kwargs):
            assert ".." not in filename and not filename.startswith("/"), f"asked the hub for {filename}"
            return str(folder / filename)

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        from nnunetv2_llm4seg.loading import fetch_layer
        from nnunetv2_llm4seg.spec import BoosterSpec

        fetch_layer(BoosterSpec.from_dict(small_spec_dict(folder, source="test-org/tiny-llama")))
    return action


def huge_layer(tmp_path, model, monkeypatch):
    import nnunetv2_llm4seg.families as families

    monkeypatch.setattr(families, "available_memory", lambda: int(23.4 * 2**30))
    config = {**load_preset("llama3.2-1b-l15").config, "hidden_size": 16384, "intermediate_size": 131072,
              "num_attention_heads": 128, "num_key_value_heads": 128, "head_dim": 128}
    load_preset("llama3.2-1b-l15").replace(config=config)


def load_spec_path(path) -> object:
    def action(tmp_path, model, monkeypatch):
        from nnunetv2_llm4seg.presets import load_spec

        load_spec(path(tmp_path) if callable(path) else path, where="--preset")
    return action


def open_source_of(source: str) -> object:
    def action(tmp_path, model, monkeypatch):
        from nnunetv2_llm4seg.sources import open_source

        open_source(source)
    return action


def nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def symlink_loop(t: Path) -> Path:
    (t / "loop_a.json").symlink_to(t / "loop_b.json")
    (t / "loop_b.json").symlink_to(t / "loop_a.json")
    return t / "loop_a.json"


def fifo(t: Path) -> Path:
    os.mkfifo(t / "spec.json")
    return t / "spec.json"


def sparse(t: Path) -> Path:
    with open(t / "big.json", "wb") as handle:
        handle.truncate(40 << 20)
    return t / "big.json"


OUTSIDE = ["points outside the model folder"]

def pickle_payload(tmp_path: Path, small_model: Path) -> None:
    model = model_copy(tmp_path, small_model)
    (model / "model.safetensors").unlink()
    torch.save({LAYER_WEIGHT: OpensForWriting(tmp_path / "existing" / "keep.txt")}, model / "pytorch_model.bin")


def package_with_side_effects(tmp_path: Path, small_model: Path) -> None:
    """An installed package whose __init__ would change a file next to it if it ran."""
    package = tmp_path / "site" / "sideeffects"
    package.mkdir(parents=True)
    (package / "victim.txt").write_text("unchanged")
    (package / "__init__.py").write_text("from pathlib import Path\n"
                                         "(Path(__file__).parent / 'victim.txt').write_text('changed')\n")


def fetch_from_package_on_path(tmp_path, small_model, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return run_llm4seg(["fetch", "--preset", "minilm-l6", "--source", "package:sideeffects"], capsys)


CASES = {
    # ---- index file names must stay inside the model folder -------------------------------------------------
    "index names a sibling folder": cli_case(fetch_model("model"), OUTSIDE + ["'../other/model.safetensors'"],
                                             lambda t, m: with_index(t, m, "../other/model.safetensors")),
    "index names an absolute path": cli_case(
        fetch_model("model"), OUTSIDE, lambda t, m: with_index(t, m, str(t / "other" / "model.safetensors"))),
    "index name with '..' inside": cli_case(fetch_model("model"), OUTSIDE + ["shards/../../other"],
                                            lambda t, m: with_index(t, m, "shards/../../other/model.safetensors")),
    "index name with a backslash": cli_case(fetch_model("model"), OUTSIDE + ["..\\\\other"],
                                            lambda t, m: with_index(t, m, "..\\other\\model.safetensors")),
    "shard symlinked outside": cli_case(
        fetch_model("model"), ["is a symlink to", "outside the model folder"],
        lambda t, m: (model_copy(t, m), shutil.copytree(m, t / "other"), (t / "model" / "model.safetensors").unlink(),
                      (t / "model" / "model.safetensors").symlink_to(t / "other" / "model.safetensors"))),
    "pickle index names a sibling folder": cli_case(
        fetch_model("model", allow_pickle=True), OUTSIDE + ["'../other/pytorch_model.bin'"],
        lambda t, m: (with_index(t, m, "../other/pytorch_model.bin", "pytorch_model.bin.index.json",
                                 "pytorch_model.bin"), (t / "model" / "model.safetensors").unlink())),
    "hub index names a sibling folder": raises_case(fake_hub(lambda t: t / "model"),
                                                    OUTSIDE + ["'../other/model.safetensors'"],
                                                    lambda t, m: with_index(t, m, "../other/model.safetensors")),
    "index names a non-safetensors file": cli_case(fetch_model("model"), ["'weights.bin'", "not a .safetensors"],
                                                   lambda t, m: with_index(t, m, "weights.bin")),
    "index without a weight_map object": cli_case(
        fetch_model("model"), ["model.safetensors.index.json is not a checkpoint index", "weight_map"],
        lambda t, m: (model_copy(t, m), (t / "model" / "model.safetensors.index.json").write_text('{"weight_map": 3}'))),
    # ---- weights must be finite floating-point tensors ---------------------------------------------------------
    "NaN in a weight": cli_case(fetch_model("model"), [LAYER_WEIGHT, "1 NaN or Inf value(s)", "download them again"],
                                with_tensor(lambda w: with_value(w, float("nan")))),
    "Inf in a weight": cli_case(fetch_model("model"), [LAYER_WEIGHT, "NaN or Inf"],
                                with_tensor(lambda w: with_value(w, float("-inf")))),
    "bool weights": cli_case(fetch_model("model"), [LAYER_WEIGHT, "stored as BOOL", "not as floating-point"],
                             with_tensor(lambda w: w > 0)),
    "int8 weights": cli_case(fetch_model("model"), [LAYER_WEIGHT, "stored as I8", "quantized or corrupted"],
                             with_tensor(lambda w: w.to(torch.int8))),
    "uint8 weights": cli_case(fetch_model("model"), [LAYER_WEIGHT, "stored as U8"],
                              with_tensor(lambda w: w.to(torch.uint8))),
    "int8 weights in pickle": cli_case(fetch_model("model", allow_pickle=True), [LAYER_WEIGHT, "torch.int8"],
                                       with_tensor(lambda w: w.to(torch.int8), pickle=True)),
    "NaN in pickle weights": cli_case(fetch_model("model", allow_pickle=True), [LAYER_WEIGHT, "NaN or Inf"],
                                      with_tensor(lambda w: with_value(w, float("nan")), pickle=True)),
    # ---- config values that would give NaN outputs --------------------------------------------------------------
    "rms_norm_eps NaN": cli_case(describe_with_config(rms_norm_eps=float("nan")),
                                 ["config.rms_norm_eps is nan", "finite"]),
    "rms_norm_eps negative": cli_case(describe_with_config(rms_norm_eps=-1e-5),
                                      ["config.rms_norm_eps is -1e-05", "a finite number > 0"]),
    "rms_norm_eps zero": cli_case(describe_with_config(rms_norm_eps=0), ["config.rms_norm_eps is 0", "> 0"]),
    "rms_norm_eps a string": cli_case(describe_with_config(rms_norm_eps="1e-5"), ["config.rms_norm_eps is '1e-5'"]),
    "layer_norm_eps zero": cli_case(describe_preset_with_config("minilm-l6", layer_norm_eps=0.0),
                                    ["config.layer_norm_eps is 0.0", "> 0"]),
    "rope_theta negative": cli_case(describe_preset_with_config("deepseek-r1-qwen1.5b-l28", rope_theta=-10000.0),
                                    ["config.rope_theta is -10000.0", "> 0"]),
    "rope_parameters.rope_theta zero": cli_case(
        describe_with_config(rope_parameters={"rope_type": "default", "rope_theta": 0}),
        ["config.rope_parameters.rope_theta is 0"]),
    "rope scaling factor below 1": cli_case(
        describe_preset_with_config("llama3.2-1b-l15", rope_scaling={
            **load_preset("llama3.2-1b-l15").config["rope_scaling"], "factor": 0.5}),
        ["config.rope_scaling.factor is 0.5", ">= 1"]),
    "unknown rope_type": cli_case(describe_with_config(rope_parameters={"rope_type": "spiral", "rope_theta": 1e4}),
                                  ["config.rope_parameters.rope_type is 'spiral'", "llama3"]),
    "llama3 rope without its factors": cli_case(
        describe_with_config(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}),
        ["rope_type 'llama3' but no low_freq_factor, high_freq_factor, original_max_position_embeddings"]),
    "llama3 rope with equal freq factors": cli_case(
        describe_with_config(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4,
                                              "low_freq_factor": 2.0, "high_freq_factor": 2.0,
                                              "original_max_position_embeddings": 64}),
        ["high_freq_factor (2.0) must be greater than"]),
    "unknown activation": cli_case(describe_with_config(hidden_act="swishy"),
                                   ["config.hidden_act is 'swishy'", "silu"]),
    # ---- spec values of the wrong type, anywhere -----------------------------------------------------------------
    "list where a string belongs": cli_case(describe_with(dtype=["float32"]), ["'dtype' is ['float32']"]),
    "object where an int belongs": cli_case(describe_with(layer={"index": 1}), ["'layer' must be a 0-based"]),
    "object as hidden_size": cli_case(describe_with_config(hidden_size={"n": 64}),
                                      ["config.hidden_size is {'n': 64}", "a positive integer"]),
    "list as rope_parameters": cli_case(describe_with_config(rope_parameters=[1, 2]),
                                        ["config.rope_parameters is [1, 2]"]),
    "list as preset name": raises_case(load_spec_path(lambda t: {"preset": ["minilm-l6"]}), ["unknown preset"]),
    "config nested 40 levels": cli_case(describe_with_config(extra=nested(40)),
                                        ["config.extra.a.a", "nested more than 32 levels"]),
    # ---- malformed spec files ------------------------------------------------------------------------------------
    "spec file nested 100000 levels": cli_case(describe_file(written("deep.json", b"[" * 100000 + b"]" * 100000)),
                                               ["nested too deeply"]),
    "spec file not UTF-8": cli_case(describe_file(written("latin1.json", '{"source": "caf\u00e9"}'.encode("latin-1"))),
                                    ["is not UTF-8 text", "byte 0xe9"]),
    "spec file of 40 MB": cli_case(describe_file(sparse), ["41,943,040 bytes", "at most"]),
    "spec path is a folder": cli_case(describe_file(lambda t: (t / "specs").mkdir() or t / "specs"),
                                      ["is a folder", "JSON file itself"]),
    "spec path is a FIFO": cli_case(describe_file(fifo), ["not a regular file", "FIFO"]),
    "spec path is a symlink loop": cli_case(describe_file(symlink_loop), ["symlink loop"]),
    "spec path with a NUL byte": raises_case(load_spec_path("spec\0.json"), ["NUL byte"]),
    "spec path too long": raises_case(load_spec_path("/tmp/" + "x" * 5000 + ".json"),
                                      ["too long", "(5010 characters)"]),
    # ---- malformed sources ---------------------------------------------------------------------------------------
    "hub id with a space": cli_case(fetch_source("org/my model"), ["'org/my model'", "nor a valid hub id"]),
    "hub id of 120 characters": cli_case(fetch_source("org/" + "m" * 116), ["120 characters",
                                                                           "too long for a hub id (at most 96)"]),
    "source with a NUL byte": raises_case(open_source_of("models/llama\0"), ["NUL byte"]),
    "source path too long": cli_case(fetch_source("/tmp/" + "d" * 300 + "/model"), ["too long for this file system",
                                                                                    "(311 characters)"]),
    "source is a symlink loop": cli_case(fetch_source(symlink_loop), ["symlink loop"]),
    "package source that is no package name": cli_case(fetch_source("package:../evil"),
                                                       ["'../evil'", "does not name a Python package"]),
    "empty source": raises_case(open_source_of("  "), ["the source is empty"]),
    "package source is located without importing it": one_line(BadInput(
        fetch_from_package_on_path, ("package 'sideeffects' has no model folder",), package_with_side_effects)),
    "pickle payload with allow_pickle": one_line(cli_case(
        fetch_model("model", allow_pickle=True), ["pytorch_model.bin was refused unread", "could run code"],
        pickle_payload)),
    # ---- size ------------------------------------------------------------------------------------------------------
    "layer larger than the machine's memory": raises_case(
        huge_layer, ["needs 28.0 GiB in float32", "this machine has 23.4 GiB", "config.hidden_size (16384)"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, small_model, capsys, monkeypatch):
    check_bad_input(name, CASES[name], tmp_path, small_model, capsys, monkeypatch)
