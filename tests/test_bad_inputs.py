"""Bad-input matrix: every mistake costs a non-zero exit or a specific exception, a message that names the
problem and the fix, and leaves everything that existed before unchanged."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from badinputs import BadInput, check_bad_input, cli_run, raises_run, small_spec_dict, spec_file
from safetensors.torch import load_file, save_file

from nnunetv2_llm4seg.presets import load_preset


def copy_model(small_model: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(small_model, target)
    return target


def truncated(tmp_path: Path, model: Path) -> list[str]:
    model = copy_model(model, tmp_path / "truncated")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 3])
    return ["fetch", "--preset", spec_file(tmp_path, small_spec_dict(model))]


def wrong_shape(tmp_path: Path, model: Path) -> list[str]:
    model = copy_model(model, tmp_path / "wrong_shape")
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(64, 32, dtype=torch.bfloat16)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return ["fetch", "--preset", spec_file(tmp_path, small_spec_dict(model))]


def no_weights(tmp_path: Path, model: Path) -> list[str]:
    model = copy_model(model, tmp_path / "no_weights")
    (model / "model.safetensors").unlink()
    return ["fetch", "--preset", spec_file(tmp_path, small_spec_dict(model))]


def pickle_only(tmp_path: Path, model: Path) -> list[str]:
    model = copy_model(model, tmp_path / "pickle")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return ["fetch", "--preset", spec_file(tmp_path, small_spec_dict(model))]


def remote_code(tmp_path: Path, model: Path) -> list[str]:
    model = copy_model(model, tmp_path / "remote")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "custom.Model"}
    (model / "config.json").write_text(json.dumps(config))
    return ["fetch", "--preset", spec_file(tmp_path, small_spec_dict(model))]


def hub_error(error_class_name: str):
    def action(tmp_path, model, monkeypatch):
        import huggingface_hub
        from huggingface_hub import errors

        def fail(*args, **kwargs):
            error_class = getattr(errors, error_class_name)
            error = error_class.__new__(error_class)
            Exception.__init__(error, "simulated")
            raise error

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
        from nnunetv2_llm4seg.loading import fetch_layer

        fetch_layer(load_preset("llama3.2-1b-l15"))
    return action


def booster_too_many_tokens(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.network import check_token_budget

    check_token_budget(load_preset("llama3.2-1b-l15").replace(stage=-4), [128, 128], [1, 1], 0)


def beyond_learned_positions(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.network import check_token_budget

    check_token_budget(load_preset("minilm-l6").replace(stage=-2), [8, 8, 10], [1], 0)


def one_token_per_patch(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.network import check_token_budget

    check_token_budget(load_preset("minilm-l6"), [32, 32], [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]], 5)


def read_checkpoint_case(content: Callable[[Path], bytes]):
    def action(tmp_path, model, monkeypatch):
        from nnunetv2_llm4seg.run_spec import read_checkpoint

        path = tmp_path / "fold_0" / "checkpoint_latest.pth"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content(tmp_path))
        read_checkpoint(path)
    return action


def saved_checkpoint(tmp_path: Path) -> bytes:
    torch.save({"network_weights": {"w": torch.zeros(3)}, "current_epoch": 2}, tmp_path / "ok.pth")
    return (tmp_path / "ok.pth").read_bytes()


class RunsCode:
    """A pickle payload that would run a command when unpickled without weights_only."""

    def __reduce__(self):
        import os

        return os.system, ("touch /tmp/llm4seg-pwned",)


def crafted_checkpoint(tmp_path: Path) -> bytes:
    torch.save({"network_weights": {}, "init_args": RunsCode()}, tmp_path / "crafted.pth")
    return (tmp_path / "crafted.pth").read_bytes()


def plans_edited_after_training(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.booster import LLMBooster

    trained = LLMBooster(8, load_preset("minilm-l6").replace(init="random"))
    LLMBooster(8, load_preset("minilm-l6").replace(init="random", attention="causal")).load_state_dict(
        trained.state_dict())


def hidden_mismatch_after_resume(tmp_path, model, monkeypatch):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunetv2_llm4seg.network import boost_unet

    def network(preset: str):
        unet = PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv2d, 3, [1, 2, 2], 1, 2, 1, True,
                             torch.nn.InstanceNorm2d, {"affine": True})
        return boost_unet(unet, load_preset(preset).replace(init="random"))

    checkpoint = network("minilm-l6").state_dict()
    small = load_preset("minilm-l6").replace(init="random", config={**load_preset("minilm-l6").config,
                                                                    "hidden_size": 192, "intermediate_size": 768})
    unet = PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv2d, 3, [1, 2, 2], 1, 2, 1, True, torch.nn.InstanceNorm2d,
                         {"affine": True})
    boost_unet(unet, small).load_state_dict(checkpoint)


def resume_with_other_spec(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.run_spec import check_resume

    stored = load_preset("minilm-l6")
    check_resume(stored.replace(layer=3), stored, "results/fold_0/checkpoint_latest.pth")


def folder_of_another_spec(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.run_spec import check_same_model

    check_same_model(load_preset("minilm-l6").replace(attention="causal"), load_preset("minilm-l6"), "results")


def stage_beyond_network(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.network import booster_stage_index

    booster_stage_index(load_preset("minilm-l6").replace(stage=-9), 5)


def plans_without_entry(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.run_spec import configured_spec

    configured_spec({"patch_size": [64, 64]})


def unknown_family(tmp_path, model, monkeypatch):
    from nnunetv2_llm4seg.presets import load_spec

    load_spec({"source": "x/y", "layer": 0, "config": {"model_type": "gpt2", "hidden_size": 8}})


def converter(kind: str, prepare: Callable[[Path], Path], force: bool = False):
    def action(tmp_path, model, monkeypatch):
        from nnunetv2_llm4seg.converters import convert_dataset

        source = prepare(tmp_path)
        convert_dataset(kind, source, 42, tmp_path / "raw", force=force)
    return action


def kvasir_layout(tmp_path: Path, images: int = 3, masks: int = 3, mask_size: int = 16) -> Path:
    from PIL import Image

    source = tmp_path / "kvasir"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    for k in range(images):
        Image.new("RGB", (16, 16), (10 * k, 80, 90)).save(source / "images" / f"case{k}.jpg")
    for k in range(masks):
        Image.new("L", (mask_size, mask_size), 255).save(source / "masks" / f"case{k}.jpg")
    return source


def existing_target(tmp_path: Path, model: Path) -> None:
    """A dataset the user already has at the converter's target, and a source to convert (built before the
    snapshot, so an overwritten dataset.json fails the case)."""
    target = tmp_path / "raw" / "Dataset042_KvasirSEG"
    target.mkdir(parents=True)
    (target / "dataset.json").write_text('{"precious": true}')
    kvasir_layout(tmp_path)


CASES = {
    "unknown preset": (cli_run(lambda t, m: ["describe", "--preset", "nope", "--channels", "8"]),
                       ["unknown preset 'nope'", "available presets"]),
    "spec with unknown key": (cli_run(lambda t, m: ["describe", "--preset", spec_file(t, {**small_spec_dict(m),
                              "colour": 1}), "--channels", "8"]), ["unknown key(s) 'colour'", "Allowed keys"]),
    "spec with wrong type": (cli_run(lambda t, m: ["describe", "--preset", spec_file(t, small_spec_dict(m,
                             layer="1")), "--channels", "8"]), ["'layer' must be a 0-based layer index"]),
    "negative layer": (cli_run(lambda t, m: ["describe", "--preset", spec_file(t, small_spec_dict(m, layer=-1)),
                       "--channels", "8"]), ["'layer' is -1", "valid indices are 0..1"]),
    "layer out of range": (cli_run(lambda t, m: ["fetch", "--preset", spec_file(t, small_spec_dict(m, layer=7))]),
                           ["'layer' is 7", "valid indices are 0..1"]),
    "spec file not JSON": (cli_run(lambda t, m: ["describe", "--preset", str((t / "bad.json").write_text("{") and
                           t / "bad.json"), "--channels", "8"]), ["is not valid JSON"]),
    "bad --spatial": (cli_run(lambda t, m: ["describe", "--preset", "minilm-l6", "--channels", "8", "--spatial",
                      "4x"]), ["expected sizes like 4x4 or 4x4x4"]),
    "source folder missing": (cli_run(lambda t, m: ["fetch", "--preset", "minilm-l6", "--source",
                              str(t / "missing-model")]), ["does not exist", "config.json"]),
    "config but no safetensors": (cli_run(no_weights), ["has config.json but no weights", "model.safetensors"]),
    "truncated safetensors": (cli_run(truncated), ["truncated or corrupted", "download it again"]),
    "tensor with wrong shape": (cli_run(wrong_shape), ["q_proj.weight has shape (64, 32)", "does not describe"]),
    "pickle without opt-in": (cli_run(pickle_only), ["pickle", "refused", "allow_pickle"]),
    "trust_remote_code architecture": (cli_run(remote_code), ["trust_remote_code", "llama, qwen2, mistral, bert"]),
    "absurd hidden size": (cli_run(lambda t, m: ["describe", "--preset", spec_file(t, {**small_spec_dict(m),
                           "config": {**small_spec_dict(m)["config"], "hidden_size": 10**7}}), "--channels", "8"]),
                           ["beyond the supported maximum"]),
    "hub offline without cache": (raises_run(hub_error("LocalEntryNotFoundError")),
                                  ["not in the Hugging Face cache", "HF_TOKEN", "nnUNet_llm4seg_source"]),
    "gated hub id without token": (raises_run(hub_error("GatedRepoError")),
                                   ["is gated", "HF_TOKEN", "nnUNet_llm4seg_source"]),
    "unknown family": (raises_run(unknown_family), ["'gpt2' is not supported", "llama, qwen2, mistral, bert"]),
    "bottleneck too large": (raises_run(booster_too_many_tokens), ["16384 tokens", "deeper", "smaller patch"]),
    "beyond BERT's learned positions": (raises_run(beyond_learned_positions),
                                        ["640 tokens", "positions for 512 only", "'positions' to 'none'"]),
    "hidden size mismatch after resume": (raises_run(hidden_mismatch_after_resume),
                                          ["config.hidden_size: 384 vs 192", "plans.json"]),
    "resume with another spec": (raises_run(resume_with_other_spec), ["layer: 3 vs 4", "-tr", "-p", "move the fold away"]),
    "folder trained with another spec": (raises_run(folder_of_another_spec),
                                         ["attention: 'causal' vs 'bidirectional'", "move the old results"]),
    "one token per patch": (raises_run(one_token_per_patch), ["1 token(s) per patch of 32x32", "at least 32x64"]),
    "plans edited after training": (raises_run(plans_edited_after_training),
                                    ["another LLM4Seg spec", "attention: 'bidirectional' vs 'causal'", "plans.json"]),
    "empty checkpoint on --c": (raises_run(read_checkpoint_case(lambda t: b"")),
                                ["checkpoint_latest.pth cannot be read", "checkpoint_best.pth", "afresh"]),
    "truncated checkpoint on --c": (raises_run(read_checkpoint_case(lambda t: saved_checkpoint(t)[:200])),
                                    ["checkpoint_latest.pth cannot be read", "truncated", "checkpoint_best.pth"]),
    "checkpoint that runs code": (raises_run(read_checkpoint_case(crafted_checkpoint)),
                                  ["checkpoint_latest.pth was refused unread", "(posix.system)", "could run code",
                                   "afresh"]),
    "stage beyond the network": (raises_run(stage_beyond_network), ["5 encoder stages", "-1..-5"]),
    "plans without llm4seg entry": (raises_run(plans_without_entry), ["no 'llm4seg' entry", "plans.json"]),
    "converter: missing masks": (raises_run(converter("kvasir", lambda t: kvasir_layout(t, masks=1))),
                                 ["2 image(s) have no mask", "case1.jpg"]),
    "converter: mismatched sizes": (raises_run(converter("kvasir", lambda t: kvasir_layout(t, mask_size=8))),
                                    ["differ in size", "16x16 vs"]),
    "converter: empty folder": (raises_run(converter("kvasir", lambda t: (t / "empty").mkdir() or t / "empty")),
                                ["missing folder", "images/NAME.jpg and masks/NAME.jpg"]),
    "converter: existing target": (raises_run(converter("kvasir", lambda t: t / "kvasir")), ["already exists", "--force"],
                                   existing_target),
    "converter: unknown dataset": (cli_run(lambda t, m: ["convert", "brats", str(t), "--dataset-id", "3",
                                                          "--raw-folder", str(t)]), ["invalid choice: 'brats'", "choose from"]),
    "demo: unwritable output": (cli_run(lambda t, m: ["demo", "--output", str((t / "f").write_text("x") and
                                t / "f" / "out"), "--no-progress"]), ["cannot write to the output folder", "--output"]),
    "demo: unknown data": (cli_run(lambda t, m: ["demo", "--output", str(t / "demo"), "--data", "mnist",
                                                  "--no-progress"]), ["--data 'mnist'", "synthetic, busbra:PATH"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, small_model, capsys, monkeypatch):
    run, fragments, *setup = CASES[name]
    check_bad_input(name, BadInput(run, tuple(fragments), *setup), tmp_path, small_model, capsys, monkeypatch)
